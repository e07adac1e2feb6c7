"""What a serving replica holds: the models it answers for, by model id, loaded once, and the lock that keeps one
generation at a time on its CPUs. Runs, checkpoints and merged exports generate in torch (tuneforge.serve.causal),
GGUF files in llama.cpp (tuneforge.serve.gguf); classification runs answer /v1/classify, token classification runs
/v1/tag.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.generate import Completion, GenerationSettings
from tuneforge.logprobs import TokenScore
from tuneforge.rundir import CheckpointMeta, RunDir, resolve_checkpoint
from tuneforge.serve.causal import CausalModel, TorchModel, load_causal
from tuneforge.serve.gguf import gguf_model_id, is_gguf, load_gguf

BASE_ID = "base"


def model_id_of(path: str | Path) -> str:
    """A run's id is its directory name; a checkpoint inside a run (runs/x/best) is named after the run."""
    path = Path(path).resolve()
    run = RunDir.holding(path)
    return run.name if run else path.name


@dataclass
class Labeller:
    """An encoder run that labels texts instead of generating, in torch (a subclass's `kind` names its endpoint)."""

    model_id: str
    predictor: Any  # tuneforge.predict.Predictor for a Classifier, tuneforge.predict_tokens.Tagger for a Tagger
    engine = "torch"


@dataclass
class Classifier(Labeller):
    """A classification run: a label per text."""

    kind = "classify"

    @property
    def labels(self) -> list[str]:
        return list(self.predictor.labels)

    @property
    def context_length(self) -> int:
        return self.predictor.max_length


@dataclass
class Tagger(Labeller):
    """A token classification run: entity spans in a text."""

    kind = "tag"

    @property
    def labels(self) -> list[str]:
        """The entity types it finds: its tags without their scheme's prefixes (B-, I-, ...), "O" left out."""
        from tuneforge.data.tokens import check_tag

        return sorted({check_tag(tag, self.predictor.scheme)[1] for tag in self.predictor.labels} - {""})

    @property
    def context_length(self) -> int:
        return self.predictor.context_length  # a longer text is tagged in windows


@dataclass
class Job:
    """One completion request, as the batcher sees it."""

    served: CausalModel
    prompt: Any
    settings: GenerationSettings
    seed: int | None = None
    constraint: Any = None

    def batch_key(self, index: int) -> tuple:
        """Requests with equal keys generate together; a grammar or a seeded draw keeps a request to itself, as does
        an engine that generates one request at a time."""
        seeded = self.seed is not None and self.settings.temperature > 0
        if not self.served.batches or self.constraint is not None or seeded:
            return ("alone", index)
        s = self.settings
        return (self.served.model_id, s.max_new_tokens, s.temperature, s.top_p, tuple(s.stop_strings))


@dataclass
class Engines:
    """Every model a replica serves, and the lock that keeps one generation at a time on its CPUs."""

    causal: dict[str, CausalModel] = field(default_factory=dict)
    classifiers: dict[str, Classifier] = field(default_factory=dict)
    taggers: dict[str, Tagger] = field(default_factory=dict)
    samples: dict[str, Path] = field(default_factory=dict)  # model id -> its run's validation_samples.jsonl
    lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self) -> dict[str, CausalModel | Classifier | Tagger]:
        """Every model by id, whichever endpoint answers it (its `kind`)."""
        return {**self.causal, **self.classifiers, **self.taggers}

    def ids(self) -> list[str]:
        return list(self.served())

    # -- generation ---------------------------------------------------------------------------------------------

    def stream(self, served: CausalModel, prompt: Any, settings: GenerationSettings, *, seed: int | None,
               constraint: Any, outcome: list[Completion]) -> Iterator[str]:
        """Pieces of the answer as they come (`outcome` gets the Completion at the end); the lock is held until
        the stream ends or is closed."""
        with self.lock:
            yield from served.stream(prompt, settings, seed=seed, constraint=constraint, outcome=outcome)

    def score(self, served: CausalModel, ids: list[int], start: int, top: int) -> list[TokenScore]:
        """Log-probabilities of ids[start:] (one forward pass, under the lock like a generation)."""
        with self.lock:
            return served.score(ids, start, top)

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
                completions = first.served.complete([jobs[i].prompt for i in members], settings, seed=first.seed,
                                                     constraint=first.constraint)
            answers.update(zip(members, completions, strict=True))
        return [answers[index] for index in range(len(jobs))]

    def close(self) -> None:
        for served in self.causal.values():
            close = getattr(served, "close", None)
            if close:
                close()


@dataclass(frozen=True)
class Planned:
    """One model to serve, checked before any replica loads it."""

    path: Path
    model_id: str
    meta: CheckpointMeta | None = None  # None: a GGUF file
    task: Any = None
    gguf_lora: Path | None = None

    @property
    def shares_base(self) -> bool:
        """A LoRA run that generates: the `base` id is served beside it."""
        return self.meta is not None and self.meta.lora and self.task.spec.generates


def planned_models(paths: list[str | Path], gguf_lora: str | Path | None = None) -> list[Planned]:
    """Each path's model id, metadata and task, checked: a task that can be served, files present, ids unique."""
    ggufs = [path for path in paths if is_gguf(path)]
    if gguf_lora is not None and len(ggufs) != 1:
        raise ConfigError(f"--lora {gguf_lora}: a GGUF adapter applies to one GGUF model; name exactly one .gguf "
                          f"file to serve (given {len(ggufs)})")
    planned: list[Planned] = []
    for path in paths:
        if is_gguf(path):
            for file in (path, gguf_lora):
                if file is not None and not Path(file).is_file():
                    raise ConfigError(f"{file}: no such GGUF file")
            item = Planned(Path(path), gguf_model_id(path, gguf_lora), gguf_lora=Path(gguf_lora) if gguf_lora else None)
        else:
            meta = CheckpointMeta.read(resolve_checkpoint(path))
            item = Planned(Path(path), model_id_of(path), meta, servable_task(path, meta))
        if item.model_id == BASE_ID or any(item.model_id == seen.model_id for seen in planned):
            raise ConfigError(f"{path}: a model named {item.model_id!r} is already served; give each run its own "
                              "directory name")
        planned.append(item)
    return planned


def served_ids(planned: list[Planned]) -> list[str]:
    return list(served_kinds(planned))


def served_kinds(planned: list[Planned]) -> dict[str, str]:
    """Each id the replicas will serve and its kind (chat, classify or tag: the endpoint that answers it)."""
    kinds = {item.model_id: planned_kind(item) for item in planned}
    return {**kinds, **({BASE_ID: CausalModel.kind} if any(item.shares_base for item in planned) else {})}


def planned_kind(item: Planned) -> str:
    if item.meta is None or item.task.spec.generates:  # a GGUF file, or a run that generates
        return CausalModel.kind
    return Classifier.kind if item.task.spec.classifies_texts else Tagger.kind


def load_engines(paths: list[str | Path], *, gguf_lora: str | Path | None = None, threads: int = 1) -> Engines:
    """Load every run, checkpoint, merged export or GGUF file in `paths` (ids must be unique); `threads`: the CPU
    threads llama.cpp generates with."""
    engines = Engines()
    shared: dict[str, TorchModel] = {}  # base model source -> the first LoRA model loaded over it
    for item in planned_models(paths, gguf_lora):
        if item.meta is None:
            engines.causal[item.model_id] = load_gguf(item.path, item.gguf_lora, threads)
        elif item.task.spec.generates:
            engines.causal[item.model_id] = load_causal(item.path, item.model_id, item.meta, shared, item.task.load)
        elif item.task.spec.classifies_texts:
            engines.classifiers[item.model_id] = Classifier(item.model_id, item.task.load(item.path))
        else:
            engines.taggers[item.model_id] = Tagger(item.model_id, item.task.load(item.path))
        samples = validation_samples_of(item.path) if item.meta is not None else None
        if samples is not None:
            engines.samples[item.model_id] = samples
    first_lora = next(iter(shared.values()), None)
    if first_lora is not None:
        engines.causal[BASE_ID] = TorchModel(BASE_ID, first_lora.generator, use_base=True,
                                             context_length=first_lora.context_length)
    return engines


def validation_samples_of(path: Path) -> Path | None:
    """The validation rows kept with the run a served path is (or is a checkpoint of), if it has them."""
    run = RunDir(path) if RunDir(path).is_run() else RunDir.holding(path.resolve())
    return run.samples_file if run is not None and run.samples_file.is_file() else None


def servable_task(path: str | Path, meta: CheckpointMeta) -> Any:
    from tuneforge.tasks import get_task

    task = get_task(meta.task)
    if not task.spec.serves:
        raise TuneforgeError(f"{path}: serving a {meta.task} run is not supported (it does not generate, classify "
                             "texts or tag words)")
    return task
