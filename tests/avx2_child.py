"""The AVX2 build of the cpu kernels, checked in a child process that starts when the suite is collected.

The child targets haswell without AVX-512 (``FAST_MASKED_STORES`` off: 0/1-mask arithmetic instead of
masked stores), as most machines run the kernels, and runs one comparison against torch. It compiles
every kernel again (about a minute on one core), so ``conftest`` starts it beside the rest of the
suite and ``test_raster`` waits for its result.

It also checks that kernels loaded from numba's cache compute bit for bit what the freshly compiled
ones did: with fastmath's ``reassoc`` they did not (LLVM vectorised the sums differently in the JIT
and in the cached object code), so the first run on a machine trained other weights than every
later one, and a resumed job differed from an uninterrupted one. The child compiles into an empty
cache directory, fingerprints a forward and backward pass, runs the comparison (from the cache),
then fingerprints again in a new process that loads every kernel from the cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TEST_NAME = "test_cpu_avx2_code_matches_torch"
COMPARISON = "tests/test_raster.py::test_cpu_matches_torch[800-77-43-3]"
ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Child:
    process: subprocess.Popen
    output: IO[str]
    cache: tempfile.TemporaryDirectory

    def result(self) -> tuple[int, str]:
        """Wait for the child; its exit status and output."""
        code = self.process.wait()
        self.output.seek(0)
        return code, self.output.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output.close()
        self.cache.cleanup()


def environment() -> dict[str, str]:
    return dict(os.environ, **ENV)


def start() -> Child:
    """Run the checks under the AVX2 target (output to a file: a pipe nobody reads could fill)."""
    output = tempfile.TemporaryFile("w+")
    cache = tempfile.TemporaryDirectory(prefix="moegs-avx2-numba-")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.avx2_child"],
        env={**environment(), "NUMBA_CACHE_DIR": cache.name}, cwd=ROOT, stdout=output,
        stderr=subprocess.STDOUT, text=True,
    )
    return Child(process, output, cache)


def fingerprint() -> str:
    """sha256 of the cpu backend's image, alpha, depth and every gradient on a fixed scene, and of
    the frozen-geometry pass (the router's feature walk) with its per-Gaussian contributions."""
    import torch

    from moegs.raster import GaussianSet, rasterize_multi
    from tests.test_raster import _params, _render, _scene

    gs, viewmat, K = _scene(800, 77, 43, 3, seed=800)
    params = _params(gs)
    out = _render(params, viewmat, K, 77, 43, "cpu", background=torch.full((3,), 0.3))
    loss = (out.image * out.image).sum() + out.alpha.sum() + (out.depth * out.alpha).sum()
    grads = torch.autograd.grad(loss, params)
    frozen = GaussianSet(*(t.detach() for t in params[:4]), params[4])
    weight = torch.rand((1, 43, 77), generator=torch.Generator().manual_seed(800))
    multi = rasterize_multi([frozen], viewmat, K, 77, 43, torch.full((1, 3), 0.3), backend="cpu",
                            return_contrib=True, contrib_weight=weight)
    feature_grad = torch.autograd.grad((multi.image * multi.image).sum(), params[4])
    digest = hashlib.sha256()
    for tensor in (out.image, out.alpha, out.depth, *grads, multi.image, multi.contrib[0], *feature_grad):
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fingerprint_in_new_process() -> str:
    """:func:`fingerprint` in a fresh interpreter (which compiles, or loads the kernels from the cache)."""
    run = subprocess.run([sys.executable, "-c", "from tests.avx2_child import fingerprint; print(fingerprint())"],
                         cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"fingerprint failed:\n{run.stdout}{run.stderr}")
    return run.stdout.strip().splitlines()[-1]


def main() -> int:
    """Fingerprint (compiles), the comparison against torch, fingerprint again (loads from the cache)."""
    compiled = fingerprint_in_new_process()
    comparison = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", COMPARISON], cwd=ROOT)
    cached = fingerprint_in_new_process()
    print(f"fingerprint compiled {compiled[:16]}, loaded from cache {cached[:16]}")
    if compiled != cached:
        print("kernels loaded from the cache compute other values than the freshly compiled ones")
        return 1
    return comparison.returncode


if __name__ == "__main__":
    sys.exit(main())
