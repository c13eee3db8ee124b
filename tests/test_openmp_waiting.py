"""OpenMP waiting: passive in the library, a short spin in the `moegs` command, never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from moegs import openmp_waiting as ow


def test_the_command_spins_briefly_unless_the_user_chose():
    env: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}  # the library's default, set by moegs itself
    assert ow.spin_briefly(env, user_set=frozenset())
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(ow.CLI_SPIN_COUNT)}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(chosen)
        assert not ow.spin_briefly(env, user_set=frozenset(chosen))
        assert env == chosen


def test_parallel_children_wait_passively_unless_the_user_chose():
    env = {"GOMP_SPINCOUNT": str(ow.CLI_SPIN_COUNT)}  # what the command set for itself
    ow.wait_passively_in_children(env, user_set=frozenset())
    assert env == {"GOMP_SPINCOUNT": "0"}
    env = {"GOMP_SPINCOUNT": "50000"}
    ow.wait_passively_in_children(env, user_set=frozenset(env))
    assert env == {"GOMP_SPINCOUNT": "50000"}


def test_the_library_defaults_to_passive_waiting():
    env: dict[str, str] = {}
    ow.wait_passively_by_default(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    ow.wait_passively_by_default(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert ow.describe({"GOMP_SPINCOUNT": "3000", "OMP_WAIT_POLICY": "PASSIVE"}) == "GOMP_SPINCOUNT=3000"
    assert ow.describe({}) == "OMP_WAIT_POLICY=unset"


def _probe(env_extra: dict[str, str]) -> str:
    """What a fresh interpreter has after importing the CLI package: torch loaded yet, and the two variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    code = ("import os, sys, moegs_cli; "
            "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, f"False PASSIVE {ow.CLI_SPIN_COUNT}"),  # set before torch is loaded
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "False ACTIVE None"),
        ({"GOMP_SPINCOUNT": "0"}, "False PASSIVE 0"),
    ],
)
def test_the_cli_package_sets_its_waiting_before_torch_loads(extra, expected):
    assert _probe(extra) == expected


def test_the_help_says_how_to_wait_passively():
    from typer.testing import CliRunner

    from moegs_cli.app import app

    text = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output.split())
    assert "on a busy or shared machine run it with GOMP_SPINCOUNT=0" in text
