"""Shared fixtures: one tiny synthetic capture, its dataset, and one tiny end-to-end demo run per session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see moegs/__init__.py)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    from moegs.data.synthetic import generate

    raw = tmp_path_factory.mktemp("raw") / "synth_tiny"
    generate(raw, preset="tiny", seed=0, progress=False)
    return raw


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo_ws")


@pytest.fixture(scope="session")
def tiny_demo(demo_workspace):
    """``moegs demo --preset tiny`` once for the whole session (about a minute)."""
    from moegs_cli import demo

    return demo.run("tiny", demo_workspace, progress=False)
