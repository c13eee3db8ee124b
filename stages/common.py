"""What every stage does around its own work: skip when done, build atomically, report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typing import Any

from moegs.allocator import retain_freed_memory
from moegs.artifacts import Artifact, ArtifactWriter, building
from moegs.config import to_dict
from moegs.context import RenderContext, resolve_context

log = logging.getLogger("moegs")


@dataclass
class StageResult:
    """The artifact a stage produced (or found) and whether it was already up to date."""

    artifact: Artifact
    up_to_date: bool


PLACEMENT_KEYS = ("device", "backend", "checkpoint_every")
"""Config keys that say where or how a stage runs, not what it makes: kept out of artifact ids."""
BUDGET_KEYS = ("frame_cache_mb", "deformed_cache_mb", "teacher_cache_mb")
"""Memory budgets of caches: like placement, they change memory and speed, never results."""


def artifact_config(cfg: Any) -> dict:
    """The stage config as it goes into the manifest and the id (without placement keys and cache budgets)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in PLACEMENT_KEYS + BUDGET_KEYS}


def stage_context(cfg: Any) -> RenderContext:
    """The device and backend a stage config asks for, checked before any work starts."""
    return resolve_context(cfg.device, cfg.backend)


def run_stage(
    writer: ArtifactWriter,
    build: Callable[[Path, ArtifactWriter], None],
    *,
    ctx: RenderContext | None = None,
    force: bool = False,
    resume: bool = False,
) -> StageResult:
    """Return the existing artifact with this id unless ``force``; otherwise build it in a partial dir and commit.

    ``build(directory, writer)`` writes the payload into ``directory`` and fills ``writer.metrics``
    and ``writer.compat``; the manifest records the ``ctx`` (device and backend) it ran in.
    """
    if writer.exists and not force:
        log.info("up to date: %s %s", writer.kind, writer.final_dir)
        return StageResult(writer.existing(), up_to_date=True)
    if ctx is not None:
        writer.extra["context"] = ctx.describe()
    retain_freed_memory()  # training steps reuse their buffers instead of faulting them in again
    with building(writer, resume=resume) as directory:
        build(directory, writer)
    artifact = writer.commit()
    log.info("wrote %s %s", writer.kind, artifact.path)
    return StageResult(artifact, up_to_date=False)
