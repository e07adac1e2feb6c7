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
    record_generated(llm)
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
    ids, stop_token = generated_ids()
    return {"text": text or "", "finish_reason": choice.get("finish_reason") or "length",
            "completion_tokens": int(reply["usage"]["completion_tokens"]), "token_ids": ids, "stop_token": stop_token}


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


def prompt_ids(prompt: Any, system: str | None = None, raw: bool = False) -> list[int]:
    """The ids the model reads once the chat template is applied (llama-cpp-python's own formatter); `raw`: the
    text as it is."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = LOADED["llm"]
    if raw:
        return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise TuneforgeError("this GGUF file holds no chat template; send plain prompts to /v1/completions")
    formatter = Jinja2ChatFormatter(template=template, eos_token=token_text(llm.token_eos()),
                                    bos_token=token_text(llm.token_bos()))
    rendered = formatter(messages=messages_for(prompt, system))
    return llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)


def token_text(token: int) -> str | None:
    return LOADED["llm"]._model.token_get_text(token) if token >= 0 else None


def tokenize(text: str, special: bool) -> list[int]:
    """Special tokens written in the text are read as such, as Hugging Face tokenizers do."""
    return LOADED["llm"].tokenize(text.encode("utf-8"), add_bos=special, special=True)


def detokenize(ids: list[int]) -> str:
    return LOADED["llm"].detokenize(ids, special=True).decode("utf-8", errors="replace")


def token_bytes(ids: list[int]) -> list[bytes]:
    return [LOADED["llm"].detokenize([token], special=True) for token in ids]


def special_tokens() -> dict[str, str | None]:
    llm = LOADED["llm"]
    return {"bos_token": token_text(llm.token_bos()), "eos_token": token_text(llm.token_eos()), "pad_token": None,
            "chat_template": llm.metadata.get("tokenizer.chat_template")}


def record_generated(llm: Any) -> None:
    """Keep the ids of each generation in LOADED["generated"]: llama-cpp-python returns text, whose tokenization is
    not always what the model generated (a token ' $\\' tokenizes back as two), and logprobs must score the tokens
    the model chose. Its completion loop iterates `self.generate`, so the instance's own is wrapped."""
    original = llm.generate

    def generate(*args: Any, **kwargs: Any) -> Iterator[int]:
        LOADED["generated"] = generated = []
        for token in original(*args, **kwargs):
            generated.append(token)
            yield token

    llm.generate = generate


def generated_ids() -> tuple[list[int], int | None]:
    """The last generation's answer ids, and the end-of-generation token that stopped it (None where none did)."""
    import llama_cpp

    llm, ids = LOADED["llm"], list(LOADED.get("generated", []))
    if ids and llama_cpp.llama_vocab_is_eog(llm._model.vocab, ids[-1]):
        return ids[:-1], ids[-1]
    return ids, None


def score(ids: list[int], start: int, top: int) -> list[Any]:
    """Log-probabilities of ids[start:] (tuneforge.logprobs). llama-cpp-python keeps every position's logits only
    for a model opened with logits_all, which costs n_ctx x vocabulary floats for its whole life; this asks llama.cpp
    for every position's logits in each batch of this one evaluation instead."""
    import numpy as np

    from tuneforge.logprobs import score_rows

    llm = LOADED["llm"]
    if len(ids) > llm.n_ctx():
        raise TuneforgeError(f"{len(ids)} tokens to score; the model's context holds {llm.n_ctx()}")
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    first_row = max(start - 1, 0)
    rows = []
    for begin in range(0, len(ids), llm.n_batch):
        batch = ids[begin : begin + llm.n_batch]
        llm._batch.set_batch(batch=batch, n_past=begin, logits_all=True)
        llm._ctx.decode(llm._batch)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch), llm.n_vocab()))
        wanted = max(first_row - begin, 0)
        if wanted < len(batch):
            rows.append(logits[wanted:].copy())
    llm.reset()  # the next completion evaluates its prompt afresh
    return score_rows(ids, np.concatenate(rows), first_row, start, top)


def has_chat_template() -> bool:
    return bool(LOADED["llm"].metadata.get("tokenizer.chat_template"))
