"""Config layering (defaults < YAML < --set < explicit options), strict section and key checking, and
the numeric limits every stage config enforces however it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest

import dataclasses

from moegs.config import parse_overrides, resolve_config
from moegs.errors import InputError
from moegs.experts.settings import TrainExpertsConfig
from moegs.moe.distill import DistillConfig
from moegs.moe.prune import PruneConfig
from moegs.moe.train import TrainRouterConfig
from stages.bench import BenchConfig
from stages.render import RenderConfig


@dataclass
class Inner:
    lr: float = 0.01
    steps: int = 10


@dataclass
class Outer:
    name: str = "a"
    mode: Literal["x", "y"] = "x"
    stop: int | None = None
    families: list[str] = field(default_factory=lambda: ["p", "q"])
    train: Inner = field(default_factory=Inner)


def test_layers(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("bench:\n  name: b\n  train:\n    steps: 20\n")
    cfg = resolve_config(Outer, cfg_file, "bench", ["train.lr=0.5", "mode=y"], explicit={"name": "c", "stop": None})
    assert cfg == Outer(name="c", mode="y", stop=None, train=Inner(lr=0.5, steps=20))


def test_exponent_without_dot_is_a_number():
    assert resolve_config(Outer, None, "stage", ["train.lr=8e-3"]).train.lr == 0.008


@pytest.mark.parametrize(
    ("text", "value"),
    [("30:45", "30:45"), ("010", 10), ("1e4", 1e4), ("-2", -2), ("0x10", 16), ("1_000", 1000), (".5", 0.5)],
)
def test_yaml_numbers_are_yaml_1_2(text, value):
    """YAML 1.1 reads 30:45 as the base-60 number 1845 and 010 as octal 8: in a frame range or an
    iteration count that is a silent wrong value. Both --set and config files read YAML 1.2 numbers."""
    parsed = parse_overrides([f"k={text}"])["k"]
    assert parsed == value and type(parsed) is type(value)


def test_frame_range_from_set_and_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train_experts:\n  frames: 30:45\n")
    assert resolve_config(TrainExpertsConfig, cfg_file, "train_experts", []).frames == "30:45"
    assert resolve_config(TrainExpertsConfig, None, "train_experts", ["frames=5:9"]).frames == "5:9"


def test_list_from_comma_string():
    assert resolve_config(Outer, None, "stage", ["families=a,b,c"]).families == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key train.lrr"),
        ("nope=1", "unknown config key nope"),
        ("train.steps=abc", "train.steps: expected an integer"),
        ("mode=z", "mode: 'z' is not one of"),
        ("novalue", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_named(override, message):
    with pytest.raises(InputError, match=message):
        resolve_config(Outer, None, "stage", [override])


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml: invalid YAML"):
        resolve_config(Outer, bad, "stage", [])
    with pytest.raises(InputError, match="config file not found"):
        resolve_config(Outer, tmp_path / "missing.yaml", "stage", [])


def test_misspelled_section_is_refused_by_name(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train_router:\n  iterations: 10\ntrian_router:\n  tau: 0.5\n")
    with pytest.raises(InputError, match="unknown section 'trian_router' \\(did you mean 'train_router'"):
        resolve_config(TrainRouterConfig, cfg_file, "train_router")


@pytest.mark.parametrize(
    ("cls", "section", "override", "message"),
    [
        (TrainRouterConfig, "train_router", "iterations=0", "iterations: must be >= 1, got 0"),
        (TrainRouterConfig, "train_router", "tau=0", "tau: must be > 0, got 0"),
        (TrainRouterConfig, "train_router", "tau=-0.5", "tau: must be > 0"),
        (TrainRouterConfig, "train_router", "lr_gates=.nan", "lr_gates: must be a finite number"),
        (RenderConfig, "render", "tau=0", "tau: must be > 0"),
        (RenderConfig, "render", "tau=-1", "tau: must be > 0"),
        (TrainExpertsConfig, "train_experts", "checkpoint_every=0", "checkpoint_every: must be >= 1"),
        (TrainExpertsConfig, "train_experts", "hexplane.iterations=0", "hexplane.iterations: must be >= 1"),
        (TrainExpertsConfig, "train_experts", "static.densify.every=0", "static.densify.every: must be >= 1"),
        (TrainExpertsConfig, "train_experts", "keyframe.background=[0,0]", "background: must be 3 numbers"),
        (TrainExpertsConfig, "train_experts", "keyframe.background=meen", "background: 'meen' is not one of 'mean'"),
        (TrainExpertsConfig, "train_experts", "keyframe.background=[0,1.5,0]", "background: must be <= 1"),
        (TrainExpertsConfig, "train_experts", "polynomial.densify.stopp=1", "unknown config key polynomial.densify.stopp"),
        (TrainExpertsConfig, "train_experts", "families=hexplane,nope", "unknown expert family 'nope'"),
        (PruneConfig, "prune", "keep_fraction=1.5", "keep_fraction: must be <= 1"),
        (DistillConfig, "distill", "steps=0", "steps: must be >= 1"),
        (BenchConfig, "bench", "fps_repeats=0", "fps_repeats: must be >= 1"),
    ],
)
def test_numbers_outside_their_limits_are_refused(cls, section, override, message):
    with pytest.raises(InputError, match=message):
        resolve_config(cls, None, section, [override])


def test_limits_hold_however_a_config_is_made():
    with pytest.raises(InputError, match="iterations: must be >= 1"):
        TrainRouterConfig(iterations=0)
    with pytest.raises(InputError, match="tau: must be > 0"):
        dataclasses.replace(TrainRouterConfig(), tau=0.0)
    with pytest.raises(InputError, match="not both"):
        PruneConfig(keep_fraction=0.5, threshold=1.0)
    densify = resolve_config(TrainExpertsConfig, None, "train_experts", ["hexplane.densify.stop=700"]).hexplane
    assert densify == {"densify": {"stop": 700}}


def test_background_mean_is_kept_until_a_dataset_resolves_it():
    from moegs.experts import get_family
    from moegs.experts.base import resolved_background
    from moegs.experts.settings import family_config

    cfg = resolve_config(TrainExpertsConfig, None, "train_experts", ["polynomial.background=mean"])
    polynomial = family_config(cfg, "polynomial")
    assert polynomial.background == "mean"
    with pytest.raises(ValueError, match="background 'mean' must be resolved"):  # never rendered over a word
        get_family("polynomial").from_points(polynomial, np.zeros((4, 3)), np.zeros((4, 3)), np.zeros(4), 8)
    resolved = resolved_background(polynomial, lambda: [0.25, 0.5, 0.75])
    assert resolved.background == [0.25, 0.5, 0.75]
    assert dataclasses.replace(resolved, background="mean") == polynomial  # nothing else changed
