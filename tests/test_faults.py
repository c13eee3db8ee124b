"""Kill builds with SIGKILL at random moments, many times, and check the workspace invariant after each kill.

The invariant: every entry of a kind folder that is not scratch space (``.partial``, ``.lock``,
hidden names) is an artifact whose manifest is sound and whose files match their recorded
hashes; then a rerun completes. The builder commits the same artifact over and over with
``force`` so the kills land in the payload writes, the hashing, the manifest write and the
renames of a ``--force`` commit alike; a second part kills the real ``preprocess`` command.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from safetensors.numpy import save_file

from moegs.artifacts import (COMPLETE, LOCK, PARTIAL, SCRATCH, ArtifactWriter, list_artifacts, load_artifact,
                             scan_workspace, sha256_file)
from moegs.data.dataset import Dataset
from moegs.data.preprocess_config import PreprocessConfig
from moegs.errors import DamagedArtifactError
from stages import preprocess
from stages.common import run_stage

ROOT = Path(__file__).resolve().parent.parent



def _build(directory: Path, writer) -> None:
    rng = np.random.default_rng()
    save_file({"w": rng.standard_normal(200_000).astype(np.float32)}, str(directory / "w.safetensors"))
    iio.imwrite(directory / "view.png", rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    (directory / "sub").mkdir(exist_ok=True)
    (directory / "sub" / "meta.json").write_text(json.dumps({"values": rng.random(2000).tolist()}))
    writer.metrics["value"] = 1.0


def _commit_forever(workspace: Path, rounds: int) -> None:
    for _ in range(rounds):
        writer = ArtifactWriter(workspace, "s", "expert", stage="fault-test", config={"fixed": True})
        run_stage(writer, _build, force=True)


def _forked(workspace: Path, rounds: int) -> int:
    """A child process (forked: no start-up cost) that commits the same artifact ``rounds`` times."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _commit_forever(workspace, rounds)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def assert_invariant(workspace: Path) -> None:
    """Nothing outside scratch space is anything but a sound, hash-matching artifact."""
    for entry in scan_workspace(workspace):
        assert entry.state in (COMPLETE, PARTIAL, LOCK, SCRATCH), (entry.path, entry.state, entry.reason)
        if entry.state == COMPLETE:
            entry.artifact.verify(full=True)
    for kind_dir in workspace.glob("*/*"):
        for child in kind_dir.iterdir():
            if not (child.name.startswith(".") or child.name.endswith((".partial", ".lock"))):
                assert (child / "manifest.json").is_file(), child


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_random_points_of_a_forced_commit_loop(tmp_path):
    rng = random.Random(16)
    workspace = tmp_path / "ws"
    _commit_forever(workspace, 1)
    for _ in range(40):
        pid = _forked(workspace, 1000)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert_invariant(workspace)
    pid = _forked(workspace, 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert_invariant(workspace)
    (artifact,) = list_artifacts(workspace)
    artifact.verify()
    assert not [p for p in (workspace / "s" / "expert").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_sigkill_of_preprocess_then_rerun_completes(tmp_path, tiny_raw):
    rng = random.Random(7)
    workspace = tmp_path / "ws"
    command = [sys.executable, "-c", "from moegs_cli.app import main; main()", "-w", str(workspace),
               "preprocess", str(tiny_raw), "--frame-stop", "4", "--force"]
    for _ in range(3):
        child = _spawn(command)
        started = time.monotonic()
        while not list(workspace.glob("*/dataset/*.partial")) and time.monotonic() - started < 120:
            time.sleep(0.05)  # kill inside the build, not during start-up
        time.sleep(rng.uniform(0.0, 1.5))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        assert_invariant(workspace)
    rerun = _spawn(command[:-1])
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert_invariant(workspace)
    assert [a.kind for a in list_artifacts(workspace)] == ["dataset"]


def test_frame_stores_are_checked_lazily_but_tampering_is_still_caught(tmp_path, tiny_raw):
    """Loading a dataset hashes its small files and the stores' digests, not the stores: a modified frame
    is found when it is first read (and by a full verify), a truncated store or edited digests at load."""
    result = preprocess.run(PreprocessConfig(frame_stop=3, init="random"), tiny_raw, tmp_path, "s", progress=False)
    artifact = load_artifact(result.artifact.path)
    entries = artifact.manifest["files"]
    stores = sorted(rel for rel in entries if rel.startswith("frames/") and rel.endswith(".npy"))
    assert stores and all(entries[rel]["verify"] == "on_read" for rel in stores)
    assert all(entries[rel]["sha256"] == sha256_file(artifact.path / rel) for rel in stores)  # hashed while written
    assert all("verify" not in info for rel, info in entries.items() if rel not in stores)
    cam = Path(stores[0]).stem
    store = artifact.path / stores[0]
    raw = bytearray(store.read_bytes())
    raw[-1] ^= 1  # last frame only
    store.write_bytes(bytes(raw))
    dataset = Dataset.load(load_artifact(artifact.path).path)  # the lazy load does not hash the store
    dataset.frame(cam, 0)
    with pytest.raises(DamagedArtifactError, match=rf"{cam}.npy: frame 2 does not match its sha256"):
        dataset.frame(cam, 2)
    with pytest.raises(DamagedArtifactError, match=rf"{cam}.npy: content does not match the sha256"):
        load_artifact(artifact.path, verify=False).verify(full=True)
    store.write_bytes(bytes(raw[:-1]))
    with pytest.raises(DamagedArtifactError, match=rf"{cam}.npy: \d+ bytes, but the manifest records"):
        load_artifact(artifact.path)
    raw[-1] ^= 1
    store.write_bytes(bytes(raw))
    digests = store.with_suffix(".sha256")
    digests.write_text(digests.read_text().replace("a", "b", 1))
    with pytest.raises(DamagedArtifactError, match=rf"{cam}.sha256: content does not match"):
        load_artifact(artifact.path)
