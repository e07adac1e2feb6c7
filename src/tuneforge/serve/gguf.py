"""Serving a GGUF file (optionally with a GGUF LoRA adapter) through llama.cpp.

llama.cpp runs in a child process of the replica (tuneforge.native): a crash there fails the request in flight
with a 503 and a fresh child is started for the next one, instead of taking the replica down. llama.cpp generates
one sequence at a time here, so requests to a GGUF model are never batched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge import gguf_chat
from tuneforge.errors import TuneforgeError
from tuneforge.generate import Completion, Continuation, GenerationSettings
from tuneforge.logprobs import TokenScore
from tuneforge.native import NativeCrash
from tuneforge.rundir import RunDir
from tuneforge.serve.causal import CausalModel, is_token_ids

GGUF_SUFFIX = ".gguf"


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(GGUF_SUFFIX)


def gguf_model_id(model: str | Path, lora: str | Path | None = None) -> str:
    """Named after the file that makes the model what it is (the adapter when there is one); a file in a run's
    export folder (RUN/export/model-q8_0.gguf) is named after the run."""
    path = Path(lora or model).resolve()
    run = RunDir.of_file(path)
    if run and path.parent == run.export_dir:
        return f"{run.name}-gguf"
    return path.stem


def export_meta(model: str | Path, lora: str | Path | None) -> Any:
    """The checkpoint metadata of the run a GGUF was exported from (its system prompt, which its Modelfile sets
    too, and its answer schema), or None for a GGUF from elsewhere."""
    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint

    run = RunDir.of_file(Path(lora or model).resolve())
    if run is None:
        return None
    try:
        return CheckpointMeta.read(resolve_checkpoint(run.path))
    except TuneforgeError:
        return None  # the run's checkpoints were removed; the GGUF still serves


@dataclass
class GgufModel(CausalModel):
    model_id: str
    model_path: Path
    lora_path: Path | None
    threads: int
    context_length: int = 0
    system: str | None = None
    schema: dict[str, Any] | None = None
    engine = "llama.cpp"

    def __post_init__(self) -> None:
        self.chat: gguf_chat.GgufChat | None = None
        self.pipe = threading.Lock()  # one call or stream at a time on the child's pipe (requests come from threads)
        self.start()

    def start(self) -> None:
        # n_ctx 0: the context the model was trained with (every request is checked against it).
        self.chat = gguf_chat.GgufChat(self.model_path, self.lora_path, n_ctx=0, n_threads=self.threads)
        self.context_length = self.chat.context_length
        self.raw = not self.chat.worker.call(gguf_chat.has_chat_template)

    @property
    def system_prompt(self) -> str | None:
        return self.system

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        return self.schema

    def prompt_ids(self, prompt: Any) -> list[int]:
        if is_token_ids(prompt):
            return list(prompt)
        return self.call(gguf_chat.prompt_ids, *self.request(prompt))

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return self.call(gguf_chat.tokenize, text, special)

    def detokenize(self, ids: list[int]) -> str:
        return self.call(gguf_chat.detokenize, ids)

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        return self.call(gguf_chat.token_bytes, ids)

    def special_tokens(self) -> dict[str, str | None]:
        return self.call(gguf_chat.special_tokens)

    def score(self, ids: list[int], start: int, top: int) -> list[TokenScore]:
        return self.call(gguf_chat.score, ids, start, top)

    def request(self, prompt: Any) -> tuple[Any, None, bool]:
        """The child's (prompt, system, raw): a Continuation goes as plain text (the child never imports
        tuneforge.generate, which imports torch), continued as it is."""
        if isinstance(prompt, Continuation):
            return str(prompt), None, True
        return prompt, None, self.raw

    def complete(self, prompts: list[Any], settings: GenerationSettings, *, seed: int | None,
                 constraint: Any) -> list[Completion]:
        options = self.options(settings, seed, constraint)
        replies = [self.call(gguf_chat.answer, *self.with_options(prompt, options)) for prompt in prompts]
        return [Completion(r["text"], r["finish_reason"], r["completion_tokens"], r["token_ids"], r["stop_token"])
                for r in replies]

    def with_options(self, prompt: Any, options: dict[str, Any]) -> tuple[Any, ...]:
        text, system, raw = self.request(prompt)
        return text, options, system, raw

    def stream(self, prompt: Any, settings: GenerationSettings, *, seed: int | None, constraint: Any,
               outcome: list[Completion]) -> Iterator[str]:
        options = self.options(settings, seed, constraint)
        with self.pipe:
            yield from self.stream_locked(prompt, options, outcome)

    def stream_locked(self, prompt: Any, options: dict[str, Any], outcome: list[Completion]) -> Iterator[str]:
        text = ""
        try:
            for piece in self.worker().stream(gguf_chat.answer_pieces, *self.with_options(prompt, options)):
                if isinstance(piece, str):
                    text += piece
                    yield piece
                else:
                    outcome.append(Completion(text, piece["finish_reason"], piece["completion_tokens"]))
        except NativeCrash:
            self.restart()
            raise

    @staticmethod
    def options(settings: GenerationSettings, seed: int | None, constraint: Any) -> dict[str, Any]:
        schema = None if constraint is None else constraint.schema
        return gguf_chat.sampling_options(settings, schema, seed=seed)

    def worker(self) -> Any:
        if self.chat is None:
            self.start()
        return self.chat.worker

    def call(self, function: Any, *args: Any) -> Any:
        with self.pipe:
            try:
                return self.worker().call(function, *args)
            except NativeCrash:
                self.restart()
                raise

    def restart(self) -> None:
        """After a crash: the next request loads the model in a fresh child."""
        if self.chat is not None:
            self.chat.close()
        self.chat = None

    def close(self) -> None:
        self.restart()


def load_gguf(model: str | Path, lora: str | Path | None, threads: int) -> GgufModel:
    meta = export_meta(model, lora)
    return GgufModel(gguf_model_id(model, lora), Path(model), Path(lora) if lora else None, threads,
                     system=meta.system_prompt if meta else None, schema=meta.answer_schema if meta else None)
