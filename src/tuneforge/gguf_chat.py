"""Chatting with a GGUF model on the CPU through llama.cpp, with the chat template stored in the file.

llama.cpp runs in a child process (`tuneforge.native`): if it crashes, `generate --gguf` ends with one error line
naming the signal instead of dying silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.native import NativeWorker


class GgufChat:
    """`json_schema` (JSON text; "{}" = any JSON value) constrains every answer through llama.cpp's grammar."""

    def __init__(self, model: Path, lora: Path | None = None, json_schema: str | None = None):
        from tuneforge.export.parity import require_llama_cpp

        for path in (model, lora):
            if path is not None and not Path(path).is_file():
                raise TuneforgeError(f"{path}: no such GGUF file")
        require_llama_cpp(load=False)
        self.json_schema = json_schema
        self.worker = NativeWorker("GGUF generation")
        self.worker.call(load, Path(model), Path(lora) if lora else None)

    def complete(self, prompt: Any, settings: Any, *, system: str | None = None) -> str:
        return self.worker.call(complete, prompt, self.options(settings), system)

    def stream(self, prompt: Any, settings: Any, *, system: str | None = None) -> Iterator[str]:
        yield from self.worker.stream(stream, prompt, self.options(settings), system)

    def options(self, settings: Any) -> dict[str, Any]:
        options = sampling_options(settings)
        if self.json_schema is not None:  # llama-cpp-python turns the schema into a GBNF grammar
            options["response_format"] = {"type": "json_object", "schema": json.loads(self.json_schema)}
        return options

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> GgufChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What runs in the child process: one loaded model per child.
LOADED: dict[str, Any] = {}


def load(model: Path, lora: Path | None) -> None:
    from tuneforge.export.parity import open_gguf

    LOADED["llm"] = open_gguf(model, lora)


def messages_for(prompt: str | list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def sampling_options(settings: Any) -> dict[str, Any]:
    """Plain options for the child, which never imports tuneforge.generate (and so torch)."""
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.temperature > 0 else {
        "temperature": 0.0, "top_k": 1}
    return {"max_tokens": settings.max_new_tokens, **sampling}


def complete(prompt: Any, options: dict[str, Any], system: str | None) -> str:
    reply = LOADED["llm"].create_chat_completion(messages=messages_for(prompt, system), **options)
    return reply["choices"][0]["message"]["content"].strip()


def stream(prompt: Any, options: dict[str, Any], system: str | None) -> Iterator[str]:
    chunks = LOADED["llm"].create_chat_completion(messages=messages_for(prompt, system), stream=True, **options)
    for chunk in chunks:
        piece = chunk["choices"][0].get("delta", {}).get("content")
        if piece:
            yield piece
