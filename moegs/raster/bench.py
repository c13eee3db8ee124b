"""Rasteriser benchmark: forward + backward of the backends side by side, and the single pass.

    python -m moegs.raster.bench [--json] [--quick] [--cuda-fps]

Scenes are random Gaussians in front of a 60-degree camera at 3-5 units depth with scales of
0.005-0.05 units (like a real reconstruction), random wxyz rotations, opacities sigmoid(N(0, 2)).
Each timing is the median of a few repeats after one warm-up (numba compile and caches excluded).
Run as a module it waits for OpenMP work as the `moegs` command does (`moegs.openmp_waiting`;
`GOMP_SPINCOUNT=0` for the library's passive waiting).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

from moegs.openmp_waiting import describe as openmp_waiting
from moegs.openmp_waiting import spin_briefly

if __name__ == "__main__":  # time what the moegs command runs: its OpenMP waiting, set before torch loads
    spin_briefly()

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from moegs.raster.api import available_backends, rasterize, rasterize_multi  # noqa: E402
from moegs.raster.structs import GaussianSet  # noqa: E402


def make_scene(
    n: int,
    width: int,
    height: int,
    channels: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    scale_range: tuple[float, float] = (0.005, 0.05),
    max_opacity: float = 1.0,
) -> tuple[GaussianSet, Tensor, Tensor]:
    """Random activated Gaussians filling the view of an identity camera at 3-5 units depth, scales
    log-uniform in scale_range, opacities max_opacity * sigmoid(N(0, 2)); returns (set, viewmat, K)."""
    gen = torch.Generator().manual_seed(seed)
    focal = 0.5 * width / math.tan(math.radians(30.0))
    z = 3.0 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    x = (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 1.1 * width / focal * z
    y = (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 1.1 * height / focal * z
    log_lo, log_hi = math.log(scale_range[0]), math.log(scale_range[1])
    log_s = log_lo + (log_hi - log_lo) * torch.rand((n, 3), generator=gen, dtype=torch.float64)
    gs = GaussianSet(
        means=torch.stack([x, y, z], dim=-1),
        quats=torch.randn((n, 4), generator=gen, dtype=torch.float64),
        scales=torch.exp(log_s),
        opacities=max_opacity * torch.sigmoid(2.0 * torch.randn(n, generator=gen, dtype=torch.float64)),
        features=torch.rand((n, channels), generator=gen, dtype=torch.float64),
    )
    gs = GaussianSet(*(t.to(device=device, dtype=dtype) for t in vars(gs).values()))
    K = torch.tensor(
        [[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=dtype, device=device
    )
    return gs, torch.eye(4, dtype=dtype, device=device), K


def _with_grad(gs: GaussianSet) -> GaussianSet:
    return GaussianSet(*(t.detach().clone().requires_grad_(True) for t in vars(gs).values()))


def _median_ms(fn: Callable[[], None], repeats: int, warmup: int, sync: bool = False) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def _fwd_bwd(gs: GaussianSet, viewmat: Tensor, K: Tensor, width: int, height: int, backend: str) -> Callable[[], None]:
    """One forward + backward with fixed random upstream gradients on image, alpha and depth."""
    gs = _with_grad(gs)
    gen = torch.Generator().manual_seed(1)
    c = gs.features.shape[1]
    g_img = torch.randn((height, width, c), generator=gen).to(gs.means)
    g_map = torch.randn((2, height, width), generator=gen).to(gs.means)

    def run() -> None:
        out = rasterize(gs.means, gs.quats, gs.scales, gs.opacities, gs.features, viewmat, K, width, height,
                        backend=backend)
        loss = (out.image * g_img).sum() + (out.alpha * g_map[0]).sum() + (out.depth * g_map[1]).sum()
        torch.autograd.grad(loss, list(vars(gs).values()))

    return run


def _single_pass(n_total: int, width: int, height: int, repeats: int) -> dict:
    """K=3 experts of different sizes: one rasterize_multi vs three rasterize calls (cpu, fwd+bwd)."""
    sizes = [n_total // 2, n_total // 3, n_total - n_total // 2 - n_total // 3]
    sets, viewmat, K = [], None, None
    for i, n in enumerate(sizes):
        gs, viewmat, K = make_scene(n, width, height, seed=10 + i)
        sets.append(_with_grad(gs))
    params = [t for s in sets for t in vars(s).values()]
    gen = torch.Generator().manual_seed(2)
    g_img = torch.randn((len(sets), height, width, 3), generator=gen)

    def single() -> Tensor:
        out = rasterize_multi(sets, viewmat, K, width, height, backend="cpu")
        torch.autograd.grad((out.image * g_img).sum() + out.alpha.sum() + out.depth.sum(), params)
        return torch.cat([out.image, out.alpha[..., None], out.depth[..., None]], dim=-1)

    def separate() -> Tensor:
        outs = [rasterize(*vars(s).values(), viewmat, K, width, height, backend="cpu") for s in sets]
        image = torch.stack([o.image for o in outs])
        alpha, depth = torch.stack([o.alpha for o in outs]), torch.stack([o.depth for o in outs])
        torch.autograd.grad((image * g_img).sum() + alpha.sum() + depth.sum(), params)
        return torch.cat([image, alpha[..., None], depth[..., None]], dim=-1)

    max_abs_diff = float((single() - separate()).abs().max().detach())
    separate_ms = _median_ms(separate, repeats, 1)
    single_ms = _median_ms(single, repeats, 1)
    return {
        "separate_ms": round(separate_ms, 2),
        "single_ms": round(single_ms, 2),
        "ratio": round(separate_ms / single_ms, 3),
        "max_abs_diff": max_abs_diff,
    }


def _cuda_fps(width: int = 1352, height: int = 1014, n: int = 300_000) -> dict:
    """Forward-only frames per second of gsplat at N3V resolution."""
    gs, viewmat, K = make_scene(n, width, height, device="cuda")

    def render() -> None:
        with torch.no_grad():
            rasterize(gs.means, gs.quats, gs.scales, gs.opacities, gs.features, viewmat, K, width, height,
                      backend="gsplat")

    ms = _median_ms(render, 20, 5, sync=True)
    return {"gaussians": n, "width": width, "height": height, "ms": round(ms, 3), "fps": round(1000.0 / ms, 1)}


def run_bench(quick: bool = False, cuda_fps: bool = False) -> dict:
    """Measure every case; returns the JSON-ready result."""
    width, height = 256, 192
    has_gsplat = "gsplat" in available_backends()
    cases = []
    for n in (2_000, 20_000):
        gs, viewmat, K = make_scene(n, width, height)
        torch_ms = _median_ms(_fwd_bwd(gs, viewmat, K, width, height, "torch"), 1 if quick else 3, 0 if quick else 1)
        cpu_ms = _median_ms(_fwd_bwd(gs, viewmat, K, width, height, "cpu"), 3 if quick else 5, 1)
        case = {
            "name": f"fwd+bwd {n // 1000}k",
            "gaussians": n,
            "width": width,
            "height": height,
            "torch_ms": round(torch_ms, 2),
            "cpu_ms": round(cpu_ms, 2),
            "ratio": round(torch_ms / cpu_ms, 2),
        }
        if has_gsplat:
            g_cuda = GaussianSet(*(t.cuda() for t in vars(gs).values()))
            case["gsplat_ms"] = round(
                _median_ms(_fwd_bwd(g_cuda, viewmat.cuda(), K.cuda(), width, height, "gsplat"), 10, 3, sync=True), 3
            )
        cases.append(case)
    result = {"cases": cases, "single_pass": _single_pass(20_000, width, height, 3 if quick else 5),
              "openmp_waiting": openmp_waiting()}
    if cuda_fps and has_gsplat:
        result["cuda_fps"] = _cuda_fps()
    return result


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rasteriser forward + backward (median ms)")
    extra = "gsplat_ms" in result["cases"][0]
    for col in ("case", "gaussians", "size", "torch ms", "cpu ms", "torch / cpu") + (("gsplat ms",) if extra else ()):
        table.add_column(col, justify="right")
    for c in result["cases"]:
        row = [c["name"], str(c["gaussians"]), f"{c['width']}x{c['height']}", f"{c['torch_ms']:.1f}",
               f"{c['cpu_ms']:.1f}", f"{c['ratio']:.1f}x"]
        table.add_row(*row, *([f"{c['gsplat_ms']:.2f}"] if extra else []))
    sp = result["single_pass"]
    console = Console()
    console.print(table)
    console.print(
        f"single pass, K=3 experts, 20k Gaussians in all (cpu, fwd+bwd): separate {sp['separate_ms']:.1f} ms, "
        f"single {sp['single_ms']:.1f} ms, speed-up {sp['ratio']:.2f}x, max |diff| {sp['max_abs_diff']:.2e}"
    )
    console.print(f"OpenMP waiting: {result['openmp_waiting']}")
    if "cuda_fps" in result:
        f = result["cuda_fps"]
        console.print(f"gsplat forward {f['width']}x{f['height']}, {f['gaussians']} Gaussians: {f['fps']} FPS")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moegs.raster.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (torch once, no warm-up)")
    parser.add_argument("--cuda-fps", action="store_true", help="also gsplat FPS at 1352x1014, 300k Gaussians")
    args = parser.parse_args(argv)
    result = run_bench(quick=args.quick, cuda_fps=args.cuda_fps)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)


if __name__ == "__main__":
    main()
