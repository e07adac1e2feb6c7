"""A full disk during a run: what could not be written, how much it needed, and what the run can continue from.

Checkpoints are only ever taken whole (tuneforge.rundir: each lists its files and sizes, written last), so a write
cut short by a full disk leaves the previous checkpoints as they were; the run stops with one line, and `--resume`
continues once there is room.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.rundir import CheckpointMeta, RunDir

NO_SPACE = "No space left on device"


def out_of_space(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk (Ray relays a worker's as text)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or NO_SPACE in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(run: RunDir, what: str) -> TuneforgeError:
    """One line: what could not be written, the room it needs (a checkpoint as large as the last) against the
    room left, the last whole checkpoint, and how to continue."""
    latest = run.latest_checkpoint()
    meta = CheckpointMeta.read(latest) if latest else None
    free = shutil.disk_usage(nearest_existing(run.path)).free
    needs = f"it needs about {megabytes(sum((meta.files or {}).values()))}, " if meta else ""
    room = f"{needs}{megabytes(free)} free on the disk of {run.path}"
    if latest is None:
        return TuneforgeError(f"no space left: {what} could not be written ({room}); the run has no whole checkpoint "
                              f"yet: free space and start it again")
    step = meta.step
    return TuneforgeError(f"no space left: {what} could not be written ({room}); the last whole checkpoint, "
                          f"{latest.name} (step {step}), is kept as it was: free space and `tuneforge train --resume "
                          f"{run.path}`")


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (where a folder not yet made would go)."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
