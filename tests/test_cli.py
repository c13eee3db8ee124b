"""The command line through Typer's runner: help, exit codes, skip-when-done, --force, refusals."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from moegs import __version__
from moegs_cli.app import app

runner = CliRunner()
COMMANDS = ["synth", "preprocess", "train-experts", "train-router", "prune", "distill", "render", "bench", "stitch", "demo", "ls", "info", "gc"]


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


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:") and "Traceback" not in output, output
    return lines[-1]


def test_workspace_that_is_a_file_is_one_line(tmp_path, tiny_raw):
    not_a_folder = tmp_path / "runs"
    not_a_folder.write_text("")
    for args in (["preprocess", str(tiny_raw)], ["ls"], ["gc"]):
        result = invoke("-w", str(not_a_folder), *args)
        assert result.exit_code == 2 and "the workspace is not a folder" in _one_error_line(result.output)
    below = invoke("-w", str(not_a_folder / "ws"), "preprocess", str(tiny_raw), "--frame-stop", "2")
    assert below.exit_code == 2 and "is a file, not a folder" in _one_error_line(below.output)


def test_os_errors_and_ctrl_c_become_one_line(tmp_path):
    import errno

    import typer

    from moegs_cli.common import handle_errors

    probe = typer.Typer()

    @probe.command("ro")
    @handle_errors
    def read_only(where: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system", where)

    @probe.command("full")
    @handle_errors
    def full(where: str) -> None:
        raise RuntimeError(f"Error while serializing: I/O error: No space left on device (os error 28) in {where}")

    @probe.command("stop")
    @handle_errors
    def stop(resume: bool = False) -> None:
        raise KeyboardInterrupt

    @probe.command("stop2")
    @handle_errors
    def stop_without_resume() -> None:
        raise KeyboardInterrupt

    result = runner.invoke(probe, ["ro", str(tmp_path / "ws" / "x.lock")])
    assert result.exit_code == 1 and _one_error_line(result.output).endswith("x.lock: the file system is read-only")
    result = runner.invoke(probe, ["full", "w.safetensors"])
    assert result.exit_code == 1 and "the disk is full" in _one_error_line(result.output)
    resumable = runner.invoke(probe, ["stop"])
    assert resumable.exit_code == 130 and "--resume" in resumable.output
    plain_stop = runner.invoke(probe, ["stop2"])
    assert plain_stop.exit_code == 130 and "--resume" not in plain_stop.output and "rerun" in plain_stop.output


def test_every_command_with_a_resume_hint_has_resume():
    import inspect

    for command in app.registered_commands:
        source = inspect.getsource(command.callback)
        if "--resume" in source.split('"""')[0]:
            assert "resume" in inspect.signature(command.callback).parameters, command.name


@pytest.fixture
def demo_copy(tmp_path, tiny_demo, demo_workspace):
    """A private copy of the tiny demo workspace (inputs are recorded relative, so it stays consistent)."""
    import shutil

    copy = tmp_path / "ws"
    shutil.copytree(demo_workspace, copy)
    return copy


def _only(workspace, pattern, stage=None):
    found = [p for p in sorted(workspace.glob(pattern))
             if stage is None or json.loads((p.parent / "manifest.json").read_text())["created_by"]["stage"] == stage]
    assert len(found) == 1, found
    return found[0]


def test_tampered_expert_is_exit_3_and_force_keeps_the_good_moe(demo_copy):
    from moegs_cli.demo import preset_config

    moe = _only(demo_copy, "*/moe/*/router.safetensors", stage="train-router").parent
    expert = json.loads((moe / "manifest.json").read_text())["inputs"]
    expert_dir = (moe / next(e["path"] for e in expert if e["kind"] == "expert")).resolve()
    experts = [str((moe / e["path"]).resolve()) for e in expert if e["kind"] == "expert"]
    router_args = ["-w", str(demo_copy), "train-router", "-c", str(preset_config("tiny")),
                   *sum((["-e", e] for e in experts), [])]
    same = invoke(*router_args)
    assert same.exit_code == 0 and "up to date" in same.output and same.stdout.strip() == str(moe)  # the same id
    weights = expert_dir / "expert.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    before = (moe / "manifest.json").read_bytes()
    rendered = invoke("-w", str(demo_copy), "render", "-m", str(expert_dir), "--frame-stop", "1")
    assert rendered.exit_code == 3 and "expert.safetensors" in _one_error_line(rendered.output)
    forced = invoke(*router_args, "--force")
    assert forced.exit_code == 3 and "expert.safetensors" in _one_error_line(forced.output)
    assert (moe / "manifest.json").read_bytes() == before and (moe / "router.safetensors").is_file()


def test_missing_payload_and_edited_kind_are_exit_3(demo_copy):
    moe = _only(demo_copy, "*/moe/*/router.safetensors", stage="train-router").parent
    (moe / "router.safetensors").unlink()
    missing = invoke("-w", str(demo_copy), "render", "-m", str(moe), "--frame-stop", "1")
    assert missing.exit_code == 3 and "router.safetensors: missing" in _one_error_line(missing.output)
    expert_manifest = sorted(demo_copy.glob("*/expert/*/manifest.json"))[0]
    manifest = json.loads(expert_manifest.read_text())
    manifest["kind"] = "moe"
    expert_manifest.write_text(json.dumps(manifest))
    edited = invoke("-w", str(demo_copy), "render", "-m", str(expert_manifest.parent), "--frame-stop", "1")
    assert edited.exit_code == 3 and "damaged manifest" in _one_error_line(edited.output)


def test_corrupt_manifest_is_shown_as_damaged(demo_copy):
    dataset = _only(demo_copy, "*/dataset/*/manifest.json")
    dataset.write_text("{ not json")
    listing = invoke("-w", str(demo_copy), "ls")
    assert listing.exit_code == 0 and "DAMAGED" in listing.output and dataset.parent.name in listing.output
    scene = dataset.parent.parent.parent.name
    info = invoke("-w", str(demo_copy), "info", f"{scene}/dataset/latest")
    assert info.exit_code == 3 and "damaged manifest" in _one_error_line(info.output)
    assert "no finished" not in info.output


def test_gc_removes_dead_leftovers_keeps_resumable_and_lists_damage(tmp_path):
    import subprocess
    import sys

    from stages.common import run_stage

    from moegs.artifacts import ArtifactWriter

    def writer(n):
        return ArtifactWriter(tmp_path, "s", "expert", stage="test", config={"n": n})

    good = run_stage(writer(1), lambda d, w: (d / "w.bin").write_bytes(b"1")).artifact
    damaged = run_stage(writer(2), lambda d, w: (d / "w.bin").write_bytes(b"2")).artifact
    (damaged.path / "w.bin").write_bytes(b"3")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale, resumable = writer(3), writer(4)
    for w in (stale, resumable):
        w.partial_dir.mkdir(parents=True)
        w.lock_path.write_text(json.dumps({"pid": dead}))
    (stale.partial_dir / "half.bin").write_bytes(b"0" * 10)
    (resumable.partial_dir / "checkpoints").mkdir()
    (resumable.partial_dir / "checkpoints" / "last.pt").write_bytes(b"ck")
    trash = good.path.with_name(f".{good.short_id}.replaced-{dead}")
    trash.mkdir()
    dry = invoke("-w", str(tmp_path), "gc", "--dry-run")
    assert dry.exit_code == 0 and "would remove" in dry.output and stale.partial_dir.exists() and trash.exists()
    done = invoke("-w", str(tmp_path), "gc")
    out = plain(done.output)
    assert done.exit_code == 0
    assert not stale.partial_dir.exists() and not stale.lock_path.exists() and not trash.exists()
    assert not resumable.lock_path.exists() and resumable.partial_dir.is_dir() and "resumable checkpoints" in out
    assert f"damaged {damaged.path}" in out and good.path.is_dir() and damaged.path.is_dir()
    everything = invoke("-w", str(tmp_path), "gc", "--include-resumable")
    assert everything.exit_code == 0 and not resumable.partial_dir.exists()


def test_ctrl_c_swallowed_by_a_library_is_still_an_interrupt(tmp_path):
    import os
    import signal

    import typer

    from moegs.artifacts import ArtifactWriter, building
    from moegs.errors import InputError
    from moegs_cli.common import handle_errors

    probe = typer.Typer()

    def swallowing_library_call() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands inside the call ...
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            pass  # ... which stops early and returns, as pycolmap's interruptible calls do

    @probe.command("build")
    @handle_errors
    def build() -> None:
        writer = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={})
        with building(writer) as directory:
            swallowing_library_call()
            (directory / "points.txt").write_text("cut short")
        writer.commit()

    @probe.command("decode")
    @handle_errors
    def decode() -> None:
        swallowing_library_call()
        raise InputError("cam00.mp4: video is corrupt (ffmpeg was killed by the same Ctrl-C)")

    built = runner.invoke(probe, ["build"])
    assert built.exit_code == 130 and "interrupted" in built.output
    assert not list(tmp_path.rglob("manifest.json"))
    decoded = runner.invoke(probe, ["decode"])
    assert decoded.exit_code == 130 and "corrupt" not in decoded.output
    from moegs import interrupts

    assert not interrupts.received()  # the record ends with the command: later library calls commit normally
    writer = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"after": True})
    with building(writer) as directory:
        (directory / "points.txt").write_text("fine")
    assert writer.commit().path.is_dir()


def test_render_under_a_file_size_limit_fails_in_one_line_and_leaves_no_partial(demo_copy):
    import resource
    import subprocess
    import sys
    from pathlib import Path

    expert = sorted(demo_copy.glob("*/expert/*/expert.safetensors"))[0].parent
    root = Path(__file__).resolve().parent.parent

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, resource.RLIM_INFINITY))

    done = subprocess.run(
        [sys.executable, "-c", "from moegs_cli.app import main; main()", "-w", str(demo_copy), "render", "-m",
         str(expert), "--frame-stop", "2"],
        cwd=root, preexec_fn=limit,
        env={**__import__("os").environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1",
             "NUMBA_CACHE_DIR": str(demo_copy / ".numba")},  # under the limit, caches would be written truncated
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 1, done.stderr
    last = _one_error_line(done.stderr)
    assert "the file-size limit is reached" in last and "removed" in last
    assert not list(demo_copy.glob("*/render/*.partial")) and not list(demo_copy.glob("*/render/*.lock"))
