"""User-facing errors.

A `TuneforgeError` is bad input or a bad environment that the user can fix: the CLI prints its message as one
line and exits non-zero, without a traceback (unless `--debug`). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class TuneforgeError(Exception):
    """An error the user can fix; `str()` is the one line shown to them."""


class ConfigError(TuneforgeError):
    """The YAML config (or a `--set` override) is invalid."""


class DataError(TuneforgeError):
    """A data file is missing, malformed or holds rows tuneforge cannot use."""


class ExportError(TuneforgeError):
    """An export that cannot be done (unsupported model, adapter or quant type) or failed to write."""


def where(path: str | Path, line: int | None = None) -> str:
    """`file:line` (or just `file`) for messages."""
    return f"{path}:{line}" if line else str(path)


class Stopped(TuneforgeError):
    """A run or search stopped on request (SIGTERM: a scheduler's preemption) after writing its checkpoint; it
    continues with --resume."""

