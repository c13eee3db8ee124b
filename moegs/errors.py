"""Error types that the CLI maps to exit codes.

Library code raises these with a one-line message that names the file or value at fault; the CLI
prints the message (no traceback unless MOEGS_DEBUG=1) and exits with the class's ``exit_code``.
"""

from __future__ import annotations


class MoegsError(Exception):
    """A runtime failure (exit code 1)."""

    exit_code = 1


class InputError(MoegsError):
    """Bad parameter or bad input data (exit code 2)."""

    exit_code = 2


class IncompatibleArtifactError(MoegsError):
    """An artifact of the wrong kind, version, or compat keys (exit code 3)."""

    exit_code = 3


class MissingDependencyError(MoegsError):
    """An optional dependency or device is not available (exit code 4); the message says how to get it."""

    exit_code = 4


class DamagedArtifactError(IncompatibleArtifactError):
    """An artifact whose manifest or payload no longer matches what was committed (exit code 3)."""


class StorageError(MoegsError):
    """The workspace cannot be written: disk full, file-size limit, read-only, not a folder (exit code 1)."""


class CheckpointError(MoegsError):
    """A training checkpoint that cannot be read back (truncated, corrupt or from another run); exit code 1."""
