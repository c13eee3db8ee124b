"""Artifact ids, atomic commits, references, verification and compat checks."""

from __future__ import annotations

import json

import pytest

from moegs.artifacts import (ArtifactWriter, compute_id, list_artifacts, load_artifact, manifest_checksum,
                             require_same)
from moegs.errors import IncompatibleArtifactError, InputError
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
    import os
    import subprocess
    import sys

    from moegs.errors import MoegsError

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
