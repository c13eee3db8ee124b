"""Scale benchmark: time and peak memory of every stage on an N3V-shaped capture, per frame count.

    python -m moegs.bench_scale [--frames 30,100,300] [--cameras 20] [--size 1352x1014] [--json]

Writes a synthetic capture in the real N3V format (``camXX.mp4`` + ``poses_bounds.npy``, so the real
reader and decoder run), then for each frame count runs preprocess, train-experts (one run per
family, a few steps each), train-router, prune, render (test camera) and bench, each as its own
``moegs`` child process, and reads that child's peak resident memory from ``os.wait4`` (and its peak
CUDA memory on a GPU). Memory must stay flat in the number of frames: the goal is at most 4 GB at
300 frames and at most 1.2x the smallest case. Also times frame decoding of a 1080x1920 and a
2704x2028 video, decoded at full size and resized in Python versus scaled by ffmpeg while decoding.

The amount of work per stage defaults by device (``WORK``): at 1352x1014 one rasterisation of a
freshly initialised expert of 20,000 carved points costs about 2 seconds on two cores, so on a CPU
each stage does the least that still measures it (10,000 points, 2 steps per family, 1 scored
frame and view, 2 rendered frames) and the default run ends in about 15 minutes; on a GPU,
20,000 points, a few dozen steps and every frame rendered.

The content is cheap but geometrically consistent: every camera looks down +z with the same
rotation, so a fronto-parallel textured plane at depth d appears shifted by f * offset / d pixels.
A textured background plane and a moving textured square nearer to the rig give parallax and motion.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from moegs.cameras import Camera, cameras_to_llff
from moegs.data.video import iter_video, write_video

FAMILIES = ("hexplane", "embedding", "polynomial", "keyframe")
WORK = {
    "cpu": {"steps": 2, "router_steps": 1, "eval_frames": 1, "score_views": 1, "render_frames": 2, "init_points": 10000},
    "cuda": {"steps": 24, "router_steps": 12, "eval_frames": 4, "score_views": 8, "render_frames": 0, "init_points": 20000},
}
"""Default work per stage by device (see the module docstring); every option overrides its entry."""
SCENE = "scale"
BACKGROUND_DEPTH = 4.0
OBJECT_DEPTH = 2.0
RIG_SPACING = 0.08
"""Distance between neighbouring cameras of the grid (N3V's rig spans about half a metre)."""

# The child runs the CLI and, on a GPU, reports its peak CUDA memory at exit to the file in argv[1].
CHILD = """\
import atexit, json, sys
peak_file = sys.argv.pop(1)
def _peak():
    import torch
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    open(peak_file, "w").write(json.dumps(peak))
atexit.register(_peak)
from moegs_cli.app import main
main()
"""


# ---------------------------------------------------------------------------------------------
# The capture


def rig(n_cameras: int, width: int, height: int) -> list[Camera]:
    """A forward-facing grid of cameras, ``cam00`` in the middle (N3V's test camera)."""
    cols = math.ceil(math.sqrt(n_cameras))
    rows = math.ceil(n_cameras / cols)
    grid = [((c - (cols - 1) / 2) * RIG_SPACING, (r - (rows - 1) / 2) * RIG_SPACING)
            for r in range(rows) for c in range(cols)]
    grid.sort(key=lambda xy: (xy[0] ** 2 + xy[1] ** 2, xy))
    focal = 0.8 * width
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    return [Camera(f"cam{i:02d}", width, height, K, np.eye(3), -np.array([x, y, 0.0]), near=1.0,
                   far=2 * BACKGROUND_DEPTH) for i, (x, y) in enumerate(grid[:n_cameras])]


def _texture(rng: np.random.Generator, height: int, width: int, block: int) -> np.ndarray:
    """Blocky random colours over a smooth gradient: plenty of detail, no aliasing worries."""
    coarse = rng.integers(0, 256, (height // block + 1, width // block + 1, 3), dtype=np.uint8)
    tex = np.kron(coarse, np.ones((block, block, 1), np.uint8))[:height, :width]
    ramp = (np.arange(width) * 128 // max(width, 1)).astype(np.uint8)
    return (tex // 2 + ramp[None, :, None] // 2).astype(np.uint8)


def camera_frames(camera: Camera, n_frames: int, seed: int = 0):
    """Frames of one camera: the background plane shifted by its parallax, the square moving over it."""
    width, height, focal = camera.width, camera.height, camera.K[0, 0]
    cx, cy = camera.center[:2]
    margin = int(focal * 2 * RIG_SPACING * 3 / BACKGROUND_DEPTH) + 2
    rng = np.random.default_rng(seed)
    background = _texture(rng, height + 2 * margin, width + 2 * margin, block=max(4, width // 96))
    side = height // 4
    square = _texture(rng, side, side, block=max(2, side // 12))
    bx, by = margin + int(round(focal * cx / BACKGROUND_DEPTH)), margin + int(round(focal * cy / BACKGROUND_DEPTH))
    view = background[by:by + height, bx:bx + width]
    for i in range(n_frames):
        phase = 2 * math.pi * i / max(n_frames, 1)
        x = width / 2 + 0.3 * width * math.sin(phase) + focal * cx / OBJECT_DEPTH - side / 2
        y = height / 2 + 0.15 * height * math.sin(2 * phase) + focal * cy / OBJECT_DEPTH - side / 2
        x0, y0 = int(round(np.clip(x, 0, width - side))), int(round(np.clip(y, 0, height - side)))
        frame = view.copy()
        frame[y0:y0 + side, x0:x0 + side] = square
        yield frame


def write_capture(root: Path, n_cameras: int, width: int, height: int, n_frames: int, workers: int) -> None:
    """An N3V folder: ``camXX.mp4`` per camera (encoded in parallel; x264's ultrafast preset, as the
    capture is a fixture, not what is measured) and ``poses_bounds.npy``."""
    root.mkdir(parents=True, exist_ok=True)
    cameras = rig(n_cameras, width, height)
    np.save(root / "poses_bounds.npy", cameras_to_llff(cameras))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(write_video, root / f"{cam.name}.mp4", camera_frames(cam, n_frames), 30.0,
                            preset="ultrafast") for cam in cameras]
        for job in jobs:
            job.result()


# ---------------------------------------------------------------------------------------------
# Running stages


def run_cli(args: list[str], log_path: Path) -> dict:
    """Run ``moegs ARGS`` as a child: wall seconds, CPU seconds (user + system: on a shared machine the
    load-independent figure), peak RSS (MB) and peak CUDA memory (MB or None)."""
    peak_file = log_path.with_suffix(".cuda.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                     os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(peak_file), *args], stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"moegs {' '.join(args[:3])} ... exited {child.returncode}; log {log_path}:\n"
                           + "\n".join(tail))
    peak_cuda = json.loads(peak_file.read_text()) if peak_file.is_file() else None
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "peak_cuda_mb": peak_cuda}


def bench_config(steps: int, router_steps: int, eval_frames: int, score_views: int) -> dict:
    """Short schedules: a few steps per stage are enough to see time per step and memory. Every stage
    scores the same ``eval_frames`` spread frames (and prune ``score_views`` views) at every frame
    count, so only what must grow with the capture does: preprocess, and the render when it draws
    every frame (``--render-frames 0``)."""
    return {
        "train_experts": {"checkpoint_every": 10 * steps, "eval_frames": eval_frames,
                          **{name: {"iterations": steps} for name in FAMILIES}},
        "train_router": {"iterations": router_steps, "log_every": max(1, router_steps), "eval_frames": eval_frames},
        "prune": {"keep_fraction": 0.5, "score_views": score_views, "finetune_steps": 0, "eval_frames": eval_frames},
        "render": {"png": False},
        "bench": {"fps_repeats": 1, "eval_frames": eval_frames},
    }


def artifacts(workspace: Path, kind: str) -> list[Path]:
    """Finished artifact folders of one kind, oldest first."""
    found = [p for p in (workspace / SCENE / kind).glob("*") if (p / "manifest.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def render_step(n_frames: int, render_frames: int) -> int:
    """The render's ``frame_step`` that draws about ``render_frames`` frames spread over the clip (0 = all)."""
    return 1 if render_frames <= 0 else max(1, math.ceil(n_frames / render_frames))


def run_case(capture: Path, workspace: Path, n_frames: int, families: list[str], config: Path,
             preprocess_args: list[str], render_frames: int = 0) -> tuple[list[dict], dict[str, float]]:
    """Every stage on the first ``n_frames`` frames; rows for the table and seconds per training step.
    ``preprocess_args``: the initial points' options and any ``--downscale``."""
    workspace.mkdir(parents=True, exist_ok=True)
    base = ["--workspace", str(workspace), "--log-level", "warning"]
    rows: list[dict] = []

    def stage(name: str, args: list[str]) -> None:
        row = run_cli([*base, *args], workspace / f"{name.replace(':', '-')}.log")
        rows.append({"frames": n_frames, "stage": name, **row})
        cuda = "" if row["peak_cuda_mb"] is None else f", cuda {row['peak_cuda_mb']:.0f} MB"
        print(f"  {n_frames:4d} frames  {name:22s} {row['seconds']:7.1f} s  rss {row['peak_rss_mb']:7.0f} MB{cuda}",
              file=sys.stderr, flush=True)

    stage("preprocess", ["preprocess", str(capture), "--format", "n3v", "--scene", SCENE,
                         "--frame-stop", str(n_frames), *preprocess_args])
    dataset = str(artifacts(workspace, "dataset")[-1])
    step_seconds = {}
    for family in families:
        stage(f"train-experts:{family}", ["train-experts", "--dataset", dataset, "--experts", family, "-c", str(config)])
        manifest = json.loads((artifacts(workspace, "expert")[-1] / "manifest.json").read_text())
        steps = manifest["config"]["iterations"]
        step_seconds[family] = manifest["metrics"]["train_seconds"] / steps
    experts = [str(p) for p in artifacts(workspace, "expert")]
    stage("train-router", ["train-router", "--experts", ",".join(experts), "-c", str(config)])
    moe = str(artifacts(workspace, "moe")[-1])
    stage("prune", ["prune", "--moe", moe, "-c", str(config)])
    pruned = str(artifacts(workspace, "moe")[-1])
    stage("render", ["render", "--model", pruned, "-c", str(config),
                     "--set", f"frame_step={render_step(n_frames, render_frames)}"])
    stage("bench", ["bench", *experts, moe, pruned, "-c", str(config)])
    return rows, step_seconds


# ---------------------------------------------------------------------------------------------
# Decoding


DECODE_SIZES = ((1080, 1920), (2704, 2028))


def bench_decoding(workdir: Path, n_frames: int, sizes: tuple[tuple[int, int], ...] = DECODE_SIZES) -> list[dict]:
    """Seconds per frame to get half-size frames: full decode + PIL Lanczos versus ffmpeg's scaler
    (both include starting ffmpeg once per video, as preprocess does)."""
    results = []
    for width, height in sizes:
        path = workdir / f"decode_{width}x{height}.mp4"
        cam = rig(1, width, height)[0]
        write_video(path, camera_frames(cam, n_frames), 30.0)
        target = (width // 2, height // 2)
        started = time.perf_counter()
        for frame in iter_video(path):
            np.asarray(Image.fromarray(frame).resize(target, Image.Resampling.LANCZOS))
        python_resize = (time.perf_counter() - started) / n_frames
        started = time.perf_counter()
        for _ in iter_video(path, size=target):
            pass
        ffmpeg_scale = (time.perf_counter() - started) / n_frames
        results.append({"source": f"{width}x{height}", "target": f"{target[0]}x{target[1]}",
                        "decode_then_resize_s": python_resize, "ffmpeg_scale_s": ffmpeg_scale,
                        "speedup": python_resize / ffmpeg_scale})
    return results


# ---------------------------------------------------------------------------------------------
# Command line


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1352x1014") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"--size {text!r}: even sizes of at least 16x16 (H.264 stores 4:2:0 chroma)")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moegs.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="30,100,300", help="Comma-separated frame counts (default 30,100,300).")
    parser.add_argument("--cameras", type=int, default=20, help="Cameras in the rig (default 20, as N3V).")
    parser.add_argument("--size", type=_parse_size, default=(1352, 1014), help="WIDTHxHEIGHT (default 1352x1014).")
    parser.add_argument("--source-scale", type=int, default=1,
                        help="Write the videos at this multiple of --size and preprocess with --downscale K, "
                             "as N3V's 2704x2028 videos are (default 1: at --size; 2 is N3V's real decode).")
    cpu, gpu = WORK["cpu"], WORK["cuda"]
    by_device = "default {} on a CPU, {} on a GPU"
    parser.add_argument("--steps", type=int, default=None,
                        help="Training steps per expert family (" + by_device.format(cpu["steps"], gpu["steps"]) + ").")
    parser.add_argument("--router-steps", type=int, default=None,
                        help="Router training steps (" + by_device.format(cpu["router_steps"], gpu["router_steps"]) + ").")
    parser.add_argument("--eval-frames", type=int, default=None,
                        help="Test frames every stage scores, spread evenly (0 = all; "
                             + by_device.format(cpu["eval_frames"], gpu["eval_frames"]) + ").")
    parser.add_argument("--score-views", type=int, default=None,
                        help="Training views prune scores (0 = all; " + by_device.format(cpu["score_views"], gpu["score_views"]) + ").")
    parser.add_argument("--render-frames", type=int, default=None,
                        help="Frames the render draws, spread over the clip (0 = every frame; "
                             + by_device.format(cpu["render_frames"], "all") + ").")
    parser.add_argument("--families", default=",".join(FAMILIES), help="Expert families (default: all four).")
    parser.add_argument("--init-points", type=int, default=None,
                        help="Initial points the carving keeps (" + by_device.format(cpu["init_points"], gpu["init_points"]) + ").")
    parser.add_argument("--init-arg", action="append", default=None,
                        help="Preprocess arguments for the initial points instead (repeatable; default: "
                             "--init carve --init-points N).")
    parser.add_argument("--decode-frames", type=int, default=30,
                        help="Frames per video in the decoding comparison (0 skips it; default 30).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep everything here (default: a temp folder, removed).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON on stdout.")
    args = parser.parse_args(argv)
    import torch  # after parsing, so --help stays quick

    work = WORK["cuda" if torch.cuda.is_available() else "cpu"]
    for key, value in work.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        frame_counts = sorted({int(v) for v in args.frames.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--frames {args.frames!r}: expected comma-separated integers")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not frame_counts or min(frame_counts) < 2 or args.cameras < 2 or args.steps < 1 or args.router_steps < 1:
        parser.error("need frame counts >= 2, at least 2 cameras and at least one step")
    if min(args.eval_frames, args.score_views, args.render_frames) < 0 or min(args.init_points, args.source_scale) < 1:
        parser.error("--eval-frames, --score-views and --render-frames must be >= 0 (0 = all), "
                     "--init-points and --source-scale >= 1")
    unknown = sorted(set(families) - set(FAMILIES))
    if not families or unknown:
        parser.error(f"--families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="moegs-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    width, height = args.size
    source = (width * args.source_scale, height * args.source_scale)
    init = args.init_arg or ["--init", "carve", "--init-points", str(args.init_points)]
    preprocess_args = [*init, *(["--downscale", str(args.source_scale)] if args.source_scale > 1 else [])]
    try:
        decode = bench_decoding(workdir, args.decode_frames) if args.decode_frames > 0 else []
        capture = workdir / "capture"
        started = time.perf_counter()
        write_capture(capture, args.cameras, *source, max(frame_counts), workers)
        print(f"capture: {args.cameras} cameras x {max(frame_counts)} frames at {source[0]}x{source[1]} written in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        config = workdir / "bench_scale.yaml"
        config.write_text(json.dumps(bench_config(args.steps, args.router_steps, args.eval_frames, args.score_views),
                                     indent=1))  # JSON is YAML
        cases: list[dict] = []
        step_seconds: dict[int, dict[str, float]] = {}
        for n_frames in frame_counts:
            case_dir = workdir / f"frames{n_frames}"
            rows, step_seconds[n_frames] = run_case(capture, case_dir, n_frames, families, config, preprocess_args,
                                                    args.render_frames)
            cases.extend(rows)
            if args.workdir is None:
                shutil.rmtree(case_dir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"cameras": args.cameras, "width": width, "height": height, "steps": args.steps,
              "router_steps": args.router_steps, "eval_frames": args.eval_frames, "score_views": args.score_views,
              "render_frames": args.render_frames, "init": init, "source": f"{source[0]}x{source[1]}",
              "cases": cases,
              "train_step_seconds": step_seconds, "decode": decode, "cpu": _cpu_model()}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    """The table, the RSS goal check, seconds per training step and the decoding comparison."""
    source = report.get("source", f"{report['width']}x{report['height']}")
    decoded = "" if source == f"{report['width']}x{report['height']}" else f" (decoded from {source} videos)"
    lines = [f"{report['cameras']} cameras at {report['width']}x{report['height']}{decoded} ({report['cpu']}); "
             f"{report['steps']} steps per family, {report['router_steps']} router steps, every stage scores "
             f"{report['eval_frames'] or 'all'} spread test frames, prune {report['score_views'] or 'all'} views, "
             f"render {report.get('render_frames') or 'all'} frames; init {' '.join(report.get('init', []))}",
             f"{'frames':>6}  {'stage':24s} {'seconds':>8} {'CPU s':>8}  {'peak RSS MB':>11}  {'peak CUDA MB':>12}"]
    for row in report["cases"]:
        cuda = "-" if row["peak_cuda_mb"] is None else f"{row['peak_cuda_mb']:.0f}"
        lines.append(f"{row['frames']:6d}  {row['stage']:24s} {row['seconds']:8.1f} {row['cpu_seconds']:8.1f}  "
                     f"{row['peak_rss_mb']:11.0f}  {cuda:>12}")
    peaks = {}
    for row in report["cases"]:
        peaks[row["frames"]] = max(peaks.get(row["frames"], 0.0), row["peak_rss_mb"])
    low, high = min(peaks), max(peaks)
    ratio = peaks[high] / peaks[low]
    verdict = "meets" if peaks[high] <= 4096 and ratio <= 1.2 else "misses"
    lines.append(f"peak RSS: {peaks[low]:.0f} MB at {low} frames, {peaks[high]:.0f} MB at {high} frames "
                 f"(x{ratio:.2f}); {verdict} the goal (<= 4096 MB and <= x1.2)")
    for frames, per_family in report["train_step_seconds"].items():
        lines.append(f"seconds per training step at {frames} frames: "
                     + ", ".join(f"{family} {seconds:.2f}" for family, seconds in per_family.items()))
    for entry in report["decode"]:
        lines.append(f"decode {entry['source']} -> {entry['target']}: {entry['decode_then_resize_s'] * 1e3:.0f} ms/frame "
                     f"full size + resize, {entry['ffmpeg_scale_s'] * 1e3:.0f} ms/frame ffmpeg scaler "
                     f"(x{entry['speedup']:.1f})")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
