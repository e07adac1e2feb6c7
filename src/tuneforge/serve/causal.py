"""The engines behind the generation endpoints: what the API asks of a model that generates, and the torch one.

A LoRA run is served unmerged over its base. Several LoRA runs of one base share that base in memory: the first
loads it with its adapter, the others add theirs to the same PEFT model (`load_adapter`), and each request switches
to its adapter under the replica's lock. The id `base` answers with the adapters switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.generate import Completion, GenerationSettings, Generator
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

    def prompt_tokens(self, prompt: Any) -> int:
        generator = self.generator
        return len(generator.tokenizer(generator.render(prompt), add_special_tokens=not generator.chat)["input_ids"])

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
