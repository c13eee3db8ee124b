"""``moegs demo --preset tiny --device cuda`` with gsplat: every artifact is written, and the
scores agree with the CPU run of the same preset within 0.5 dB (different rasterisers and float
rounding, same method). Skipped without CUDA and gsplat."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from moegs.artifacts import load_artifact
from moegs_cli.app import app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PSNR_TOLERANCE_DB = 0.5


def test_tiny_demo_on_cuda_matches_the_cpu_run(tiny_demo, tmp_path):
    pytest.importorskip("gsplat")
    workspace = tmp_path / "gpu"
    result = CliRunner().invoke(app, ["-w", str(workspace), "demo", "--preset", "tiny", "--device", "cuda", "--backend", "gsplat"])
    assert result.exit_code == 0, result.output
    manifests = sorted(p for p in workspace.rglob("manifest.json") if ".partial" not in str(p))
    by_kind: dict[str, list] = {}
    for manifest in manifests:
        artifact = load_artifact(manifest.parent)
        artifact.verify()
        by_kind.setdefault(artifact.kind, []).append(artifact)
        if artifact.kind != "dataset":
            assert artifact.manifest["context"] == {"device": "cuda:0", "backend": "gsplat"}, manifest
    cpu = {step.artifact.kind: [] for step in tiny_demo.steps.values()}
    for step in tiny_demo.steps.values():
        cpu[step.artifact.kind].append(step.artifact)
    for kind in ("dataset", "expert", "moe", "render", "bench"):
        assert len(by_kind.get(kind, [])) == len(cpu.get(kind, [])) + (len(tiny_demo.renders) if kind == "render" else 0) \
            + (1 if kind == "bench" else 0), kind
    gpu_psnr = {_label(a): a.metrics["psnr"] for a in by_kind["expert"] + by_kind["moe"]}
    cpu_psnr = {_label(a): a.metrics["psnr"] for a in cpu["expert"] + cpu["moe"]}
    assert gpu_psnr.keys() == cpu_psnr.keys()
    for label, value in gpu_psnr.items():
        print(f"{label}: CUDA {value:.2f} dB, CPU {cpu_psnr[label]:.2f} dB")
        assert abs(value - cpu_psnr[label]) <= PSNR_TOLERANCE_DB, label
    (bench,) = by_kind["bench"]
    results = json.loads(bench.file("results.json").read_text())
    assert results["backend"] == "gsplat" and len(results["rows"]) == 8


def _label(artifact) -> str:
    """Which step made the artifact, independent of ids (family, fine-tune, pruned MoE)."""
    if artifact.kind == "expert":
        return f"{artifact.compat['family']}:{artifact.metrics.get('finetune', 'trained')}"
    return "moe pruned" if artifact.compat.get("pruned") else "moe"
