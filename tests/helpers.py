"""Small builders for test data and configs."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


def chat_row(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def die_of(signal_name: str, *_args, **_kwargs) -> None:
    """Stands in for a native step that crashes: the process dies of `signal_name`, as llama.cpp would."""
    import os
    import signal

    if signal_name == "SIGSEGV":
        import ctypes

        ctypes.string_at(0)  # a real invalid read, not a raised signal
    os.kill(os.getpid(), getattr(signal, signal_name))


def die_of_sigill(*args, **kwargs) -> None:
    die_of("SIGILL")


def count_then_die(n: int):
    yield from range(n)
    die_of("SIGABRT")
