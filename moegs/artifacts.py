"""Versioned, content-addressed artifacts: one directory per stage output with ``manifest.json`` written last.

Layout: ``<workspace>/<scene>/<kind>/<id12>/``. The id hashes the kind, its schema major version,
the resolved config and the ids of the inputs, so the same work always lands in the same place
and a re-run finds it done. A stage writes into ``<id12>.partial/`` and renames it only after the
manifest (the commit marker) is written: a killed stage never leaves something that looks complete.
The manifest records every payload file's sha256 and its own checksum; loading checks both, so a
modified, truncated or missing file is an error naming it (exit 3), never silently used (a dataset's
frame stores are checked frame by frame as they are read; ``moegs ls --verify`` hashes them whole). Names
starting with ``.`` or ending in ``.partial``/``.lock`` are the system's scratch space: never listed
or resolved as artifacts, and cleaned by ``moegs gc``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moegs import __version__, build_lock, interrupts
from moegs.errors import DamagedArtifactError, IncompatibleArtifactError, InputError, MoegsError, StorageError
from moegs.payload_checks import unreadable_reason
from moegs.storage import exhausted_reason, tree_size

KINDS = ("dataset", "expert", "moe", "chunked", "render", "bench")
SCHEMA_VERSIONS = {"dataset": "1.0", "expert": "1.0", "moe": "1.1", "chunked": "1.0", "render": "1.0", "bench": "1.0"}
MANIFEST = "manifest.json"
ID_LENGTH = 12
ID_DIR = re.compile(r"[0-9a-f]{12}")
CHECKSUM_KEY = "manifest_sha256"
ON_READ = "on_read"
"""A file entry's ``"verify"`` value for payload whose reader checks it piece by piece as it reads."""
CHECKPOINTS = "checkpoints"

log = logging.getLogger("moegs")


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
    """A finished artifact on disk and its manifest.

    Payload files are checked against the manifest's sha256 before use: :func:`load_artifact`
    checks them all, and :meth:`file` checks the one it hands out if that has not happened yet,
    so no loader can read a modified or truncated file without an error naming it.
    """

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
        """Path of a payload file, checked against its recorded hash; an unlisted file must not exist."""
        path = self.path / relpath
        info = self.manifest.get("files", {}).get(relpath)
        if info is None:
            if path.exists():
                raise DamagedArtifactError(f"{path}: not recorded in the manifest of {self.path} (added after the commit)")
            return path
        _check_file(path, info, self.path)
        return path

    def input_refs(self, kind: str | None = None) -> list[dict]:
        return [i for i in self.manifest.get("inputs", []) if kind is None or i["kind"] == kind]

    def resolve_input(self, entry: dict) -> "Artifact":
        """Load an input artifact named in this manifest (path relative to this artifact's directory)."""
        where = self.path / entry["path"]
        if not (where / MANIFEST).is_file():
            raise DamagedArtifactError(f"{self.path}: its {entry['kind']} input {entry['id'][:ID_LENGTH]} is gone "
                                       f"(expected at {where.resolve()})")
        found = load_artifact(where, expected_kind=entry["kind"])
        if found.id != entry["id"]:
            raise DamagedArtifactError(f"{self.path}: its {entry['kind']} input at {found.path} is now artifact "
                                       f"{found.short_id}, not the recorded {entry['id'][:ID_LENGTH]}")
        return found

    def verify(self, full: bool = False) -> None:
        """Check every payload file against its recorded size and sha256 (each file hashed once per process).

        A file recorded as checked on read (a frame store, which its reader checks frame by frame
        against a digests file that *is* hashed here) gets only its size checked, unless ``full``.
        """
        for rel, info in self.manifest.get("files", {}).items():
            _check_file(self.path / rel, info, self.path, full)


_VERIFIED: dict[str, tuple[tuple[int, ...], str]] = {}
"""Per process: file path -> (stat signature, sha256) of files already hashed, so a file is hashed once."""


def _signature(st: os.stat_result) -> tuple[int, ...]:
    # ctime changes on every write, even when mtime is set back, so an unchanged signature means unchanged bytes
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def remember_digest(path: Path, sha256: str) -> None:
    """Record the sha256 of a file its writer hashed while writing it (call after the last write), so
    the commit need not read it back (a 300-frame N3V frame store is 1.2 GB)."""
    _VERIFIED[os.path.abspath(path)] = (_signature(Path(path).stat()), sha256)


def _hash_once(path: Path) -> str:
    key = os.path.abspath(path)
    signature = _signature(path.stat())
    cached = _VERIFIED.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    digest = sha256_file(path)
    _VERIFIED[key] = (signature, digest)
    return digest


def _check_file(path: Path, info: dict, artifact_dir: Path, full: bool = False) -> None:
    if not path.is_file():
        raise DamagedArtifactError(f"{path}: missing, but listed in the manifest of {artifact_dir} (rebuild it with --force)")
    size = path.stat().st_size
    if size != info["size"]:
        raise DamagedArtifactError(f"{path}: {size} bytes, but the manifest records {info['size']}; the artifact is "
                                   "damaged (rebuild it with --force)")
    if info.get("verify") == ON_READ and not full:
        return
    if _hash_once(path) != info["sha256"]:
        raise DamagedArtifactError(f"{path}: content does not match the sha256 in the manifest (modified after the "
                                   "commit); rebuild it with --force")


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest without its own checksum: an edited manifest (kind, hashes) no longer matches."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _read_manifest(directory: Path) -> dict:
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{directory}: not an artifact (no {MANIFEST}; an unfinished stage leaves only .partial)") from None
    except IsADirectoryError:
        raise DamagedArtifactError(f"{manifest_path}: damaged manifest (a folder, not a file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedArtifactError(f"{manifest_path}: damaged manifest (not valid JSON: {exc})") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise DamagedArtifactError(f"{manifest_path}: damaged manifest ({problem})")
    recorded = manifest.get(CHECKSUM_KEY)
    if recorded is not None and recorded != manifest_checksum(manifest):
        raise DamagedArtifactError(f"{manifest_path}: damaged manifest (edited after the commit: its checksum does not match)")
    parent_kind = directory.resolve().parent.name
    if parent_kind in KINDS and manifest["kind"] in KINDS and parent_kind != manifest["kind"]:
        raise DamagedArtifactError(f"{manifest_path}: damaged manifest (says kind {manifest['kind']!r} but lies "
                                   f"under {parent_kind}/)")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    """What makes a parsed manifest unusable (wrong types, unsafe paths), or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if not isinstance(manifest.get("kind"), str):
        return "no 'kind'"
    if not isinstance(manifest.get("id"), str) or not re.fullmatch(r"[0-9a-f]{64}", manifest["id"]):
        return "no valid 'id'"
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        return "'files' is not an object"
    for rel, info in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"file entry {rel!r} points outside the artifact"
        if (not isinstance(info, dict) or not isinstance(info.get("size"), int)
                or not isinstance(info.get("sha256"), str)):
            return f"file entry {rel!r} lacks size or sha256"
        if info.get("verify", ON_READ) != ON_READ:
            return f"file entry {rel!r} has an unknown verify mode {info['verify']!r}"
    inputs = manifest.get("inputs", [])
    if not isinstance(inputs, list) or not all(
        isinstance(i, dict) and all(isinstance(i.get(k), str) for k in ("kind", "id", "path")) for i in inputs
    ):
        return "'inputs' entries need kind, id and path"
    for key in ("config", "compat", "metrics"):
        if not isinstance(manifest.get(key, {}), dict):
            return f"'{key}' is not an object"
    return None


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
    ref: str | Path, workspace: Path | None = None, expected_kind: str | None = None, verify: bool = True
) -> Artifact:
    """Load an artifact from a path, ``scene/kind/latest`` or ``scene/kind/<id prefix>`` (relative to ``workspace``).

    ``verify`` hashes every payload file now (once per process; files checked on read get their size
    checked); without it, :meth:`Artifact.file` still checks each file it hands out.
    """
    directory = _resolve_ref(ref, workspace)
    manifest = _read_manifest(directory)
    check_kind(manifest, directory, expected_kind)
    artifact = Artifact(path=directory.resolve(), manifest=manifest)
    if verify:
        artifact.verify()
    return artifact


def is_scratch_name(name: str) -> bool:
    """Names the artifact system uses for unfinished or replaced builds; never a finished artifact."""
    return name.startswith(".") or name.endswith((".partial", ".old", ".lock", ".tmp"))


def check_workspace(workspace: Path) -> None:
    workspace = Path(workspace)
    if workspace.exists() and not workspace.is_dir():
        raise InputError(f"{workspace}: the workspace is not a folder (give --workspace a folder path)")


def _resolve_ref(ref: str | Path, workspace: Path | None) -> Path:
    path = Path(ref)
    if path.name == MANIFEST:
        path = path.parent
    if path.is_dir() and (path / MANIFEST).is_file():
        if is_scratch_name(path.name):
            raise InputError(f"{path}: an unfinished or replaced build, not a finished artifact")
        return path
    parts = Path(ref).parts
    if workspace is not None and len(parts) == 3 and parts[1] in KINDS:
        check_workspace(workspace)
        scene, kind, selector = parts
        kind_dir = Path(workspace) / scene / kind
        entries = scan_kind_dir(kind_dir)
        intact = [e.artifact for e in entries if e.artifact is not None]
        damaged = [e for e in entries if e.state == DAMAGED]
        if selector == "latest":
            if not intact:
                if damaged:
                    raise DamagedArtifactError(f"{kind_dir}: no intact {kind} artifact; damaged: "
                                               + "; ".join(f"{e.path.name} ({e.reason})" for e in damaged))
                raise InputError(f"{kind_dir}: no finished {kind} artifact for scene {scene!r}")
            return max(intact, key=lambda a: a.manifest.get("created_at", "")).path
        matches = [a.path for a in intact if a.id.startswith(selector)]
        broken = [e for e in damaged if e.path.name.startswith(selector[:ID_LENGTH])]
        if len(matches) + len(broken) > 1:
            raise InputError(f"{ref}: id prefix {selector!r} is ambiguous ({len(matches) + len(broken)} {kind} "
                             "artifacts match)")
        if matches:
            return matches[0]
        if broken:
            raise DamagedArtifactError(f"{broken[0].path}: damaged {kind} artifact ({broken[0].reason})")
        raise InputError(f"{ref}: no finished {kind} artifact of scene {scene!r} has an id starting with {selector!r}")
    if path.exists():
        raise InputError(f"{path}: not an artifact (no {MANIFEST}; an unfinished stage leaves only .partial)")
    raise InputError(f"{ref}: no such artifact (give a path, scene/kind/latest or scene/kind/<id prefix>)")


COMPLETE, DAMAGED, PARTIAL, LOCK, SCRATCH, STRAY = "complete", "damaged", "partial", "lock", "scratch", "stray"


@dataclass
class Entry:
    """One entry of a ``<scene>/<kind>/`` folder and what it is (see the state constants)."""

    path: Path
    state: str
    reason: str = ""
    artifact: Artifact | None = None


def scan_kind_dir(kind_dir: Path) -> list[Entry]:
    """Classify every entry of a kind folder; only ``complete`` ones (a 12-hex name, a sound manifest) count as finished.

    Payload hashes are not checked here (that is :meth:`Artifact.verify`'s job): listing stays cheap.
    """
    kind_dir = Path(kind_dir)
    if not kind_dir.is_dir():
        return []
    entries = []
    for child in sorted(kind_dir.iterdir()):
        name = child.name
        if name.endswith(".partial") and child.is_dir():
            entries.append(Entry(child, PARTIAL))
        elif name.endswith(".lock") and not name.startswith("."):
            entries.append(Entry(child, LOCK))
        elif is_scratch_name(name):
            entries.append(Entry(child, SCRATCH))
        elif not child.is_dir() or not ID_DIR.fullmatch(name):
            entries.append(Entry(child, STRAY))
        else:
            entries.append(_classify_artifact_dir(child, kind_dir.name))
    return entries


def _classify_artifact_dir(directory: Path, kind: str) -> Entry:
    try:
        manifest = _read_manifest(directory)
        check_kind(manifest, directory, kind if kind in KINDS else None)
    except InputError:
        return Entry(directory, DAMAGED, f"no {MANIFEST}")
    except MoegsError as exc:
        return Entry(directory, DAMAGED, str(exc).split(": ", 1)[-1])
    except OSError as exc:
        return Entry(directory, DAMAGED, f"{MANIFEST} cannot be read ({exc.strerror})")
    if not manifest["id"].startswith(directory.name):
        return Entry(directory, DAMAGED, f"folder name does not match the manifest id {manifest['id'][:ID_LENGTH]}")
    return Entry(directory, COMPLETE, artifact=Artifact(path=directory, manifest=manifest))


def scan_workspace(workspace: Path) -> list[Entry]:
    """Every entry under ``<workspace>/<scene>/<kind>/``, in path order."""
    workspace = Path(workspace)
    check_workspace(workspace)
    found: list[Entry] = []
    if workspace.is_dir():
        for scene_dir in sorted(p for p in workspace.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for kind in KINDS:
                found.extend(scan_kind_dir(scene_dir / kind))
    return found


def list_artifacts(workspace: Path) -> list[Artifact]:
    """Every finished artifact of a workspace, oldest first."""
    found = [e.artifact for e in scan_workspace(workspace) if e.artifact is not None]
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
        self.checked_on_read: set[str] = set()
        """Payload paths whose readers check their content piece by piece (recorded as ``"verify": "on_read"``)."""

    @property
    def exists(self) -> bool:
        """A finished artifact with this id is on disk (finishing a commit a crash cut short first)."""
        check_workspace(self.workspace)
        self._finish_interrupted_commit()
        return (self.final_dir / MANIFEST).is_file()

    def existing(self) -> Artifact:
        return load_artifact(self.final_dir, expected_kind=self.kind)

    @property
    def lock_path(self) -> Path:
        return self.final_dir.with_name(self.final_dir.name + ".lock")

    def begin(self, resume: bool = False) -> Path:
        """Take the build lock, then create (or, with ``resume``, reuse) the partial directory."""
        check_workspace(self.workspace)
        build_lock.acquire(self.lock_path, self.partial_dir)
        if self.partial_dir.exists() and not resume:
            shutil.rmtree(self.partial_dir)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        (self.partial_dir / MANIFEST).unlink(missing_ok=True)  # a resumed build is not finished until it commits
        return self.partial_dir

    def discard(self) -> None:
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        self.lock_path.unlink(missing_ok=True)

    def commit(self) -> Artifact:
        """Check and hash the payload, write the manifest last, then move the directory into place.

        A payload file that is not readable as its format is refused (nothing is committed). If
        this fails for lack of room, the ``.partial`` goes too (see :meth:`storage_failure`).
        """
        if interrupts.received():  # Ctrl-C that a library swallowed may have cut the payload short
            self.release()
            raise KeyboardInterrupt
        try:
            files = self._checked_payload()
            shutil.rmtree(self.partial_dir / CHECKPOINTS, ignore_errors=True)
            manifest = self._manifest(files)
            _write_text_durably(self.partial_dir / MANIFEST, json.dumps(manifest, indent=2))
        except Exception as exc:
            for leftover in (MANIFEST, MANIFEST + ".tmp"):
                (self.partial_dir / leftover).unlink(missing_ok=True)
            failure = self.storage_failure(exc)
            if failure is not None:
                raise failure from None
            if isinstance(exc, MoegsError):
                self.discard()
            else:
                self.release()
            raise
        try:
            self._move_into_place()  # cut short, it leaves a .partial with a manifest that exists() finishes
        finally:
            self.release()
        return Artifact(path=self.final_dir.resolve(), manifest=manifest)

    def storage_failure(self, exc: BaseException) -> StorageError | None:
        """For a failure from lack of room: remove the ``.partial`` (unless it holds resumable checkpoints) and
        return the one-line error to raise; None for any other failure."""
        reason = exhausted_reason(exc, self.partial_dir if self.partial_dir.is_dir() else None)
        if reason is None:
            return None
        where = getattr(exc, "filename", None) or self.partial_dir
        checkpoints = self.partial_dir / CHECKPOINTS
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            size = tree_size(self.partial_dir) / 1e6
            self.release()
            fate = (f"kept {self.partial_dir} ({size:.1f} MB) because it holds resumable checkpoints: free space and "
                    "rerun with --resume, or remove it with 'moegs gc --include-resumable'")
        else:
            self.discard()
            fate = "removed it" if Path(where) == self.partial_dir else f"removed the unfinished {self.partial_dir}"
        return StorageError(f"{where}: {reason}; {fate}")

    def _checked_payload(self) -> dict[str, dict]:
        files = {}
        for path in sorted(p for p in self.partial_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.partial_dir).as_posix()
            if rel.startswith(CHECKPOINTS + "/") or rel in (MANIFEST, MANIFEST + ".tmp"):
                continue
            problem = unreadable_reason(path)
            if problem is not None:
                raise MoegsError(f"{path}: the written file is not readable ({problem}); nothing was committed")
            files[rel] = {"size": path.stat().st_size, "sha256": _hash_once(path)}
            if rel in self.checked_on_read:
                files[rel]["verify"] = ON_READ
        return files

    def _manifest(self, files: dict[str, dict]) -> dict:
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
        plain = json.loads(json.dumps(manifest, default=str))  # the checksum covers exactly what is written
        plain[CHECKSUM_KEY] = manifest_checksum(plain)
        return plain

    def _move_into_place(self) -> None:
        """Rename the partial directory to its final name; a replaced artifact goes to a hidden name first.

        A crash between the two renames leaves a ``.partial`` holding a manifest and no final
        directory; :meth:`exists` finishes that commit. The hidden copy is never listed or resolved.
        """
        if self.final_dir.exists():
            trash = self.final_dir.with_name(f".{self.final_dir.name}.replaced-{os.getpid()}")
            os.replace(self.final_dir, trash)
        os.replace(self.partial_dir, self.final_dir)
        _fsync_dir(self.final_dir.parent)
        for leftover in self.final_dir.parent.glob(f".{self.final_dir.name}.replaced-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        old, new = os.path.abspath(self.partial_dir), os.path.abspath(self.final_dir)
        for key in [k for k in _VERIFIED if k.startswith(old + os.sep)]:
            _VERIFIED[new + key[len(old):]] = _VERIFIED.pop(key)  # renamed, not rewritten: no need to hash again

    def _finish_interrupted_commit(self) -> None:
        if build_lock.held_by_another(self.lock_path):
            return  # its builder is alive and about to do it
        finish_interrupted_commit(self.partial_dir)


def finish_interrupted_commit(partial_dir: Path) -> bool:
    """Move a ``.partial`` whose manifest was written (and whose files match it) into place; True if it did.

    Only a crash between the commit's two renames leaves such a folder; the caller makes sure no
    live builder owns it.
    """
    partial_dir = Path(partial_dir)
    final_dir = partial_dir.with_name(partial_dir.name[: -len(".partial")])
    if (final_dir / MANIFEST).is_file() or not (partial_dir / MANIFEST).is_file():
        return False
    try:
        manifest = _read_manifest(partial_dir)
        if not manifest["id"].startswith(final_dir.name):
            return False
        Artifact(partial_dir, manifest).verify()
    except MoegsError:
        return False
    try:
        if final_dir.exists():
            shutil.rmtree(final_dir)  # a final folder without a manifest is nobody's artifact
        os.replace(partial_dir, final_dir)
    except OSError:
        return False
    log.info("finished the interrupted commit of %s", final_dir)
    return True


def _write_text_durably(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file, fsync it, then rename: never a half-written file under its name."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def building(writer: ArtifactWriter, resume: bool = False) -> Iterator[Path]:
    """Yield the partial directory; on bad input or lack of room remove it, on other failures keep it for ``--resume``."""
    directory = writer.begin(resume=resume)
    try:
        yield directory
    except InputError:
        writer.discard()
        raise
    except Exception as exc:
        failure = writer.storage_failure(exc)
        if failure is not None:
            raise failure from None
        writer.release()
        raise
    except BaseException:
        writer.release()
        raise
