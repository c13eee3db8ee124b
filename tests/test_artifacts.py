"""Artifact ids, atomic commits, references, verification and compat checks."""

from __future__ import annotations

import json
import os

import pytest

from moegs.artifacts import (ArtifactWriter, building, compute_id, list_artifacts, load_artifact, manifest_checksum,
                             require_same)
from moegs.errors import DamagedArtifactError, IncompatibleArtifactError, InputError, MoegsError, StorageError
from stages.common import run_stage


def _write(tmp_path, config, scene="s", kind="dataset", inputs=(), payload="x"):
    writer = ArtifactWriter(tmp_path, scene, kind, stage="test", config=config, inputs=inputs)

    def build(directory, w):
        (directory / "data.txt").write_text(payload)
        w.metrics["value"] = 1.5
        w.compat["dataset_id"] = config.get("ds", "d0")

    return run_stage(writer, build)


def test_id_depends_on_config_and_inputs_not_order():
    assert compute_id("expert", {"a": 1, "b": 2}, ["x", "y"]) == compute_id("expert", {"b": 2, "a": 1}, ["y", "x"])
    assert compute_id("expert", {"a": 1}, ["x"]) != compute_id("expert", {"a": 2}, ["x"])
    assert compute_id("expert", {"a": 1}, ["x"]) != compute_id("moe", {"a": 1}, ["x"])


def test_commit_writes_manifest_and_skips_when_done(tmp_path):
    first = _write(tmp_path, {"a": 1})
    assert not first.up_to_date
    manifest = json.loads((first.artifact.path / "manifest.json").read_text())
    for key in ("kind", "schema_version", "id", "created_by", "created_at", "inputs", "config", "files", "compat", "metrics"):
        assert key in manifest
    assert manifest["files"]["data.txt"]["size"] == 1
    assert first.artifact.path.name == first.artifact.id[:12]
    assert not list(tmp_path.rglob("*.partial"))
    again = _write(tmp_path, {"a": 1})
    assert again.up_to_date and again.artifact.id == first.artifact.id


def test_failed_build_leaves_only_partial(tmp_path):
    writer = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 3})

    def build(directory, w):
        (directory / "half.bin").write_bytes(b"123")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(writer, build)
    assert writer.partial_dir.is_dir() and not writer.final_dir.exists()
    assert list_artifacts(tmp_path) == []
    with pytest.raises(InputError, match="not an artifact"):
        load_artifact(writer.partial_dir)


def test_bad_input_removes_partial(tmp_path):
    writer = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 4})

    def build(directory, w):
        raise InputError("bad file")

    with pytest.raises(InputError):
        run_stage(writer, build)
    assert not writer.partial_dir.exists()


def test_references_latest_and_prefix(tmp_path):
    a = _write(tmp_path, {"a": 1}).artifact
    b = _write(tmp_path, {"a": 2}).artifact
    assert load_artifact("s/dataset/latest", tmp_path).id == b.id
    assert load_artifact(f"s/dataset/{a.id[:6]}", tmp_path).id == a.id
    assert load_artifact(a.path / "manifest.json").id == a.id
    with pytest.raises(InputError, match="no finished dataset"):
        load_artifact("s/dataset/ffffffffff", tmp_path)
    with pytest.raises(IncompatibleArtifactError, match="expected a expert artifact"):
        load_artifact(a.path, expected_kind="expert")


def test_verify_detects_tampering(tmp_path):
    artifact = _write(tmp_path, {"a": 1}).artifact
    load_artifact(artifact.path, verify=True)
    (artifact.path / "data.txt").write_text("y")
    with pytest.raises(IncompatibleArtifactError, match="data.txt"):
        load_artifact(artifact.path, verify=True)


def test_major_version_mismatch_refused(tmp_path):
    artifact = _write(tmp_path, {"a": 1}).artifact
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    manifest["schema_version"] = "9.0"
    manifest["manifest_sha256"] = manifest_checksum(manifest)  # as a newer moegs would write it
    (artifact.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleArtifactError, match="major version 9"):
        load_artifact(artifact.path)


def test_require_same_names_both_values(tmp_path):
    a = _write(tmp_path, {"ds": "d1"}).artifact
    b = _write(tmp_path, {"ds": "d2"}).artifact
    with pytest.raises(IncompatibleArtifactError, match="'d1'.*'d2'"):
        require_same([a, b], "dataset_id", "experts")


def test_inputs_recorded_relative_and_resolvable(tmp_path):
    ds = _write(tmp_path, {"a": 1}).artifact
    expert = _write(tmp_path, {"a": 1}, kind="expert", inputs=[("dataset", ds)]).artifact
    (entry,) = expert.input_refs("dataset")
    assert not entry["path"].startswith("/")
    assert expert.resolve_input(entry).id == ds.id


def test_second_builder_of_the_same_id_is_refused(tmp_path):
    import subprocess
    import sys

    first = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 5})
    first.begin()
    first.lock_path.write_text(str(os.getppid()))  # a live process that is not us holds the lock
    second = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 5})
    with pytest.raises(MoegsError, match="another moegs process"):
        second.begin()
    assert first.partial_dir.is_dir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    first.lock_path.write_text(dead.stdout.strip())  # its owner has exited: the lock is stale
    second.begin()
    assert json.loads(second.lock_path.read_text())["pid"] == os.getpid()


def _reseal(path, edit):
    """Edit a manifest the way a careless hand would (no checksum update)."""
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_file_access_checks_the_recorded_hash(tmp_path):
    artifact = load_artifact(_write(tmp_path, {"a": 1}).artifact.path, verify=False)
    (artifact.path / "data.txt").write_text("y")  # same size, other bytes
    with pytest.raises(DamagedArtifactError, match=r"data.txt: content does not match the sha256") as err:
        artifact.file("data.txt")
    assert err.value.exit_code == 3
    (artifact.path / "data.txt").unlink()
    with pytest.raises(DamagedArtifactError, match=r"data.txt: missing, but listed in the manifest"):
        load_artifact(artifact.path)
    assert artifact.file("absent.bin") == artifact.path / "absent.bin"  # not listed, not there: caller's business
    (artifact.path / "extra.bin").write_bytes(b"1")
    with pytest.raises(DamagedArtifactError, match="extra.bin: not recorded in the manifest"):
        artifact.file("extra.bin")


def test_edited_or_corrupt_manifest_is_damaged_and_listed_as_such(tmp_path):
    from moegs.artifacts import DAMAGED, scan_workspace

    artifact = _write(tmp_path, {"a": 1}).artifact
    _reseal(artifact.path, lambda m: m.update(kind="expert"))
    with pytest.raises(DamagedArtifactError, match="edited after the commit"):
        load_artifact(artifact.path)
    _reseal(artifact.path, lambda m: m.pop("manifest_sha256"))  # an older manifest without checksum, kind edited
    with pytest.raises(DamagedArtifactError, match="says kind 'expert' but lies under dataset/"):
        load_artifact(artifact.path)
    (artifact.path / "manifest.json").write_bytes(b'{"kind": "dataset", "id": ')
    with pytest.raises(DamagedArtifactError, match="damaged manifest"):
        load_artifact("s/dataset/latest", tmp_path)
    with pytest.raises(DamagedArtifactError, match=f"{artifact.short_id}: damaged dataset artifact"):
        load_artifact(f"s/dataset/{artifact.short_id[:5]}", tmp_path)
    assert list_artifacts(tmp_path) == []
    (entry,) = scan_workspace(tmp_path)
    assert entry.state == DAMAGED and "not valid JSON" in entry.reason


def test_crash_inside_a_forced_commit_leaves_nothing_that_counts_as_finished(tmp_path, monkeypatch):
    import moegs.artifacts as artifacts

    good = _write(tmp_path, {"a": 1}).artifact
    writer = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 1})
    with building(writer) as directory:
        (directory / "data.txt").write_text("z")
    real_replace, calls = os.replace, []

    def crash_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # manifest tmp -> manifest, old -> hidden name, then the kill
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        writer.commit()
    monkeypatch.setattr(artifacts.os, "replace", real_replace)
    hidden = [p.name for p in (tmp_path / "s" / "dataset").iterdir() if p.name.startswith(".")]
    assert hidden == [f".{good.short_id}.replaced-{os.getpid()}"]
    assert list_artifacts(tmp_path) == []  # neither the hidden old copy nor the .partial counts
    with pytest.raises(InputError, match="unfinished or replaced build"):
        load_artifact(tmp_path / "s" / "dataset" / hidden[0])
    again = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 1})
    assert again.exists  # the written manifest and matching files: the commit is finished, not redone
    assert (again.final_dir / "data.txt").read_text() == "z"
    assert [a.id for a in list_artifacts(tmp_path)] == [good.id]


def test_legacy_old_copy_is_neither_listed_nor_ambiguous(tmp_path):
    import shutil

    artifact = _write(tmp_path, {"a": 1}).artifact
    shutil.copytree(artifact.path, artifact.path.with_name(artifact.short_id + ".old"))
    assert len(list_artifacts(tmp_path)) == 1
    assert load_artifact(f"s/dataset/{artifact.short_id[:4]}", tmp_path).path == artifact.path


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    from moegs import build_lock

    writer = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 6})
    parent = os.getppid()
    owner = {"pid": parent, "start": build_lock.process_start_time(parent), "boot": build_lock.boot_id()}
    writer.lock_path.parent.mkdir(parents=True)
    writer.lock_path.write_text(json.dumps(owner))  # the parent really holds it
    with pytest.raises(MoegsError, match=f"another moegs process \\(pid {parent}\\)"):
        writer.begin()
    writer.lock_path.write_text(json.dumps({**owner, "start": owner["start"] - 1}))  # same pid, another process
    writer.begin()
    writer.lock_path.write_text(json.dumps({**owner, "boot": "another-boot"}))  # written before a reboot
    assert build_lock.lock_is_stale(writer.lock_path)


@pytest.mark.parametrize("with_checkpoints", [False, True])
def test_disk_full_during_a_build_is_one_line_and_frees_the_partial(tmp_path, with_checkpoints):
    import errno

    writer = ArtifactWriter(tmp_path, "s", "dataset", stage="test", config={"a": 7})

    def build(directory, w):
        if with_checkpoints:
            (directory / "checkpoints").mkdir()
            (directory / "checkpoints" / "last.pt").write_bytes(b"resumable")
        (directory / "big.bin").write_bytes(b"0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "big.bin"))

    with pytest.raises(StorageError) as err:
        run_stage(writer, build)
    message = str(err.value)
    assert message.startswith(str(writer.partial_dir / "big.bin")) and "the disk is full" in message
    assert not writer.lock_path.exists()
    if with_checkpoints:
        assert writer.partial_dir.is_dir() and "resumable checkpoints" in message and "--resume" in message
    else:
        assert not writer.partial_dir.exists() and "removed the unfinished" in message


def test_file_size_limit_in_a_real_process_is_one_line_and_frees_the_partial(tmp_path):
    import subprocess
    import sys

    script = f"""
import resource, sys
from moegs.artifacts import ArtifactWriter
from moegs.errors import MoegsError
from stages.common import run_stage
from safetensors.torch import save_file
import torch
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
writer = ArtifactWriter({str(tmp_path)!r}, "s", "expert", stage="test", config={{}})
try:
    run_stage(writer, lambda d, w: save_file({{"x": torch.zeros(100_000)}}, str(d / "expert.safetensors")))
except MoegsError as exc:
    print(type(exc).__name__, exc)
    sys.exit(exc.exit_code)
"""
    done = subprocess.run([sys.executable, "-B", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(__file__)),
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")})
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("StorageError") and "the file-size limit is reached" in done.stdout
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("*.lock"))


@pytest.mark.parametrize("name", ["weights.safetensors", "view.png", "meta.json"])
def test_commit_refuses_a_truncated_payload(tmp_path, name):
    import imageio.v3 as iio
    import numpy as np
    import torch
    from safetensors.torch import save_file

    writer = ArtifactWriter(tmp_path, "s", "expert", stage="test", config={"n": name})

    def build(directory, w):
        path = directory / name
        if name.endswith(".safetensors"):
            save_file({"x": torch.arange(1000.0)}, str(path))
        elif name.endswith(".png"):
            iio.imwrite(path, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        else:
            path.write_text(json.dumps({"a": list(range(100))}))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # what a cut-short writer leaves

    with pytest.raises(MoegsError, match=f"{name}: the written file is not readable"):
        run_stage(writer, build)
    assert not writer.final_dir.exists() and not writer.partial_dir.exists()


def test_recorded_input_replaced_by_another_artifact_is_refused(tmp_path):
    import shutil

    ds = _write(tmp_path, {"a": 1}).artifact
    other = _write(tmp_path, {"a": 2}).artifact
    expert = _write(tmp_path, {"a": 1}, kind="expert", inputs=[("dataset", ds)]).artifact
    shutil.rmtree(ds.path)
    shutil.copytree(other.path, ds.path)
    with pytest.raises(DamagedArtifactError):
        expert.resolve_input(expert.input_refs("dataset")[0])
