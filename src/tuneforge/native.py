"""Native code (llama.cpp) runs in a child process, so that its crash becomes one error line instead of the end of
tuneforge.

A llama.cpp build compiled for instructions the CPU does not execute dies with SIGILL; a bad file can make it abort
or segfault. None of these is an exception: in-process they kill Python with no message and nothing recorded. Each
step here runs in a freshly spawned process (never forked: torch and Ray threads do not survive a fork), and a
signal death is raised as `NativeCrash` naming the step and the signal.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator
from typing import Any

from tuneforge.errors import TuneforgeError

SIGNAL_MEANINGS = {
    "SIGILL": "illegal instruction: this llama.cpp build uses CPU instructions this machine cannot run",
    "SIGSEGV": "segmentation fault",
    "SIGBUS": "bus error",
    "SIGFPE": "arithmetic fault",
    "SIGABRT": "aborted",
    "SIGKILL": "killed, most often by the kernel when memory runs out",
}


class NativeCrash(TuneforgeError):
    """A native step died of a signal (or exited without answering)."""

    def __init__(self, step: str, exitcode: int | None):
        self.step, self.exitcode = step, exitcode
        self.signal_name = signal_name(exitcode)
        super().__init__(f"llama.cpp crashed during {step} ({self.cause}); run `tuneforge doctor` to check this "
                         "machine and its llama.cpp build")

    @property
    def cause(self) -> str:
        if self.signal_name:
            return f"{self.signal_name}, {SIGNAL_MEANINGS.get(self.signal_name, 'killed by a signal')}"
        return f"the process exited with code {self.exitcode} without an answer"


def signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def run_isolated(step: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a child process; its result, its exception, or `NativeCrash`.

    `function` and its arguments travel by pickle: a module-level function and plain data."""
    with NativeWorker(step) as worker:
        return worker.call(function, *args, **kwargs)


class NativeWorker:
    """A child process that keeps state between calls (a loaded model) and answers calls or streams over a pipe."""

    def __init__(self, step: str):
        context = multiprocessing.get_context("spawn")
        self.step = step
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=serve, args=(child_end,), daemon=True, name=f"tuneforge-{step}")
        self.process.start()
        child_end.close()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.send(("call", function, args, kwargs))
        return self.receive()

    def stream(self, function: Callable[..., Iterator[Any]], *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Items of the generator `function(*args, **kwargs)` as the child yields them. Closing this iterator early
        stops the child's generator too, so the next call starts clean (a client that leaves mid-stream)."""
        self.send(("stream", function, args, kwargs))
        ended = False
        try:
            while True:
                try:
                    item = self.receive()
                except BaseException:
                    ended = True  # the child reported an error or died: nothing more will come
                    raise
                if item is END_OF_STREAM:
                    ended = True
                    return
                yield item
        finally:
            if not ended:
                self.cancel_stream()

    def cancel_stream(self) -> None:
        """Ask the child to stop the stream and drop what it sent meanwhile, up to its end marker."""
        try:
            self.connection.send(("cancel", None, (), {}))
            while self.receive() is not END_OF_STREAM:
                pass
        except Exception:  # noqa: BLE001 - a child that failed or died while stopping has nothing left to drain
            pass

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.connection.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self.crash() from None

    def receive(self) -> Any:
        try:
            kind, value = self.connection.recv()
        except (EOFError, ConnectionResetError):
            raise self.crash() from None
        if kind == "error":
            raise value
        return END_OF_STREAM if kind == "end" else value

    def crash(self) -> NativeCrash:
        self.process.join(timeout=10)
        return NativeCrash(self.step, self.process.exitcode)

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.connection.send(("stop", None, (), {}))
            except OSError:
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()

    def __enter__(self) -> NativeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


END_OF_STREAM = object()


def serve(connection: Any) -> None:
    """The child's loop: run each call, send back its result or its exception."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then stops us
    while True:
        try:
            kind, function, args, kwargs = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if kind == "stop":
            return
        if kind == "cancel":  # the stream it was meant for had already ended
            continue
        try:
            if kind == "stream":
                if not stream_items(connection, function(*args, **kwargs)):
                    return
            else:
                connection.send(("result", function(*args, **kwargs)))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, which raises it
            connection.send(("error", portable(exc)))


def stream_items(connection: Any, items: Iterator[Any]) -> bool:
    """Send each item until the generator ends or the parent cancels; False when the parent asked us to stop."""
    for item in items:
        connection.send(("item", item))
        if connection.poll():
            kind = connection.recv()[0]
            close = getattr(items, "close", None)
            if close:
                close()
            if kind == "stop":
                return False
            break  # "cancel"
    connection.send(("end", None))
    return True


def portable(exc: Exception) -> Exception:
    """The exception itself if it survives pickling, else a TuneforgeError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return TuneforgeError(f"{type(exc).__name__}: {exc}")
