"""Render speed of a K-expert mixture at a real resolution: single pass against the naive 2K passes.

    python -m moegs.moe.bench [--device auto] [--families hexplane,embedding,keyframe]
                              [--gaussians 300000] [--width 1352] [--height 1014] [--json]

The experts are built from random points in the camera's view (their motion fields at their
initial values), so the figure measures the renderer, not a training run: deformation of every
expert, one rasterisation of all experts and channels (or 2K of them) and the blend. Both paths
render the same frames; their largest difference is reported next to the times.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from moegs.cameras import Camera
from moegs.context import RenderContext, resolve_context
from moegs.experts import get_family
from moegs.moe.model import MoEModel
from moegs.moe.render import FrozenExperts
from moegs.moe.router import PixelRouter

N_FRAMES = 300


def bench_camera(width: int, height: int) -> Camera:
    """A pinhole camera at the origin looking down +z with a 60 degree horizontal field of view."""
    focal = 0.5 * width / math.tan(math.radians(30.0))
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Camera("bench", width, height, K, np.eye(3), np.zeros(3))


def random_points(n: int, camera: Camera, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` coloured points filling the camera's view at 3-5 units depth, each with a random time."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(3.0, 5.0, n)
    fx = camera.K[0, 0]
    x = (rng.random(n) - 0.5) * 1.1 * camera.width / fx * z
    y = (rng.random(n) - 0.5) * 1.1 * camera.height / fx * z
    return np.stack([x, y, z], axis=1), rng.random((n, 3)), rng.random(n).astype(np.float32)


def build_mixture(families: list[str], n: int, camera: Camera, ctx: RenderContext) -> MoEModel:
    experts = []
    for k, family in enumerate(families):
        cls = get_family(family)
        xyz, rgb, times = random_points(n, camera, seed=k)
        experts.append(cls.from_points(cls.config_class(), xyz, rgb, times, N_FRAMES).to(ctx.device))
    router = PixelRouter([e.num_gaussians for e in experts]).to(ctx.device)
    return MoEModel(FrozenExperts(experts, cache=False), router, 0.01, [])


def _timed_ms(render, frames: list[float], ctx: RenderContext) -> float:
    """Median milliseconds per frame over ``frames`` after one warm-up frame."""
    render(frames[0])
    times = []
    for t in frames:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        began = time.perf_counter()
        render(t)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        times.append((time.perf_counter() - began) * 1000.0)
    return float(np.median(times))


@torch.no_grad()
def run_bench(families: list[str], n: int, width: int, height: int, ctx: RenderContext, frames: int = 10) -> dict:
    camera = bench_camera(width, height)
    model = build_mixture(families, n, camera, ctx)
    rays = camera.rays(ctx.device)
    times = [i / N_FRAMES for i in range(0, N_FRAMES, max(1, N_FRAMES // frames))][:frames]

    def render(single_pass: bool):
        return lambda t: model.blend(camera, t, ctx, single_pass=single_pass, rays=rays).image

    single_ms = _timed_ms(render(True), times, ctx)
    naive_ms = _timed_ms(render(False), times, ctx)
    diff = float((render(True)(times[-1]) - render(False)(times[-1])).abs().max())
    result = {
        "families": families,
        "gaussians_per_expert": n,
        "width": width,
        "height": height,
        "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
        "backend": ctx.backend,
        "single_pass_ms": round(single_ms, 2),
        "naive_ms": round(naive_ms, 2),
        "single_pass_fps": round(1000.0 / single_ms, 1),
        "naive_fps": round(1000.0 / naive_ms, 1),
        "speedup": round(naive_ms / single_ms, 2),
        "max_abs_diff": diff,
    }
    if ctx.device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moegs.moe.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--families", default="hexplane,embedding,keyframe")
    parser.add_argument("--gaussians", type=int, default=300_000, help="per expert")
    parser.add_argument("--width", type=int, default=1352)
    parser.add_argument("--height", type=int, default=1014)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)
    if args.gaussians < 1 or args.width < 16 or args.height < 16 or args.frames < 1:
        parser.error("need --gaussians >= 1, --width/--height >= 16 and --frames >= 1")
    ctx = resolve_context(args.device, args.backend)
    result = run_bench([f.strip() for f in args.families.split(",") if f.strip()], args.gaussians,
                       args.width, args.height, ctx, args.frames)
    if args.json:
        print(json.dumps(result))
        return
    print(f"K={len(result['families'])} MoE ({', '.join(result['families'])}), {args.gaussians} Gaussians each, "
          f"{args.width}x{args.height}, {result['device']} / {result['backend']}:")
    print(f"  single pass {result['single_pass_ms']:.1f} ms ({result['single_pass_fps']} FPS), "
          f"naive 2K passes {result['naive_ms']:.1f} ms ({result['naive_fps']} FPS), "
          f"{result['speedup']:.2f}x, max |diff| {result['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
