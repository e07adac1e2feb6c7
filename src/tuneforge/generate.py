"""Text generation from a run or checkpoint: greedy by default, stopping at the end-of-turn token the model was
trained to emit. Batches are padded on the left so every row continues from its own last token. A LoRA model
generates through a copy with its adapter folded into the weights (tuneforge.models.inference), built on first use
and kept; the unmerged model stays for the base (adapters off) and for other adapters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge.data.causal import ROLES
from tuneforge.data.records import read_records
from tuneforge.errors import DataError, TuneforgeError, where
from tuneforge.rundir import CheckpointMeta


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens reached)
    new_tokens: int
    token_ids: list[int] = field(default_factory=list)  # the answer's ids (the API's logprobs score them)
    stop_token: int | None = None  # the token that ended it, where one did


class Continuation(str):
    """A prompt continued as the text it is, never wrapped in a chat template (OpenAI's /v1/completions), even for a
    run trained on chats."""


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    batch_size: int = 8
    stop_strings: list[str] = field(default_factory=list)  # generation also ends at any of these texts

    def kwargs(self) -> dict[str, Any]:
        stops = {"stop_strings": self.stop_strings} if self.stop_strings else {}
        if self.temperature <= 0:
            return {"do_sample": False, **stops}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, **stops}


class Generator:
    """A loaded model ready to complete prompts the way its run was trained (chat template or plain text)."""

    def __init__(self, model: Any, tokenizer: Any, meta: CheckpointMeta, *, fold_adapter: bool = True,
                 pack_bf16: bool | None = None):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.fold_adapter = fold_adapter  # False: generate through PEFT's unmerged layers (benchmarks compare)
        self.pack_bf16 = pack_bf16  # None: bf16 inference weights where the CPU computes bf16 natively
        self.tokenizer.padding_side = "left"
        self.stop_ids = list(meta.stop_token_ids or [tokenizer.eos_token_id])
        self.chat = meta.shape == "chat"
        self._folded: dict[tuple[str, ...], Any] = {}  # active adapters -> folded copy (None: not foldable)

    @classmethod
    def from_path(cls, path: str | Path) -> Generator:
        from tuneforge.models.loading import load_checkpoint

        loaded = load_checkpoint(path, needs="generates")
        return cls(loaded.model, loaded.tokenizer, loaded.meta)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def render(self, prompt: str | list[dict[str, str]], system: str | None = None) -> str:
        """The exact text the model sees: chat runs get the chat template with the assistant turn opened."""
        if system and not self.chat:
            raise TuneforgeError(f"a system message (--system) needs a chat run; this run was trained on "
                                 f"{self.meta.shape} rows, which have none: drop --system")
        if isinstance(prompt, Continuation) or (isinstance(prompt, str) and not self.chat):
            return prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template's own checks (role order, ...) raise jinja2 errors
            roles = ", ".join(str(m.get("role")) for m in messages)
            raise DataError(f"the chat template refused messages with roles [{roles}]: {exc}") from None

    def encode(self, texts: list[str]) -> Any:
        # Chat templates already hold BOS and friends; plain prompts get the tokenizer's own special tokens.
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat)

    @torch.no_grad()
    def complete(self, prompts: list[Any], settings: GenerationSettings, *, system: str | None = None,
                 use_base: bool = False, constraint: Any = None) -> list[Completion]:
        """Answers to `prompts`, in batches. `constraint` (tuneforge.constrain) restricts every answer to its grammar."""
        results: list[Completion] = []
        for start in range(0, len(prompts), settings.batch_size):
            texts = [self.render(p, system) for p in prompts[start : start + settings.batch_size]]
            batch = self.encode(texts).to(self.device)
            with self.base_only(use_base):
                kwargs = self.generate_kwargs(settings, constraint, len(texts))
                output = self.runner(use_base).generate(**batch, **kwargs)
            results.extend(self.decode(output[:, batch["input_ids"].shape[1] :]))
        return results

    def stream(self, prompt: Any, settings: GenerationSettings, *, system: str | None = None,
               use_base: bool = False, constraint: Any = None, outcome: list[Completion] | None = None) -> Iterator[str]:
        """Yield the completion piece by piece as it is generated; `outcome` receives the whole Completion (finish
        reason, token count) once generation ends. Closing the iterator early (a client that left) stops the
        generation at its next token rather than letting it run on in the background."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancelled = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        batch = self.encode([self.render(prompt, system)])
        runner = self.runner(use_base)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.no_grad(), self.base_only(use_base):
                    output = runner.generate(**batch, **self.generate_kwargs(settings, constraint, 1),
                                                 streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancelled()]))
                if outcome is not None:
                    outcome.extend(self.decode(output[:, batch["input_ids"].shape[1] :]))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            cancelled.set()
            thread.join()
        if failure:
            raise failure[0]

    def generate_kwargs(self, settings: GenerationSettings, constraint: Any = None, rows: int = 1) -> dict[str, Any]:
        # use_cache: training may have turned the model's cache off (gradient checkpointing); generation needs it.
        kwargs = {"max_new_tokens": settings.max_new_tokens, "eos_token_id": self.stop_ids, "use_cache": True,
                  "pad_token_id": self.tokenizer.pad_token_id, **settings.kwargs()}
        if settings.stop_strings:
            kwargs["tokenizer"] = self.tokenizer  # transformers matches stop strings on token text
        if constraint is not None:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([constraint.processor(self.tokenizer, rows, self.stop_ids)])
        return kwargs

    def runner(self, use_base: bool) -> Any:
        """The model that generates: the folded copy for the active adapter where one can be made."""
        if use_base or not self.has_adapter or not self.fold_adapter:
            return self.model
        from tuneforge.models.inference import inference_copy

        adapters = tuple(self.model.active_adapters)
        if adapters not in self._folded:
            self._folded[adapters] = inference_copy(self.model, self.pack_bf16)
        return self._folded[adapters] or self.model

    def base_only(self, use_base: bool) -> Any:
        import contextlib

        if not use_base:
            return contextlib.nullcontext()
        if not self.has_adapter:
            raise TuneforgeError("--compare-base needs a LoRA run (a full fine-tune has no separate base to switch to)")
        return self.model.disable_adapter()

    def decode(self, new_tokens: torch.Tensor) -> list[Completion]:
        completions = []
        for row in new_tokens.tolist():
            stop_at = next((i for i, token in enumerate(row) if token in self.stop_ids), None)
            kept = row[:stop_at] if stop_at is not None else [t for t in row if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            stop_token = row[stop_at] if stop_at is not None else None
            completions.append(Completion(text.strip(), "stop" if stop_at is not None else "length", len(kept),
                                          kept, stop_token))
        return completions


def read_prompt_rows(path: str | Path) -> list[tuple[Any, dict[str, Any]]]:
    """(prompt, row) pairs from a JSONL of chat `messages` or `prompt` rows."""
    path = Path(path)
    return [prompt_of(record.data, where(path, record.line)) for record in read_records(path, "input")]


def prompt_of(row: dict[str, Any], at: str) -> tuple[Any, dict[str, Any]]:
    """(prompt, row) for one chat `messages` or `prompt` row. A chat row that ends with the assistant's reply keeps
    that reply as the row's `reference` and is prompted with the turns before it; a completion is the reference of
    its prompt. `at` (file:line) locates errors."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise DataError(f"{at}: 'messages' must be a non-empty list of {{role, content}}")
        odd = next((m for m in messages if m["role"] not in ROLES or not isinstance(m["content"], str)), None)
        if odd is not None:
            raise DataError(f"{at}: message with role {odd['role']!r} needs a role in {', '.join(ROLES)} and text "
                            "content")
        if messages[-1]["role"] == "assistant":
            row = {**row, "reference": messages[-1]["content"]}
            messages = messages[:-1]
        if not messages:
            raise DataError(f"{at}: no user message to answer")
        return messages, row
    if isinstance(row.get("prompt"), str):
        if "completion" in row:
            row = {**row, "reference": row["completion"]}
        return row["prompt"], row
    raise DataError(f"{at}: row needs 'messages' or 'prompt' (keys found: {', '.join(sorted(row)) or 'none'})")
