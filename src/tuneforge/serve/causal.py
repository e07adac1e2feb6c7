"""The engines behind the generation endpoints: what the API asks of a model that generates, and the torch one.

A LoRA run is served unmerged over its base. Several LoRA runs of one base share that base in memory: the first
loads it with its adapter, the others add theirs to the same PEFT model (`load_adapter`), and each request switches
to its adapter under the replica's lock. The id `base` answers with the adapters switched off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.generate import Completion, Continuation, GenerationSettings, Generator
from tuneforge.logprobs import TokenScore, score_rows
from tuneforge.rundir import CheckpointMeta, resolve_checkpoint


class CausalModel:
    """What the API needs of a model that generates, whichever engine runs it (torch here, llama.cpp in
    tuneforge.serve.gguf)."""

    model_id: str
    context_length: int
    kind = "chat"  # the endpoints that answer it: /v1/chat/completions and /v1/completions
    engine: str  # what generates: "torch" or "llama.cpp"
    batches = False  # whether requests may generate together as one batch

    @property
    def system_prompt(self) -> str | None:
        return None

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON Schema inferred from the run's training targets (response_format name `answer_schema`)."""
        return None

    def prompt_tokens(self, prompt: Any) -> int:
        return len(self.prompt_ids(prompt))

    def prompt_ids(self, prompt: Any) -> list[int]:
        """The ids the model reads for `prompt`: a chat's messages through the chat template, a Continuation as it
        is, a list of ids as they are."""
        raise NotImplementedError

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """`text`'s ids; `special`: with the tokens the tokenizer adds around a text (BOS, ...)."""
        raise NotImplementedError

    def detokenize(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        """Each token's own bytes (a token may hold part of a character)."""
        raise NotImplementedError

    def special_tokens(self) -> dict[str, str | None]:
        """The tokenizer's bos, eos and pad tokens as text, and its chat template (lm-eval's /tokenizer_info)."""
        raise NotImplementedError

    @functools.cached_property
    def tokenizer_identity(self) -> tuple:
        """What tells two tokenizers apart (the /tokenize endpoints answer for several models only when they share
        one); a served model's tokenizer never changes, so it is worked out once."""
        return (tuple(sorted((k, v or "") for k, v in self.special_tokens().items())),
                tuple(self.tokenize("tuneforge tokenizer identity: ça, 数字 1234", special=True)))

    def score(self, ids: list[int], start: int, top: int) -> list[TokenScore]:
        """Log-probabilities of ids[start:], each given the ids before it, and the `top` likeliest at each."""
        raise NotImplementedError

    def complete(self, prompts: list[Any], settings: GenerationSettings, *, seed: int | None,
                 constraint: Any) -> list[Completion]:
        raise NotImplementedError

    def stream(self, prompt: Any, settings: GenerationSettings, *, seed: int | None, constraint: Any,
               outcome: list[Completion]) -> Iterator[str]:
        raise NotImplementedError


@dataclass
class TorchModel(CausalModel):
    """A run, checkpoint or merged export in torch; for an adapter sharing a base, the adapter to switch to."""

    model_id: str
    generator: Generator
    adapter: str | None = None  # PEFT adapter name; None: a merged or full model
    use_base: bool = False  # the `base` id: adapters off
    context_length: int = 2048
    engine = "torch"
    batches = True

    @property
    def system_prompt(self) -> str | None:
        # `base` is no run: the first LoRA run's prompt would make its answers depend on which run loaded first
        return None if self.use_base else self.generator.meta.system_prompt

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        return None if self.use_base else self.generator.meta.answer_schema

    def prompt_ids(self, prompt: Any) -> list[int]:
        if is_token_ids(prompt):
            return list(prompt)
        generator = self.generator
        return generator.tokenizer(generator.render(prompt), add_special_tokens=not generator.chat)["input_ids"]

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return self.generator.tokenizer(text, add_special_tokens=special)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.generator.tokenizer.decode(ids)

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        return [self.generator.tokenizer.decode([token]).encode("utf-8") for token in ids]

    def special_tokens(self) -> dict[str, str | None]:
        tokenizer = self.generator.tokenizer
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        return {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                "chat_template": template}

    @torch.no_grad()
    def score(self, ids: list[int], start: int, top: int) -> list[TokenScore]:
        self.select(None)
        generator = self.generator
        first_row = max(start - 1, 0)  # only the rows that predict ids[start:] leave the model
        with generator.base_only(self.use_base):
            output = generator.runner(self.use_base)(input_ids=torch.tensor([ids], device=generator.device),
                                                     logits_to_keep=len(ids) - first_row, use_cache=False)
        return score_rows(ids, output.logits[0].float().cpu().numpy(), first_row, start, top)

    def complete(self, prompts: list[Any], settings: GenerationSettings, *, seed: int | None,
                 constraint: Any) -> list[Completion]:
        self.select(seed)
        return self.generator.complete(prompts, settings, use_base=self.use_base, constraint=constraint)

    def stream(self, prompt: Any, settings: GenerationSettings, *, seed: int | None, constraint: Any,
               outcome: list[Completion]) -> Iterator[str]:
        self.select(seed)
        yield from self.generator.stream(prompt, settings, use_base=self.use_base, constraint=constraint,
                                         outcome=outcome)

    def select(self, seed: int | None) -> None:
        if self.adapter is not None and not self.use_base:
            self.generator.model.set_adapter(self.adapter)
        if seed is not None:
            torch.manual_seed(seed)



def is_token_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(item, int) for item in prompt)


def as_text(served: CausalModel, prompt: Any) -> Any:
    """What generates from a prompt: token ids as the text they decode to, continued as it is."""
    return Continuation(served.detokenize(prompt)) if is_token_ids(prompt) else prompt


def load_causal(path: str | Path, model_id: str, meta: CheckpointMeta, shared: dict[str, TorchModel],
                load: Callable[[str | Path], Generator]) -> TorchModel:
    """A run served in torch, loaded by its task (`load`); a LoRA run over a base already served by another run
    adds its adapter to that model instead of loading the base again."""
    from tuneforge.models.loading import base_model_source

    if meta.lora:
        source = base_model_source(meta)
        host = shared.get(source)
        if host is not None:  # a second adapter over a base already in memory
            checkpoint = resolve_checkpoint(path)
            # PEFT's own name, not the model id: ids are directory names, and a dot or a piece of PEFT's `lora_`
            # prefix in an adapter name breaks or warns in PEFT
            adapter = f"served{len(host.generator.model.peft_config)}"
            host.generator.model.load_adapter(str(checkpoint), adapter_name=adapter)
            from tuneforge.models.tokenizers import load_tokenizer

            tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=meta.trust_remote_code)
            generator = Generator(host.generator.model, tokenizer, meta)
            return TorchModel(model_id, generator, adapter=adapter, context_length=host.context_length)
        generator = load(path)
        served = TorchModel(model_id, generator, adapter="default", context_length=model_context(generator, meta))
        shared[source] = served
        return served
    generator = load(path)
    return TorchModel(model_id, generator, context_length=model_context(generator, meta))


def model_context(generator: Generator, meta: CheckpointMeta) -> int:
    """The longest sequence the model takes (its position embeddings), not the length it was fine-tuned at."""
    config = getattr(generator.model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or meta.context_length or 2048)
