"""Training-step benchmark: where one step of each expert family goes at the demo preset.

    python -m moegs.bench_step [--json] [--families hexplane,...] [--steps 12] [--gaussians N] [--cpu-time]
                               [--malloc retain|default]

Each family is built at the demo preset's settings (`stages/presets/demo.yaml`) on the demo rig
(10 cameras, 256x192, 24 frames) from points on the demo scene's surfaces, each at the frame it was
seen at (`synthetic.surface_samples`: what COLMAP over every frame gives), as many as the preset's
`densify.max_gaussians` for the family (what a demo expert trains at once densified; static, which
the demo does not train, gets the largest of them; `--gaussians` sets one count for all). That load
matches trained demo experts (~58 tile-pixel visits per pixel, against 55-70 for the four trained
families at the older 8000-Gaussian load; points spread through the frustums made 6x as many
and timed steps twice as long as training runs them). Each family is trained for a few steps past
its warm-ups and inside the densification window. A step is split as the training loop runs it: deform (`gaussians_at`),
rasterise forward, loss (L1 + SSIM), backward, optimiser (the fused Adams per tensor and the
fields' one) and densify (gradient statistics every step, plus one clone/split/prune event per
`densify.every` steps, amortised). Targets are smooth random images: the step's cost does not depend on what
they show. Prints the numba target CPU (what `NUMBA_CPU_NAME` / `NUMBA_CPU_FEATURES` emulate) and
the host CPU model next to the figures. The stages run with glibc's allocator keeping freed blocks
(`moegs.allocator`); `--malloc default` times the library defaults instead (one process each, since
the setting cannot be undone), so the two can be compared side by side. Run as a module it waits
for OpenMP work as the `moegs` command does (a short spin, `moegs.openmp_waiting`);
`GOMP_SPINCOUNT=0 python -m moegs.bench_step` times the library's passive waiting.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from moegs.openmp_waiting import describe as openmp_waiting
from moegs.openmp_waiting import spin_briefly

if __name__ == "__main__":  # time what the moegs command runs: its OpenMP waiting, set before torch loads
    spin_briefly()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from moegs.allocator import retain_freed_memory  # noqa: E402
from moegs.cameras import Camera  # noqa: E402
from moegs.data.dataset import scene_extent  # noqa: E402
from moegs.data.synthetic import PRESETS, make_rig, surface_samples  # noqa: E402
from moegs.errors import InputError  # noqa: E402
from moegs.experts import family_names, get_family  # noqa: E402
from moegs.experts.base import config_from_dict, resolved_background  # noqa: E402
from moegs.losses import photometric  # noqa: E402
from moegs.raster import rasterize  # noqa: E402
from moegs.rendering import camera_center  # noqa: E402
from moegs.train import make_optimizers, step_optimizers  # noqa: E402

PARTS = ("deform", "raster_fwd", "loss", "backward", "optimiser", "densify")
# Steps are timed from here: after every family's warm-up, inside the demo's densification window.
_FIRST_STEP = 300


def demo_settings() -> dict:
    """The `train_experts` section of the demo preset, read from the data file installed beside this
    package (without importing `stages`: nothing in moegs does)."""
    path = Path(__file__).resolve().parents[1] / "stages" / "presets" / "demo.yaml"
    if not path.is_file():
        raise InputError(f"{path}: the demo preset is missing (install moegs with its stages package)")
    return yaml.safe_load(path.read_text())["train_experts"]


def cpu_description() -> dict[str, str]:
    """The CPU numba compiles for (name, and whether AVX-512 is among its features), the host's model
    name, torch's thread count and the OpenMP waiting (`moegs.openmp_waiting`)."""
    import llvmlite.binding as llvm
    import numba

    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    target = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    if features == "":
        simd = f"{target} defaults"
    else:
        simd = "avx512f" if "+avx512f" in features else ("avx2" if "+avx2" in features else "no avx2")
    return {"numba_target": target, "numba_simd": simd, "cpu_model": model, "threads": str(torch.get_num_threads()),
            "openmp_waiting": openmp_waiting()}


def _cameras() -> list[Camera]:
    preset = PRESETS["demo"]
    return [
        Camera(name=c.name, width=c.width, height=c.height, K=c.K, R=c.R, t=c.t, near=0.1, far=100.0)
        for c in make_rig(preset)
    ]


def _targets(cameras: list[Camera], seed: int) -> list[torch.Tensor]:
    """One smooth random image per camera (a 12x16 noise grid, bilinearly upsampled)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for cam in cameras:
        coarse = torch.rand((1, 3, 12, 16), generator=gen)
        img = torch.nn.functional.interpolate(coarse, size=(cam.height, cam.width), mode="bilinear", align_corners=False)
        out.append(img[0].permute(1, 2, 0).contiguous())
    return out


class _Clock:
    """Time of consecutive sections of one step: wall time, or with `cpu_time` this thread's CPU
    time (for one-thread runs on a loaded machine, where wall time measures the other processes)."""

    def __init__(self, cpu_time: bool) -> None:
        self.now = time.thread_time if cpu_time else time.perf_counter
        self.parts: dict[str, float] = {}
        self._last = self.now()

    def lap(self, name: str) -> None:
        now = self.now()
        self.parts[name] = self.parts.get(name, 0.0) + 1000.0 * (now - self._last)
        self._last = now


def bench_family(
    family: str, settings: dict, n_points: int, steps: int, cpu_time: bool = False, warmup: int = 3, seed: int = 0
) -> dict:
    """Median ms per part of one training step of `family` (see the module docstring)."""
    cls = get_family(family)
    preset = PRESETS["demo"]
    cameras = _cameras()
    targets = _targets(cameras, seed)
    cfg = resolved_background(config_from_dict(cls, dict(settings.get(family, {}))),
                              lambda: torch.stack(targets).mean(dim=(0, 1, 2)).tolist())  # `background: mean`
    xyz, times = surface_samples("demo", n_points, seed=seed)
    rgb = np.random.default_rng(seed).uniform(0.0, 255.0, (len(xyz), 3))
    expert = cls.from_points(cfg, xyz, rgb, times, preset.n_frames)
    extent = scene_extent(cameras)
    optimizers, fields_opt = make_optimizers(expert, extent)
    densify = cfg.densify
    state = densify.init_state(expert.num_gaussians)
    background = torch.tensor(cfg.background, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    records: list[dict[str, float]] = []
    event_ms: list[float] = []
    for i in range(warmup + steps):
        step = _FIRST_STEP + i
        expert.on_step(step)
        cam_index = i % len(cameras)
        camera = cameras[cam_index]
        t = float(min(i % preset.n_frames, expert.frame_limit(step) - 1)) / preset.n_frames
        clock = _Clock(cpu_time)
        g = expert.gaussians_at(t, camera_center(camera, "cpu"), cfg.sh_degree)
        clock.lap("deform")
        out = rasterize(g.means, g.quats, g.scales, g.opacities, g.features, camera.viewmat_tensor("cpu"),
                        camera.K_tensor("cpu"), camera.width, camera.height, background,
                        near=camera.near, far=camera.far, backend="cpu", retain_means2d_grad=True)
        clock.lap("raster_fwd")
        loss = expert.regularisation(t) + photometric(out.image, targets[cam_index], lambda_dssim=cfg.lambda_dssim)
        clock.lap("loss")
        loss.backward()
        clock.lap("backward")
        step_optimizers(optimizers, fields_opt)
        clock.lap("optimiser")
        densify.accumulate(state, out.means2d.grad, out.radii, camera.width, camera.height)
        clock.lap("densify")
        # one densification event (clone/split/prune) timed on its own, amortised over its period
        if i == warmup + steps - 1:
            due = (step // densify.every + 1) * densify.every  # the next step it fires at
            t0 = clock.now()
            stats = densify.densify_step(expert.params, optimizers, state, due, extent, generator=generator)
            event_ms.append(1000.0 * (clock.now() - t0))
            if stats["n_after"] != stats["n_before"]:
                expert.after_densify()
        if i >= warmup:
            records.append(clock.parts)
    parts = {p: statistics.median(r[p] for r in records) for p in PARTS}
    parts["densify"] += event_ms[0] / max(densify.every, 1)
    result = {"family": family, "gaussians": n_points, "densify_event_ms": round(event_ms[0], 2)}
    result.update({f"{p}_ms": round(v, 2) for p, v in parts.items()})
    result["step_ms"] = round(sum(parts.values()), 2)
    result["step_ms_min"] = round(min(sum(r.values()) for r in records), 2)
    return result


def preset_gaussians(family: str, settings: dict) -> int:
    """The family's Gaussian cap in the demo preset; a family the demo does not train (static) gets
    the largest cap of those it does, the load a demo expert reaches."""
    def cap(name: str) -> int:
        return config_from_dict(get_family(name), dict(settings[name])).densify.max_gaussians

    trained = [name for name in family_names() if name in settings]
    return cap(family) if family in settings else max(cap(name) for name in trained)


def run(families: list[str], n_points: int | None, steps: int, cpu_time: bool = False, malloc: str = "retain") -> dict:
    """All families' step splits, each at `n_points` Gaussians or, for None, at its demo preset cap;
    `cpu_time` runs on one thread and measures its CPU time; `malloc` "retain" applies the stages'
    allocator settings first (see the module docstring)."""
    import numba

    if malloc not in ("retain", "default"):
        raise InputError(f"malloc must be 'retain' or 'default', got {malloc!r}")
    retained = retain_freed_memory() if malloc == "retain" else False

    settings = demo_settings()
    threads = torch.get_num_threads(), numba.get_num_threads()
    if cpu_time:
        torch.set_num_threads(1)
        numba.set_num_threads(1)
    try:
        rows = [bench_family(f, settings, n_points or preset_gaussians(f, settings), steps, cpu_time)
                for f in families]
    finally:  # a caller's later work (a test in the same process) keeps its thread counts
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
    return {
        "cpu": cpu_description(),
        "clock": "thread CPU time, 1 thread" if cpu_time else "wall time",
        "malloc": "freed blocks retained" if retained else "C library defaults",
        "width": PRESETS["demo"].width,
        "height": PRESETS["demo"].height,
        "families": rows,
    }


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cpu = result["cpu"]
    table = Table(title=f"one training step at the demo preset ({result['width']}x{result['height']}), "
                        f"median ms ({result['clock']})")
    for col in ("family", "N", *PARTS, "step", "step min", "densify event"):
        table.add_column(col, justify="right")
    for r in result["families"]:
        table.add_row(r["family"], str(r["gaussians"]), *(f"{r[p + '_ms']:.1f}" for p in PARTS),
                      f"{r['step_ms']:.1f}", f"{r['step_ms_min']:.1f}", f"{r['densify_event_ms']:.1f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"numba target {cpu['numba_target']} ({cpu['numba_simd']}), host {cpu['cpu_model']}, "
                  f"{cpu['threads']} torch threads, malloc: {result['malloc']}, OpenMP waiting: {cpu['openmp_waiting']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moegs.bench_step", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.add_argument("--families", default=",".join(family_names()), help="comma-separated families")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per family (after 3 warm-up steps)")
    parser.add_argument("--gaussians", type=int, default=None,
                        help="Gaussians per expert (default: each family's cap in the demo preset)")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time (for a loaded machine)")
    parser.add_argument("--malloc", choices=("retain", "default"), default="retain",
                        help="retain: the stages' allocator settings (moegs.allocator); default: the C library's")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in family_names()]
    if unknown or not families:
        raise SystemExit(f"--families: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(family_names())}")
    if args.steps < 1 or (args.gaussians is not None and args.gaussians < 1):
        raise SystemExit("--steps and --gaussians must be at least 1")
    result = run(families, args.gaussians, args.steps, args.cpu_time, args.malloc)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)


if __name__ == "__main__":
    main()
