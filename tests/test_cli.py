"""The command line through Typer's runner: help, exit codes, skip-when-done, --force, refusals."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from moegs import __version__
from moegs_cli.app import app

runner = CliRunner()
COMMANDS = ["synth", "preprocess", "train-experts", "train-router", "prune", "distill", "render", "bench", "demo", "ls", "info", "gc"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def plain(text: str) -> str:
    """Help text without ANSI codes and box drawing, whitespace collapsed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    import typer

    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    summary = " ".join(typer.main.get_command(app).commands[command].help.split("\n\n")[0].split())
    assert "Usage" in result.output and summary in plain(result.output)


def test_root_help_lists_every_stage():
    text = plain(invoke("--help").output)
    for command in COMMANDS:
        assert command in text


def test_unknown_format_is_exit_2(tmp_path):
    result = invoke("-w", str(tmp_path / "ws"), "preprocess", str(tmp_path), "--format", "nerf")
    assert result.exit_code == 2
    assert "nerf" in result.output


def test_missing_source_is_exit_2(tmp_path):
    result = invoke("-w", str(tmp_path / "ws"), "preprocess", str(tmp_path / "nope"), "--format", "n3v")
    assert result.exit_code == 2 and "not found" in result.output


def test_unknown_config_key_is_named(tmp_path, tiny_raw):
    result = invoke("-w", str(tmp_path / "ws"), "preprocess", str(tiny_raw), "--set", "downscal=2")
    assert result.exit_code == 2 and "downscal" in result.output


def test_missing_poses_is_exit_2_and_leaves_nothing(tmp_path, tiny_raw):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_raw, broken)
    (broken / "poses_bounds.npy").unlink()
    workspace = tmp_path / "ws"
    result = invoke("-w", str(workspace), "preprocess", str(broken), "--format", "n3v")
    assert result.exit_code == 2 and "poses_bounds.npy" in result.output
    assert not list(workspace.rglob("manifest.json")) and not list(workspace.rglob("*.partial"))


def test_unavailable_backend_is_exit_4(tmp_path, tiny_demo):
    dataset = tiny_demo.steps["dataset"].artifact
    result = invoke("-w", str(tmp_path), "train-experts", "--dataset", str(dataset.path), "--experts", "static",
                    "--backend", "gsplat")
    assert result.exit_code == 4 and "gsplat" in result.output


def test_info_unknown_reference_is_exit_2(tmp_path):
    result = invoke("-w", str(tmp_path), "info", "scene/expert/abc")
    assert result.exit_code == 2


def test_preprocess_skips_when_done_and_force_rebuilds(tmp_path, tiny_raw):
    workspace = tmp_path / "ws"
    args = ["-w", str(workspace), "preprocess", str(tiny_raw), "--format", "n3v", "--frame-stop", "4"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    path = first.stdout.strip().splitlines()[-1]
    created = json.loads((workspace.glob("*/dataset/*/manifest.json").__next__()).read_text())["created_at"]
    second = invoke(*args)
    assert second.exit_code == 0 and "up to date" in second.output
    assert second.stdout.strip().splitlines()[-1] == path
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0 and "wrote" in forced.output
    assert json.loads((workspace.glob("*/dataset/*/manifest.json").__next__()).read_text())["created_at"] != created
    listing = invoke("-w", str(workspace), "ls")
    assert listing.exit_code == 0 and "dataset" in listing.output
    info = invoke("-w", str(workspace), "info", "synth_tiny/dataset/latest", "--verify")
    assert info.exit_code == 0 and json.loads(info.stdout)["kind"] == "dataset"


def test_mixing_experts_of_different_datasets_is_exit_3(tmp_path, tiny_raw, tiny_demo):
    workspace = tmp_path / "ws"
    other = invoke("-w", str(workspace), "preprocess", str(tiny_raw), "--frame-stop", "6", "--scene", "other")
    assert other.exit_code == 0, other.output
    trained = invoke("-w", str(workspace), "train-experts", "--dataset", "other/dataset/latest", "--experts", "static",
                     "--set", "static.iterations=5")
    assert trained.exit_code == 0, trained.output
    expert_a = str(tiny_demo.steps["expert polynomial"].artifact.path)
    result = invoke("-w", str(workspace), "train-router", "-e", expert_a, "-e", "other/expert/latest")
    assert result.exit_code == 3
    ids = [tiny_demo.steps["dataset"].artifact.id, json.loads(invoke("-w", str(workspace), "info", "other/dataset/latest").stdout)["id"]]
    assert all(i[:12] in result.output.replace("\n", "") for i in ids)
