"""Graceful stops (preemption): SIGTERM to the driver asks the workers to finish their step, checkpoint it and end.

The request travels through a small Ray actor on the driver's node rather than a file, so that workers on nodes that
do not share the run directory (checkpoints in `storage_path`, workers on GPU nodes, the driver on a CPU head) see
it too. Rank 0 polls the actor without waiting (one call in flight, at most every POLL_S); every step's all-reduce
of the workers' views makes them stop at the same step."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

POLL_S = 0.25


class StopRequest:
    """The Ray actor holding the driver's request to stop: None, or why."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def ask(self, reason: str) -> None:
        self.reason = reason

    def reason_given(self) -> str | None:
        return self.reason


def stop_request_actor(options: dict[str, Any]) -> Any:
    import ray

    return ray.remote(StopRequest).options(**options).remote()


class StopWatch:
    """A worker's view of the stop request, refreshed without ever blocking a training step."""

    def __init__(self, actor: Any):
        self.actor, self.pending, self.asked, self.polled = actor, None, False, float("-inf")

    def stop_asked(self) -> bool:
        if self.asked or self.actor is None:
            return self.asked
        import ray

        if self.pending is None:
            if time.monotonic() - self.polled >= POLL_S:
                self.pending, self.polled = self.actor.reason_given.remote(), time.monotonic()
            return False
        ready, _ = ray.wait([self.pending], timeout=0)
        if ready:
            self.pending = None
            try:
                self.asked = ray.get(ready[0]) is not None
            except Exception:  # noqa: BLE001 - the actor went with its driver: the liveness check ends the run
                self.actor = None
        return self.asked


@contextlib.contextmanager
def stop_on_sigterm(actor: Any, note: Any, grace_s: float) -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, Kubernetes' stop) asks the workers to stop gracefully through `actor`.
    After `grace_s` the run is interrupted as it is, as Ctrl-C does. Only where signals can be caught (the main
    thread)."""
    import _thread
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    timers: list[threading.Timer] = []

    def request_stop(_signum: int, _frame: Any) -> None:
        if timers:  # asked again: already stopping
            return
        # A Ray call from a thread of its own: the handler may run while the main thread is inside Ray's wait.
        threading.Thread(target=actor.ask.remote, args=("SIGTERM",), daemon=True).start()
        note(f"SIGTERM: the workers finish their step, write a checkpoint and stop (within {grace_s:g} s, "
             "stop_grace_s)")
        timers.append(threading.Timer(grace_s, _thread.interrupt_main))
        timers[0].daemon = True
        timers[0].start()

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        for timer in timers:
            timer.cancel()
