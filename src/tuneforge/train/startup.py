"""Where the seconds before the first optimizer step go.

The driver marks its phases (data ready, Ray ready, training handed to Ray Train), the rank-0 worker marks its own
(worker process up, data payload fetched, model built, optimizer and DDP ready) and sends them in its "start" event.
`StartupClock.breakdown` turns the marks into seconds per phase; the run keeps them in run.json (`startup`), and
`--debug` prints them. Worker marks are wall-clock times: on one machine they share the driver's clock; across
nodes they are as good as the nodes' clock sync.
"""

from __future__ import annotations

import os
import time
from typing import Any


def process_start_time() -> float | None:
    """When this process started (Linux: /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class StartupClock:
    """Marks named after the phase that just ended, in the order they happen."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []
        launched = process_start_time()
        if launched is not None:
            self.marks.append(("process start", launched))
        self.mark("imports, until train() was called")

    def mark(self, phase: str) -> None:
        self.marks.append((phase, time.time()))

    def breakdown(self, worker_marks: list[tuple[str, float]]) -> dict[str, float]:
        """Seconds per phase, driver's then worker's, plus `total` from the first mark to the last."""
        marks = self.marks + [(str(name), float(at)) for name, at in worker_marks]
        seconds = {name: round(at - before, 2) for (name, at), (_, before) in zip(marks[1:], marks)}
        seconds["total"] = round(marks[-1][1] - marks[0][1], 2)
        return seconds


def startup_line(seconds: dict[str, Any]) -> str:
    phases = " · ".join(f"{name} {value:.1f} s" for name, value in seconds.items() if name != "total")
    return f"start-up {seconds['total']:.1f} s: {phases}"
