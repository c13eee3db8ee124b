"""Every shipped config (examples/ and the demo presets) resolves against the real stage configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from moegs.config import resolve_config
from moegs_cli.demo import DemoSettings, available_presets, preset_config
from stages import bench, distill, preprocess, prune, render, train_experts, train_router

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "preprocess": preprocess.PreprocessConfig,
    "train_experts": train_experts.TrainExpertsConfig,
    "train_router": train_router.TrainRouterConfig,
    "prune": prune.PruneConfig,
    "distill": distill.DistillConfig,
    "render": render.RenderConfig,
    "bench": bench.BenchConfig,
}
CONFIGS = sorted((ROOT / "examples").glob("*.yaml")) + [preset_config(p) for p in available_presets()]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    for section, cls in SECTIONS.items():
        cfg = resolve_config(cls, path, section)
        if section == "train_experts":
            for family in cfg.families + [f for f in ("hexplane", "embedding", "polynomial", "keyframe") if getattr(cfg, f)]:
                train_experts.family_config(cfg, family)
    resolve_config(DemoSettings, path, "demo")


def test_presets_cover_the_synthetic_presets():
    from moegs.data.synthetic import PRESETS

    assert set(available_presets()) == set(PRESETS)
