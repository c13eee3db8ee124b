"""Shared fixtures: one tiny synthetic capture, its dataset, and one tiny end-to-end demo run per session."""

from __future__ import annotations

import os

# before torch loads: the tests wait passively, in the CLIs they start too (the workers of pytest -n
# share the cores, and the command's short spin would take them from each other: moegs.openmp_waiting)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import avx2_child  # noqa: E402

AVX2_CHILD = pytest.StashKey[avx2_child.Child]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` every test of the tiny demo runs on one worker, which builds it once.

    tryfirst: xdist reads the groups in its own ``pytest_collection_modifyitems``."""
    for item in items:
        if "tiny_demo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_demo"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the AVX2 kernel check as soon as it is collected, so its compile runs beside the suite.

    Not in an xdist worker: every worker collects every test, and only one runs it (its fixture starts
    the child then, while the other workers go on).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(item.name == avx2_child.TEST_NAME for item in session.items):
        session.config.stash[AVX2_CHILD] = avx2_child.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    child = session.config.stash.get(AVX2_CHILD, None)
    if child is not None:
        child.stop()


@pytest.fixture
def avx2_result(request) -> tuple[int, str]:
    """Exit status and output of the AVX2 kernel check (started at collection, or now)."""
    child = request.config.stash.get(AVX2_CHILD, None)
    if child is None:
        child = request.config.stash[AVX2_CHILD] = avx2_child.start()
    return child.result()


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
