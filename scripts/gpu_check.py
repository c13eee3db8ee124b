"""The CUDA checks of the project as one run (called by scripts/gpu_check.sh): figures into one JSON.

Each step runs as a child process with its own time limit; a step that fails or is cut off is
recorded with its exit code and the tail of its output, and the next step still runs. The file is
rewritten after every step, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from moegs_cli.app import main; main()"]


def run_step(name: str, argv: list[str], limit_s: int, out: Path, parse_json: bool = False) -> dict:
    began = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit_s)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    (out / f"{name}.log").write_text(stdout + "\n--- stderr ---\n" + stderr)
    step = {"command": " ".join(argv[3:] if argv[:3] == CLI else argv), "rc": rc,
            "seconds": round(time.perf_counter() - began, 1)}
    if parse_json and rc == 0:
        try:
            step["result"] = json.loads(stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            step["result"] = None
    if rc != 0:
        step["tail"] = (stdout + stderr)[-1500:]
    return step


def bench_table(workspace: Path) -> list[dict]:
    """The rows of the newest bench artifact of a demo workspace (model, PSNR, FPS, Gaussians)."""
    files = sorted(workspace.glob("*/bench/*/results.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return []
    rows = json.loads(files[-1].read_text())["rows"]
    return [{k: r.get(k) for k in ("model", "psnr", "fps", "gaussians", "region_psnr")} for r in rows]


def environment() -> dict:
    info: dict = {"python": sys.version.split()[0]}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError as exc:
        info["torch"] = f"missing: {exc}"
    for module in ("gsplat", "diff_gaussian_rasterization", "pycolmap", "imageio_ffmpeg", "pytorch_msssim"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "present")
        except ImportError as exc:
            info[module] = f"missing: {exc}"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": environment(), "steps": {}}
    path = out / "gpu_check.json"

    def record(name: str, step: dict) -> None:
        report["steps"][name] = step
        path.write_text(json.dumps(report, indent=2))

    inria_src = Path("third_party/diff-gaussian-rasterization")
    if inria_src.joinpath("setup.py").is_file():
        record("inria_build", run_step("inria_build", [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                                                       "--no-deps", "--target", "/tmp/site", str(inria_src)], 240, out))
    else:
        record("inria_build", {"rc": None, "note": f"{inria_src} not present: diff-gaussian-rasterization is not on the "
                                                   "package index and was not carried, so the inria backend was not built"})
    # Step limits add up to under 10 minutes, one device call.
    record("pytest_cuda", run_step("pytest_cuda", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                   "tests/test_raster_cuda.py", "tests/test_cuda_pipeline.py"], 120, out))
    record("raster_bench", run_step("raster_bench", [sys.executable, "-m", "moegs.raster.bench", "--json", "--cuda-fps"],
                                    60, out, parse_json=True))
    record("moe_fps", run_step("moe_fps", [sys.executable, "-m", "moegs.moe.bench", "--device", "cuda", "--json"],
                               60, out, parse_json=True))
    for preset, limit in (("tiny", 90), ("demo", 150)):
        workspace = out.parent / f"ws_{preset}"
        step = run_step(f"demo_{preset}", CLI + ["--workspace", str(workspace), "demo", "--preset", preset,
                                                  "--device", "cuda"], limit, out)
        step["table"] = bench_table(workspace)
        record(f"demo_{preset}", step)
    record("bench_scale", run_step("bench_scale", [sys.executable, "-m", "moegs.bench_scale", "--device", "cuda",
                                                   "--json"], 90, out, parse_json=True))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
