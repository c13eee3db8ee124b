"""``moegs demo``: the whole pipeline on the built-in synthetic scene, every step an ordinary stage.

synth -> preprocess -> train-experts (all four) -> train-router -> prune -> distill -> render -> bench.
Each step writes (or finds) its artifact, so a second run finishes at once. This orchestrator sits
beside the CLI, above the stages, so that no stage imports another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from moegs.config import resolve_config
from moegs.data.synthetic import PRESETS, generate
from moegs.errors import InputError, MoegsError
from stages import bench, distill, preprocess, prune, render, train_experts, train_router
from stages.common import StageResult

log = logging.getLogger("moegs")


@dataclass
class DemoResult:
    bench: StageResult
    renders: list[StageResult]
    table: str
    steps: dict[str, StageResult]


def preset_config(preset: str) -> Path:
    """The YAML config (one section per stage) that ``demo --preset NAME`` runs with."""
    path = Path(str(resources.files("stages") / "presets" / f"{preset}.yaml"))
    if not path.is_file():
        raise InputError(f"no demo configuration for preset {preset!r} (have: {', '.join(available_presets())})")
    return path


def available_presets() -> list[str]:
    folder = resources.files("stages") / "presets"
    return sorted(Path(str(p)).stem for p in folder.iterdir() if str(p).endswith(".yaml"))


def synthetic_source(workspace: Path, preset: str, seed: int, progress: bool) -> Path:
    """The raw synthetic capture, generated once per (preset, seed) under the workspace."""
    raw = Path(workspace) / "_sources" / f"synthetic_{preset}_seed{seed}"
    scene_file = raw / "scene.json"
    if scene_file.is_file():
        info = json.loads(scene_file.read_text())
        if info.get("preset", {}).get("name") == preset and info.get("seed") == seed:
            return raw
        raise InputError(f"{raw}: holds another synthetic scene; remove it to regenerate")
    generate(raw, preset=preset, seed=seed, progress=progress)
    return raw


def run(preset: str, workspace: Path, *, seed: int = 0, force: bool = False, progress: bool = True,
        overrides: list[str] | None = None, device: str | None = None, backend: str | None = None) -> DemoResult:
    """Every stage of the pipeline in order; ``device`` and ``backend`` go to every stage that renders."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    config_file = preset_config(preset)
    workspace = Path(workspace)

    def section(cls, name):
        prefix = name + "."
        own = [o[len(prefix):] for o in overrides or [] if o.startswith(prefix)]
        placement = {"device": device, "backend": backend} if "device" in cls.__dataclass_fields__ else {}
        return resolve_config(cls, config_file, name, own, explicit=placement)

    demo_cfg = section(DemoSettings, "demo")
    raw = synthetic_source(workspace, preset, seed, progress)
    steps: dict[str, StageResult] = {}
    steps["dataset"] = preprocess.run(section(preprocess.PreprocessConfig, "preprocess"), raw, workspace,
                                      scene=f"synthetic_{preset}", force=force, progress=progress)
    dataset_ref = str(steps["dataset"].artifact.path)
    outcomes = train_experts.run(section(train_experts.TrainExpertsConfig, "train_experts"), dataset_ref, workspace,
                                 force=force, progress=progress)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise MoegsError("expert training failed: " + "; ".join(f"{o.family}: {o.error}" for o in failed))
    expert_refs = [str(o.result.artifact.path) for o in outcomes]
    for outcome in outcomes:
        steps[f"expert {outcome.family}"] = outcome.result
    steps["moe"] = train_router.run(section(train_router.TrainRouterConfig, "train_router"), expert_refs, workspace,
                                    force=force, progress=progress)
    moe_ref = str(steps["moe"].artifact.path)
    steps["pruned"] = prune.run(section(prune.PruneConfig, "prune"), moe_ref, workspace, force=force, progress=progress)
    distill_cfg = section(distill.DistillConfig, "distill")
    distilled, baseline = distill.run(distill_cfg, moe_ref, demo_cfg.student, workspace, force=force, progress=progress)
    steps["distilled"] = distilled
    if baseline is not None:
        steps["baseline"] = baseline
    if demo_cfg.distill_without_novel and distill_cfg.novel_views:
        train_views = dataclasses.replace(distill_cfg, novel_views=0, baseline=False)
        steps["distilled, training views"], _ = distill.run(train_views, moe_ref, demo_cfg.student, workspace,
                                                            force=force, progress=progress)
    render_cfg = section(render.RenderConfig, "render")
    renders = [render.run(render_cfg, moe_ref, workspace, force=force, progress=progress)]
    if demo_cfg.novel_path:
        path_cfg = section(render.RenderConfig, "render")
        path_cfg.cameras = "path"
        renders.append(render.run(path_cfg, moe_ref, workspace, force=force, progress=progress))
    models = expert_refs + [moe_ref] + [str(steps[k].artifact.path) for k in ("pruned", *DISTILL_STEPS) if k in steps]
    bench_result = bench.run(section(bench.BenchConfig, "bench"), models, workspace, force=force, progress=progress)
    table = bench_result.artifact.file("results.md").read_text() + distillation_note(steps, distill_cfg.novel_views)
    return DemoResult(bench_result, renders, table, steps)


DISTILL_STEPS = ("distilled", "baseline", "distilled, training views")


def distillation_note(steps: dict[str, StageResult], novel_views: int) -> str:
    """What distillation gains over the GT-only baseline, with the pseudo-views and without them
    (issue 12: tells the MoE's knowledge apart from the extra views)."""
    if "baseline" not in steps:
        return ""
    base = steps["baseline"].artifact.metrics["psnr"]
    gains = [f"{steps['distilled'].artifact.metrics['psnr'] - base:+.2f} dB with {novel_views} novel views"]
    if "distilled, training views" in steps:
        gains.append(f"{steps['distilled, training views'].artifact.metrics['psnr'] - base:+.2f} dB with the training views only")
    return "\nDistillation over the GT-only baseline (PSNR): " + ", ".join(gains) + ".\n"


@dataclass
class DemoSettings:
    """The ``demo`` section: choices that belong to the demo itself."""

    student: str = "keyframe"
    """Family distilled from the MoE."""
    novel_path: bool = True
    """Also render the MoE along a spiral through the rig."""
    distill_without_novel: bool = True
    """Also distil with the training views only (novel_views=0, no second baseline), to tell the
    MoE's knowledge apart from the pseudo-views' in the table."""
