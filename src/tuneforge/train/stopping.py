"""Graceful stops (preemption): SIGTERM to the driver asks the workers to finish their step, checkpoint it and end.

The request travels through Ray rather than a file, so that workers on nodes that do not share the run directory
(checkpoints in `storage_path`, workers on GPU nodes, the driver on a CPU head) see it too: on SIGTERM the driver
creates a named Ray actor on its node, and the request is that actor's existence. Nothing runs before a stop is
asked (no actor process for every run). Rank 0 looks the name up on a thread of its own every POLL_S, so no
training step ever waits on it; every step's all-reduce of the workers' views stops them at the same step."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

POLL_S = 0.25


class StopRequest:
    """The Ray actor whose existence, under the run's stop name, is the driver's request to stop."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def reason_given(self) -> str:
        return self.reason


def new_stop_name() -> str:
    return f"tuneforge-stop-{uuid.uuid4().hex}"


ASKED: dict[str, Any] = {}  # name -> the request's actor handle: Ray ends an actor once its handles are gone


def ask_to_stop(name: str, reason: str, options: dict[str, Any]) -> None:
    import ray

    ASKED[name] = ray.remote(StopRequest).options(name=name, **options).remote(reason)


def end_stop_request(name: str) -> None:
    """The request's actor, if a stop was asked, ends with the run."""
    import ray

    actor = ASKED.pop(name, None)
    if actor is not None:
        with contextlib.suppress(Exception):  # gone already
            ray.kill(actor)


class StopWatch:
    """A worker's view of the stop request: a background thread looks the name up (only where `name` is given, on
    rank 0); `stop_asked()` never waits."""

    def __init__(self, name: str | None):
        self.name, self.seen = name, threading.Event()
        if name:
            threading.Thread(target=self.watch, name="tuneforge-stop-watch", daemon=True).start()

    def watch(self) -> None:
        import ray

        while not self.seen.wait(POLL_S):
            try:
                ray.get_actor(self.name)
            except ValueError:  # not asked (yet)
                continue
            except Exception:  # noqa: BLE001 - Ray itself is going away with the driver: the liveness check ends it
                return
            self.seen.set()

    def stop_asked(self) -> bool:
        return self.seen.is_set()


@contextlib.contextmanager
def stop_on_sigterm(name: str, options: dict[str, Any], note: Any, grace_s: float) -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, Kubernetes' stop) asks the workers to stop gracefully: the stop request
    `name` is created with actor `options`. After `grace_s` the run is interrupted as it is, as Ctrl-C does. Only
    where signals can be caught (the main thread)."""
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
        threading.Thread(target=ask_to_stop, args=(name, "SIGTERM", options), daemon=True).start()
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
