"""Config layering (defaults < YAML < --set < explicit options) and strict key checking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from moegs.config import resolve_config
from moegs.errors import InputError


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
    cfg_file.write_text("stage:\n  name: b\n  train:\n    steps: 20\n")
    cfg = resolve_config(Outer, cfg_file, "stage", ["train.lr=0.5", "mode=y"], explicit={"name": "c", "stop": None})
    assert cfg == Outer(name="c", mode="y", stop=None, train=Inner(lr=0.5, steps=20))


def test_exponent_without_dot_is_a_number():
    assert resolve_config(Outer, None, "stage", ["train.lr=8e-3"]).train.lr == 0.008


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
