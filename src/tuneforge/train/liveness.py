"""Who is still training a run. After a driver is killed (SIGKILL, a lost terminal), Ray stops its workers only
seconds later, and until then they keep training and writing checkpoints into the run. Workers on the driver's node
stop at their next step once it is gone, and `--resume` waits for a killed run's workers before it starts."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Process:
    node: str
    pid: int

    @classmethod
    def current(cls) -> Process:
        return cls(platform.node(), os.getpid())

    @property
    def local(self) -> bool:
        return self.node == platform.node()

    def running(self) -> bool:
        """False only when it is known to be gone: a process on another node is assumed alive."""
        if not self.local:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process now holds the pid
            return True
        return True


def wait_until_gone(processes: list[Process], timeout_s: float) -> list[Process]:
    """Wait for the processes on this node to end; those still running after `timeout_s`."""
    local = [p for p in processes if p.local]
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in local if p.running()]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
