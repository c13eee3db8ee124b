"""What every stage does around its own work: skip when done, build atomically, report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moegs.artifacts import Artifact, ArtifactWriter, building

log = logging.getLogger("moegs")


@dataclass
class StageResult:
    """The artifact a stage produced (or found) and whether it was already up to date."""

    artifact: Artifact
    up_to_date: bool


def run_stage(
    writer: ArtifactWriter,
    build: Callable[[Path, ArtifactWriter], None],
    *,
    force: bool = False,
    resume: bool = False,
) -> StageResult:
    """Return the existing artifact with this id unless ``force``; otherwise build it in a partial dir and commit.

    ``build(directory, writer)`` writes the payload into ``directory`` and fills ``writer.metrics``
    and ``writer.compat``.
    """
    if writer.exists and not force:
        log.info("up to date: %s %s", writer.kind, writer.final_dir)
        return StageResult(writer.existing(), up_to_date=True)
    with building(writer, resume=resume) as directory:
        build(directory, writer)
    artifact = writer.commit()
    log.info("wrote %s %s", writer.kind, artifact.path)
    return StageResult(artifact, up_to_date=False)
