"""Exceptions that say what to fix. Adapters map them to exit codes / HTTP statuses."""

from __future__ import annotations

from pathlib import Path


class NcfError(Exception):
    """Base class for every error ncf_core raises on purpose."""


class DataError(NcfError, ValueError):
    """Input data is malformed; the message names the file and, when known, the line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line


class ConfigError(NcfError, ValueError):
    """A training option or hyperparameter is invalid."""


class CheckpointError(NcfError):
    """A training checkpoint could not be written (disk full, no permission...); the message says why."""


class ArtifactError(NcfError):
    """A model artifact is missing, corrupted or does not match its config."""


class UnknownIdError(NcfError, KeyError):
    """A raw item id (or user id where no fallback applies) is not in the model's id map."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
