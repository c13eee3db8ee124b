"""Training checkpoints that are written atomically and read back only when intact.

File layout: a magic line, the sha256 of the body, then the body (``torch.save`` of the payload).
A checkpoint cut short by a kill, a full disk or a bit flip fails the hash check and raises
:class:`~moegs.errors.CheckpointError` naming the file, instead of a pickle or zip traceback from
deep inside torch; the caller decides whether to start that run again from step 0.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from moegs.errors import CheckpointError

MAGIC = b"MOEGS-CHECKPOINT 1\n"
DIGEST_LINE = 65  # 64 hex digits and a newline


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, optimizer state dicts) to ``path`` via an fsynced temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC)
            handle.write(hashlib.sha256(body).hexdigest().encode() + b"\n")
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """The payload saved at ``path`` (tensors on ``map_location``); :class:`CheckpointError` if it is truncated,
    corrupt or not a checkpoint."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a moegs checkpoint (damaged, or written by another program)")
    digest = data[len(MAGIC):len(MAGIC) + DIGEST_LINE].strip().decode(errors="replace")
    body = data[len(MAGIC) + DIGEST_LINE:]
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(f"{path}: damaged checkpoint ({len(data)} bytes; its content does not match its sha256)")
    try:
        payload = torch.load(io.BytesIO(body), weights_only=True, map_location=map_location)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a body it cannot restore
        raise CheckpointError(f"{path}: checkpoint cannot be restored ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(payload).__name__}, expected a dict")
    return payload
