"""Who is still training a run. After a driver is killed (SIGKILL, a lost terminal), Ray stops its workers only
seconds later, and until then they keep training and writing checkpoints into the run. Workers on the driver's node
stop at their next step once it is gone, and `--resume` waits for a killed run's workers before it starts."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Process:
    node: str
    pid: int
    started: float | None = None  # its start time: a pid reused by a later process (after a reboot) is not it

    @classmethod
    def current(cls) -> Process:
        return cls(platform.node(), os.getpid(), psutil.Process().create_time())

    @property
    def local(self) -> bool:
        return self.node == platform.node()

    def running(self) -> bool:
        """False only when it is known to be gone: a process on another node is assumed alive."""
        if not self.local:
            return True
        try:
            process = psutil.Process(self.pid)
            if self.started is not None and abs(process.create_time() - self.started) > 1.0:
                return False
            return process.status() != psutil.STATUS_ZOMBIE  # killed, not yet reaped by its parent
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # another user's process: it exists
            return True


def wait_until_gone(processes: list[Process], timeout_s: float) -> list[Process]:
    """Wait for the processes on this node to end; those still running after `timeout_s`."""
    local = [p for p in processes if p.local]
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in local if p.running()]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
