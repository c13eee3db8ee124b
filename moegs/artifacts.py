"""Versioned, content-addressed artifacts: one directory per stage output with ``manifest.json`` written last.

Layout: ``<workspace>/<scene>/<kind>/<id12>/``. The id hashes the kind, its schema major version,
the resolved config and the ids of the inputs, so the same work always lands in the same place
and a re-run finds it done. A stage writes into ``<id12>.partial/`` and renames it only after the
manifest (the commit marker) is written: a killed stage never leaves something that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moegs import __version__
from moegs.errors import IncompatibleArtifactError, InputError, MoegsError

KINDS = ("dataset", "expert", "moe", "render", "bench")
SCHEMA_VERSIONS = {"dataset": "1.0", "expert": "1.0", "moe": "1.0", "render": "1.0", "bench": "1.0"}
MANIFEST = "manifest.json"
ID_LENGTH = 12


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and fixed separators, so equal configs hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def compute_id(kind: str, config: dict, input_ids: Sequence[str], extra: dict | None = None) -> str:
    """Content id of an artifact: sha256 over kind, schema major, config, sorted input ids and ``extra``."""
    major = SCHEMA_VERSIONS[kind].split(".")[0]
    payload = {"kind": kind, "major": major, "config": config, "inputs": sorted(input_ids), "extra": extra or {}}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_tree(root: Path) -> str:
    """Hash of a source folder from (relative path, size, content) of every file, so renames count too."""
    root = Path(root)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        entries.append((path.relative_to(root).as_posix(), path.stat().st_size, sha256_file(path)))
    return hashlib.sha256(canonical_json(entries).encode()).hexdigest()


@dataclass
class Artifact:
    """A finished artifact on disk and its manifest."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def short_id(self) -> str:
        return self.id[:ID_LENGTH]

    @property
    def scene(self) -> str:
        return self.manifest.get("scene", "")

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    @property
    def compat(self) -> dict:
        return self.manifest.get("compat", {})

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    def file(self, relpath: str) -> Path:
        return self.path / relpath

    def input_refs(self, kind: str | None = None) -> list[dict]:
        return [i for i in self.manifest.get("inputs", []) if kind is None or i["kind"] == kind]

    def resolve_input(self, entry: dict) -> "Artifact":
        """Load an input artifact named in this manifest (path relative to this artifact's directory)."""
        return load_artifact(self.path / entry["path"], expected_kind=entry["kind"])

    def verify(self) -> None:
        """Check every payload file against its recorded size and sha256."""
        for rel, info in self.manifest.get("files", {}).items():
            path = self.path / rel
            if not path.is_file():
                raise IncompatibleArtifactError(f"{self.path}: file {rel} listed in the manifest is missing")
            if path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
                raise IncompatibleArtifactError(f"{self.path}: file {rel} does not match its recorded sha256")


def _read_manifest(directory: Path) -> dict:
    manifest_path = directory / MANIFEST
    try:
        return json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{directory}: not an artifact (no {MANIFEST}; an unfinished stage leaves only .partial)") from None
    except json.JSONDecodeError as exc:
        raise IncompatibleArtifactError(f"{manifest_path}: invalid JSON ({exc.msg})") from None


def check_kind(manifest: dict, where: Path, expected_kind: str | None) -> None:
    kind = manifest.get("kind")
    if kind not in KINDS:
        raise IncompatibleArtifactError(f"{where}: unknown artifact kind {kind!r}")
    if expected_kind is not None and kind != expected_kind:
        raise IncompatibleArtifactError(f"{where}: expected a {expected_kind} artifact, found {kind}")
    found = str(manifest.get("schema_version", "0.0")).split(".")[0]
    supported = SCHEMA_VERSIONS[kind].split(".")[0]
    if found != supported:
        raise IncompatibleArtifactError(
            f"{where}: {kind} schema major version {found} is not supported by this moegs (supports {supported})"
        )


def load_artifact(
    ref: str | Path, workspace: Path | None = None, expected_kind: str | None = None, verify: bool = False
) -> Artifact:
    """Load an artifact from a path, ``scene/kind/latest`` or ``scene/kind/<id prefix>`` (relative to ``workspace``)."""
    directory = _resolve_ref(ref, workspace)
    manifest = _read_manifest(directory)
    check_kind(manifest, directory, expected_kind)
    artifact = Artifact(path=directory.resolve(), manifest=manifest)
    if verify:
        artifact.verify()
    return artifact


def _resolve_ref(ref: str | Path, workspace: Path | None) -> Path:
    path = Path(ref)
    if path.name == MANIFEST:
        path = path.parent
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    parts = Path(ref).parts
    if workspace is not None and len(parts) == 3 and parts[1] in KINDS:
        scene, kind, selector = parts
        kind_dir = Path(workspace) / scene / kind
        candidates = [a for a in _complete_in(kind_dir)]
        if selector == "latest":
            if not candidates:
                raise InputError(f"{kind_dir}: no finished {kind} artifact for scene {scene!r}")
            return max(candidates, key=lambda a: a.manifest.get("created_at", "")).path
        matches = [a for a in candidates if a.id.startswith(selector)]
        if len(matches) == 1:
            return matches[0].path
        if len(matches) > 1:
            raise InputError(f"{ref}: id prefix {selector!r} is ambiguous ({len(matches)} {kind} artifacts match)")
        raise InputError(f"{ref}: no finished {kind} artifact of scene {scene!r} has an id starting with {selector!r}")
    if path.exists():
        raise InputError(f"{path}: not an artifact (no {MANIFEST}; an unfinished stage leaves only .partial)")
    raise InputError(f"{ref}: no such artifact (give a path, scene/kind/latest or scene/kind/<id prefix>)")


def _complete_in(kind_dir: Path) -> Iterator[Artifact]:
    if not kind_dir.is_dir():
        return
    for child in sorted(kind_dir.iterdir()):
        if child.is_dir() and not child.name.endswith(".partial") and (child / MANIFEST).is_file():
            try:
                manifest = json.loads((child / MANIFEST).read_text())
            except json.JSONDecodeError:
                continue
            yield Artifact(path=child, manifest=manifest)


def list_artifacts(workspace: Path) -> list[Artifact]:
    """Every finished artifact of a workspace, oldest first."""
    workspace = Path(workspace)
    found = []
    if workspace.is_dir():
        for scene_dir in sorted(p for p in workspace.iterdir() if p.is_dir()):
            for kind in KINDS:
                found.extend(_complete_in(scene_dir / kind))
    return sorted(found, key=lambda a: a.manifest.get("created_at", ""))


def require_same(artifacts: Sequence[Artifact], key: str, what: str = "") -> Any:
    """All artifacts must agree on ``compat[key]``; raise naming both values and both paths otherwise."""
    first = artifacts[0]
    for other in artifacts[1:]:
        if other.compat.get(key) != first.compat.get(key):
            raise IncompatibleArtifactError(
                f"{what or 'inputs'} disagree on {key}: {first.compat.get(key)!r} ({first.path}) "
                f"vs {other.compat.get(key)!r} ({other.path})"
            )
    return first.compat.get(key)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class ArtifactWriter:
    """Builds one artifact in ``<id12>.partial/``; :meth:`commit` writes the manifest and renames it into place."""

    def __init__(
        self,
        workspace: Path,
        scene: str,
        kind: str,
        stage: str,
        config: dict,
        inputs: Sequence[tuple[str, Artifact]] = (),
        id_extra: dict | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind}")
        self.workspace = Path(workspace)
        self.scene = scene
        self.kind = kind
        self.stage = stage
        self.config = config
        self.inputs = list(inputs)
        self.id = compute_id(kind, config, [a.id for _, a in self.inputs], id_extra)
        self.final_dir = self.workspace / scene / kind / self.id[:ID_LENGTH]
        self.partial_dir = self.final_dir.with_name(self.final_dir.name + ".partial")
        self.compat: dict = {}
        self.metrics: dict = {}
        self.extra: dict = {}

    @property
    def exists(self) -> bool:
        """A finished artifact with this id is already on disk."""
        return (self.final_dir / MANIFEST).is_file()

    def existing(self) -> Artifact:
        return load_artifact(self.final_dir, expected_kind=self.kind)

    @property
    def lock_path(self) -> Path:
        return self.final_dir.with_name(self.final_dir.name + ".lock")

    def begin(self, resume: bool = False) -> Path:
        """Take the build lock, then create (or, with ``resume``, reuse) the partial directory."""
        self._lock()
        if self.partial_dir.exists() and not resume:
            shutil.rmtree(self.partial_dir)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        return self.partial_dir

    def discard(self) -> None:
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        self.lock_path.unlink(missing_ok=True)

    def _lock(self) -> None:
        """One builder per artifact id: a second process would wipe the first one's partial directory."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = _lock_owner(self.lock_path)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise MoegsError(
                        f"{self.partial_dir}: another moegs process (pid {owner}) is building this artifact"
                    ) from None
                self.lock_path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return
        raise MoegsError(f"{self.lock_path}: could not take the build lock")

    def commit(self) -> Artifact:
        """Hash the payload, write the manifest last, then atomically move the directory into place."""
        files = {}
        for path in sorted(p for p in self.partial_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.partial_dir).as_posix()
            if rel.startswith("checkpoints/") or rel == MANIFEST:
                continue
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for ckpt in self.partial_dir.glob("checkpoints"):
            shutil.rmtree(ckpt)
        manifest = {
            "kind": self.kind,
            "schema_version": SCHEMA_VERSIONS[self.kind],
            "id": self.id,
            "scene": self.scene,
            "created_by": {
                "stage": self.stage,
                "moegs_version": __version__,
                "git_commit": _git_commit(),
                "command": sys.argv,
                "python": platform.python_version(),
            },
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
            "inputs": [
                {"role": role, "kind": a.kind, "id": a.id, "path": os.path.relpath(a.path, self.final_dir)}
                for role, a in self.inputs
            ],
            "config": self.config,
            "files": files,
            "compat": self.compat,
            "metrics": self.metrics,
            **self.extra,
        }
        tmp = self.partial_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, self.partial_dir / MANIFEST)
        if self.final_dir.exists():
            trash = self.final_dir.with_name(self.final_dir.name + ".old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.final_dir, trash)
            shutil.rmtree(trash)
        os.replace(self.partial_dir, self.final_dir)
        self.release()
        return Artifact(path=self.final_dir.resolve(), manifest=manifest)


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def building(writer: ArtifactWriter, resume: bool = False) -> Iterator[Path]:
    """Yield the partial directory; on bad input remove it, on other failures keep it for ``--resume``."""
    directory = writer.begin(resume=resume)
    try:
        yield directory
    except InputError:
        writer.discard()
        raise
    except BaseException:
        writer.release()
        raise
