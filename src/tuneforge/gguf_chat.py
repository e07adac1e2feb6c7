"""Chatting with a GGUF model on the CPU through llama.cpp, with the chat template stored in the file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError


class GgufChat:
    def __init__(self, model: Path, lora: Path | None = None):
        from tuneforge.export.parity import open_gguf

        for path in (model, lora):
            if path is not None and not Path(path).is_file():
                raise TuneforgeError(f"{path}: no such GGUF file")
        self.llm = open_gguf(Path(model), Path(lora) if lora else None)

    def messages(self, prompt: str | list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def options(self, settings: Any) -> dict[str, Any]:
        sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.temperature > 0 else {
            "temperature": 0.0, "top_k": 1}
        return {"max_tokens": settings.max_new_tokens, **sampling}

    def complete(self, prompt: Any, settings: Any, *, system: str | None = None) -> str:
        reply = self.llm.create_chat_completion(messages=self.messages(prompt, system), **self.options(settings))
        return reply["choices"][0]["message"]["content"].strip()

    def stream(self, prompt: Any, settings: Any, *, system: str | None = None) -> Iterator[str]:
        chunks = self.llm.create_chat_completion(messages=self.messages(prompt, system), stream=True,
                                                 **self.options(settings))
        for chunk in chunks:
            piece = chunk["choices"][0].get("delta", {}).get("content")
            if piece:
                yield piece
