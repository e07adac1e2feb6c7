"""What a serving replica holds: the models it answers for, by model id, loaded once.

A LoRA run is served unmerged over its base. Several LoRA runs of one base share that base in memory: the first
loads it with its adapter, the others add theirs to the same PEFT model (`load_adapter`), and each request switches
to its adapter under the replica's lock. The id `base` answers with the adapters switched off.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.generate import Completion, GenerationSettings, Generator
from tuneforge.rundir import CheckpointMeta, resolve_checkpoint

BASE_ID = "base"


def model_id_of(path: str | Path) -> str:
    """A run's id is its directory name; a checkpoint inside a run (runs/x/best) is named after the run."""
    path = Path(path).resolve()
    if path.name == "best" or path.name.startswith("step-") or path.parent.name == "checkpoints":
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run.name
    return path.name


@dataclass
class CausalModel:
    """One servable causal model: a generator and, for an adapter sharing a base, the adapter to switch to."""

    model_id: str
    generator: Generator
    adapter: str | None = None  # PEFT adapter name; None: a merged or full model
    use_base: bool = False  # the `base` id: adapters off
    context_length: int = 2048

    @property
    def tokenizer(self) -> Any:
        return self.generator.tokenizer


@dataclass
class Classifier:
    model_id: str
    predictor: Any  # tuneforge.predict.Predictor


@dataclass
class Job:
    """One completion request, as the batcher sees it."""

    served: CausalModel
    prompt: Any
    settings: GenerationSettings
    seed: int | None = None
    constraint: Any = None

    def batch_key(self, index: int) -> tuple:
        """Requests with equal keys generate together; a grammar or a seeded draw keeps a request to itself."""
        if self.constraint is not None or (self.seed is not None and self.settings.temperature > 0):
            return ("alone", index)
        s = self.settings
        return (self.served.model_id, s.max_new_tokens, s.temperature, s.top_p, tuple(s.stop_strings))


@dataclass
class Engines:
    """Every model a replica serves, and the lock that keeps one generation at a time on its CPUs."""

    causal: dict[str, CausalModel] = field(default_factory=dict)
    classifiers: dict[str, Classifier] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> list[str]:
        return [*self.causal, *self.classifiers]

    # -- generation ---------------------------------------------------------------------------------------------

    def stream(self, served: CausalModel, prompt: Any, settings: GenerationSettings, *, seed: int | None,
               constraint: Any, outcome: list[Completion]) -> Iterator[str]:
        """Pieces of the answer as they come (`outcome` gets the Completion at the end); the lock is held until
        the stream ends or is closed."""
        with self.lock:
            self.select(served, seed)
            yield from served.generator.stream(prompt, settings, use_base=served.use_base, constraint=constraint,
                                               outcome=outcome)

    def complete_many(self, jobs: list[Job]) -> list[Completion]:
        """Answers to several requests, those that can share a generation run as one left-padded batch: same model,
        same settings, greedy or unseeded, no grammar. The others run one by one."""
        answers: dict[int, Completion] = {}
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.batch_key(index), []).append(index)
        for members in groups.values():
            first = jobs[members[0]]
            settings = replace(first.settings, batch_size=len(members))
            with self.lock:
                self.select(first.served, first.seed)
                completions = first.served.generator.complete([jobs[i].prompt for i in members], settings,
                                                              use_base=first.served.use_base,
                                                              constraint=first.constraint)
            answers.update(zip(members, completions, strict=True))
        return [answers[index] for index in range(len(jobs))]

    @staticmethod
    def select(served: CausalModel, seed: int | None) -> None:
        if served.adapter is not None and not served.use_base:
            served.generator.model.set_adapter(served.adapter)
        if seed is not None:
            torch.manual_seed(seed)

    def prompt_tokens(self, served: CausalModel, prompt: Any) -> int:
        return len(served.tokenizer(served.generator.render(prompt), add_special_tokens=not served.generator.chat)
                   ["input_ids"])


def planned_models(paths: list[str | Path]) -> list[tuple[str | Path, str, CheckpointMeta, Any]]:
    """(path, model id, metadata, task) for each path, checked: a task that can be served, ids unique."""
    planned: list[tuple[str | Path, str, CheckpointMeta, Any]] = []
    for path in paths:
        model_id = model_id_of(path)
        if model_id == BASE_ID or any(model_id == seen for _, seen, _, _ in planned):
            raise ConfigError(f"{path}: a model named {model_id!r} is already served; give each run its own "
                              "directory name")
        meta = CheckpointMeta.read(resolve_checkpoint(path))
        planned.append((path, model_id, meta, servable_task(path, meta)))
    return planned


def load_engines(paths: list[str | Path]) -> Engines:
    """Load every run, checkpoint or merged export in `paths` (ids must be unique)."""
    engines = Engines()
    shared: dict[str, CausalModel] = {}  # base model source -> the first LoRA model loaded over it
    for path, model_id, meta, task in planned_models(paths):
        if task.classifies_texts:
            engines.classifiers[model_id] = Classifier(model_id, task.load(path))
        else:
            engines.causal[model_id] = load_causal(path, model_id, meta, shared)
    first_lora = next(iter(shared.values()), None)
    if first_lora is not None:
        engines.causal[BASE_ID] = CausalModel(BASE_ID, first_lora.generator, use_base=True,
                                              context_length=first_lora.context_length)
    return engines


def servable_task(path: str | Path, meta: CheckpointMeta) -> Any:
    from tuneforge.tasks import get_task

    task = get_task(meta.task)
    if not (task.generates or task.classifies_texts):
        raise TuneforgeError(f"{path}: serving a {meta.task} run is not supported (it neither generates nor "
                             "classifies texts)")
    return task


def load_causal(path: str | Path, model_id: str, meta: CheckpointMeta, shared: dict[str, CausalModel]) -> CausalModel:
    from tuneforge.models.loading import base_model_source

    if meta.lora:
        source = base_model_source(meta)
        host = shared.get(source)
        if host is not None:  # a second adapter over a base already in memory
            checkpoint = resolve_checkpoint(path)
            host.generator.model.load_adapter(str(checkpoint), adapter_name=model_id)
            from tuneforge.models.tokenizers import load_tokenizer

            tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=meta.trust_remote_code)
            generator = Generator(host.generator.model, tokenizer, meta)
            return CausalModel(model_id, generator, adapter=model_id, context_length=host.context_length)
        generator = Generator.from_path(path)
        served = CausalModel(model_id, generator, adapter="default", context_length=model_context(generator, meta))
        shared[source] = served
        return served
    generator = Generator.from_path(path)
    return CausalModel(model_id, generator, context_length=model_context(generator, meta))


def model_context(generator: Generator, meta: CheckpointMeta) -> int:
    """The longest sequence the model takes (its position embeddings), not the length it was fine-tuned at."""
    config = getattr(generator.model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or meta.context_length or 2048)
