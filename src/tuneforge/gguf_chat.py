"""Generating with a GGUF model on the CPU through llama.cpp, with the chat template stored in the file.

llama.cpp runs in a child process (`tuneforge.native`): if it crashes, `generate --gguf` ends with one error line
naming the signal instead of dying silently, and a server answers 503 instead of losing its replica. The functions
below the class run in that child; it never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.native import NativeWorker


class GgufChat:
    """`json_schema` (JSON text; "{}" = any JSON value) constrains every answer through llama.cpp's grammar.
    `n_ctx` 0 takes the context the model was trained with; `n_threads` None: every CPU."""

    def __init__(self, model: Path, lora: Path | None = None, json_schema: str | None = None, *, n_ctx: int = 2048,
                 n_threads: int | None = None):
        from tuneforge.export.parity import require_llama_cpp

        for path in (model, lora):
            if path is not None and not Path(path).is_file():
                raise TuneforgeError(f"{path}: no such GGUF file")
        require_llama_cpp(load=False)
        self.json_schema = json_schema
        self.worker = NativeWorker("GGUF generation")
        self.context_length: int = self.worker.call(load, Path(model), Path(lora) if lora else None, n_ctx, n_threads)

    def complete(self, prompt: Any, settings: Any, *, system: str | None = None) -> str:
        return self.worker.call(answer, prompt, self.options(settings), system)["text"].strip()

    def stream(self, prompt: Any, settings: Any, *, system: str | None = None) -> Iterator[str]:
        for piece in self.worker.stream(answer_pieces, prompt, self.options(settings), system):
            if isinstance(piece, str):
                yield piece

    def options(self, settings: Any) -> dict[str, Any]:
        return sampling_options(settings, json.loads(self.json_schema) if self.json_schema is not None else None)

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> GgufChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sampling_options(settings: Any, schema: dict[str, Any] | None = None, *, seed: int | None = None) -> dict[str, Any]:
    """llama-cpp-python's keyword arguments for `settings` (a GenerationSettings); plain data for the child."""
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.temperature > 0 else {
        "temperature": 0.0, "top_k": 1}
    options: dict[str, Any] = {"max_tokens": settings.max_new_tokens, **sampling}
    if settings.stop_strings:
        options["stop"] = list(settings.stop_strings)
    if seed is not None:
        options["seed"] = seed
    if schema is not None:  # llama-cpp-python turns the schema into a GBNF grammar ({} = any JSON value)
        options["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
    return options


# What runs in the child process: one loaded model per child.
LOADED: dict[str, Any] = {}


def load(model: Path, lora: Path | None, n_ctx: int = 2048, n_threads: int | None = None) -> int:
    """Load the model; its context length in tokens."""
    from tuneforge.export.parity import open_gguf

    LOADED["llm"] = llm = open_gguf(model, lora, n_ctx=n_ctx, n_threads=n_threads)
    return int(llm.n_ctx())


def messages_for(prompt: str | list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def run_request(prompt: Any, options: dict[str, Any], system: str | None, raw: bool, stream: bool) -> Any:
    llm = LOADED["llm"]
    if raw:  # a plain text continuation (/v1/completions); options carry no chat-only keys then
        options = {k: v for k, v in options.items() if k != "response_format"}
        return llm.create_completion(prompt, stream=stream, **options)
    return llm.create_chat_completion(messages=messages_for(prompt, system), stream=stream, **options)


def answer(prompt: Any, options: dict[str, Any], system: str | None = None, raw: bool = False) -> dict[str, Any]:
    """{"text", "finish_reason", "completion_tokens"}; `raw`: `prompt` is text continued as is, no chat template."""
    reply = run_request(prompt, options, system, raw, stream=False)
    choice = reply["choices"][0]
    text = choice["text"] if raw else choice["message"]["content"]
    return {"text": text or "", "finish_reason": choice.get("finish_reason") or "length",
            "completion_tokens": int(reply["usage"]["completion_tokens"])}


def answer_pieces(prompt: Any, options: dict[str, Any], system: str | None = None,
                  raw: bool = False) -> Iterator[Any]:
    """Text pieces as they are generated, then one dict {"finish_reason", "completion_tokens"}."""
    finish, tokens = "length", 0
    for chunk in run_request(prompt, options, system, raw, stream=True):
        choice = chunk["choices"][0]
        piece = choice.get("text") if raw else choice.get("delta", {}).get("content")
        if piece:
            tokens += 1
            yield piece
        finish = choice.get("finish_reason") or finish
    yield {"finish_reason": finish, "completion_tokens": tokens}


def prompt_tokens(prompt: Any, system: str | None = None, raw: bool = False) -> int:
    """How many tokens the prompt takes once the chat template is applied (llama-cpp-python's own formatter)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = LOADED["llm"]
    if raw:
        return len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise TuneforgeError("this GGUF file holds no chat template; send plain prompts to /v1/completions")
    formatter = Jinja2ChatFormatter(template=template, eos_token=llm._model.token_get_text(llm.token_eos()),  # noqa: SLF001
                                    bos_token=llm._model.token_get_text(llm.token_bos()))  # noqa: SLF001
    rendered = formatter(messages=messages_for(prompt, system))
    return len(llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True))


def has_chat_template() -> bool:
    return bool(LOADED["llm"].metadata.get("tokenizer.chat_template"))
