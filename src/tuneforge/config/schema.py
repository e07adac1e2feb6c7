"""The config schema: `TrainConfig` and its nested settings (`TuneSettings`, `EvalGenerate`), the checks across
keys, and the helpers an error about a key is written with (the nearest valid key, the line of an entry). Keys
follow the Anyscale fine-tuning config (`model_id`, `train_path`, `lora_config`, ...) so existing files load.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from functools import lru_cache
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tuneforge.metrics import metric_mode
from tuneforge.scoring import GENERATION_METRICS

BUNDLED_MODEL_ALIASES = ("smollm2-135m-instruct", "minilm-l6")


class TuneSettings(BaseModel):
    """How a hyperparameter search runs (`tuneforge tune`)."""

    model_config = ConfigDict(extra="forbid")

    search_alg: Literal["basic", "optuna", "hyperopt"] = "basic"
    points_to_evaluate: list[dict[str, Any]] | None = None
    scheduler: Literal["fifo", "asha", "pbt"] = "fifo"
    grace_period: int = Field(1, ge=1, description="ASHA: evaluations before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="ASHA: most evaluations a trial runs (default: all)")
    perturbation_interval: int = Field(1, ge=1, description="PBT: evaluations between exploit/explore steps")
    hyperparam_mutations: dict[str, Any] | None = None
    num_samples: int = Field(1, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    time_budget_s: float | None = Field(None, gt=0)
    experiment_name: str | None = None
    lora_alpha_ratio: float | None = Field(
        None, gt=0, description="set every trial's lora_config.lora_alpha to this times its lora_config.r (tune --auto: "
        "2, so the update scale stays fixed while the rank is searched)")
    full_learning_rate_ratio: float | None = Field(
        None, gt=0, description="trials with fine_tuning: full use this times the sampled learning_rate (tune --auto: "
        "0.1: full fine-tuning wants about a tenth of LoRA's rates)")
    startup_trials: int | None = Field(None, ge=1, description="optuna: random trials before TPE models the results "
                                       "(default: Optuna's 10)")
    max_failures: int | None = Field(
        None, ge=-1, description="times a failed trial is started again, continuing its run from its last "
        "checkpoint (-1: no limit); default 0 on the Ray tuneforge starts, 3 on a cluster (--address)")


class EvalGenerate(BaseModel):
    """Generation at every validation event (causal runs): greedy answers to validation rows, scored against the
    rows' own answers (tuneforge.scoring)."""

    model_config = ConfigDict(extra="forbid")

    max_rows: int = Field(64, ge=1, description="validation rows answered (the first ones, the same every event)")
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(32, ge=1)
    any_json: bool = Field(False, description="constrain answers to one JSON value (any JSON)")
    json_schema: str | None = Field(None, description="constrain answers to this JSON Schema file")
    constrain: Literal["schema"] | None = Field(
        None, description="schema: constrain answers to the run's answer schema, inferred from the training targets "
        "when every one is a JSON object")


PREFERENCE_KEYS = ("loss_type", "beta", "label_smoothing", "simpo_gamma", "desirable_weight", "undesirable_weight",
                   "reference")
REFERENCE_FREE_LOSSES = ("orpo", "simpo")


class TrainConfig(BaseModel):
    """Everything one training run needs. Field descriptions double as the reference in the README."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- what to train -------------------------------------------------------------------------------------
    task: str = Field("causal_lm", description="causal_lm, classification, token_classification or preference "
                      "(tuneforge.taskspec lists them)")
    model_id: str = Field(description="local HF dir, hub id, or bundled alias (smollm2-135m-instruct, minilm-l6)")
    trust_remote_code: bool = Field(False, description="let the model's repo run its own Python code")
    load_in_4bit: bool = Field(False, description="QLoRA: load the base in 4-bit NF4 (bitsandbytes)")

    # --- data ------------------------------------------------------------------------------------------------
    train_path: str
    valid_path: str | None = None
    valid_split: float = Field(0.1, ge=0, lt=1, description="held-out share of train when valid_path is absent")
    streaming: bool | None = Field(
        None, description="tokenize train_path with Ray Data into Parquet shards and stream them to the workers "
        "(causal task); default: when its files add up to more than 256 MiB")
    context_length: int | None = Field(None, gt=0, description="default: longest row, capped at the model's limit")
    truncation: Literal["truncate", "refuse"] = Field("truncate", description="rows longer than context_length")
    padding: Literal["longest", "max_length"] = "longest"
    pad_to_multiple_of: int | None = Field(None, gt=0)
    padding_free: bool | None = Field(
        None, description="causal decoders: lay each micro-batch's rows end to end in one sequence, attention kept "
        "inside each row, so no pad token is computed (same loss as padded batches); default: on where the model "
        "supports it and padding is 'longest' without pad_to_multiple_of")
    group_by_length: bool = Field(
        False, description="batch rows of similar length together: less padding, but each batch then holds one "
        "kind of row; off by default, as in HF (one full-size extraction run lost held-out exact match with it)")
    train_on_inputs: bool = Field(False, description="also compute loss on prompt/user/system tokens")
    text_fields: list[str] | None = Field(None, description="classification: columns joined into the input text")
    label_field: str | None = Field(None, description="classification: the label column")
    class_weights: Literal["balanced"] | None = None
    tokens_field: str = Field("tokens", description="token_classification: the JSONL field of a sentence's words")
    tags_field: str = Field("tags", description="token_classification: the JSONL field of one tag per word")
    tag_scheme: Literal["IOB2", "IOBES"] = Field("IOB2", description="token_classification: the data's tag scheme")
    strict_tags: bool = Field(False, description="token_classification: refuse an I-X that continues no entity "
                              "(default: repair it to B-X, counted in the plan)")
    label_all_tokens: bool = Field(False, description="token_classification: label every subword of a word (default: "
                                   "the first only; the rest stay out of the loss)")
    window_overlap: int = Field(32, ge=0, description="token_classification: tokens shared by consecutive windows of "
                                "a sentence longer than context_length")

    # --- scale -----------------------------------------------------------------------------------------------
    num_devices: int = Field(1, ge=1, description="Ray Train workers (one per GPU, or CPU slices); a range "
                             "(`1..4` or `{min: 1, max: 4}`) lets a run that loses a node go on with fewer workers, "
                             "down to min (elastic): the global batch stays that of max workers")
    min_devices: int | None = Field(None, ge=1, description="elastic runs: the fewest workers the run goes on with "
                                    "(set by a num_devices range; default: num_devices, a fixed size)")
    elastic_resize_interval_s: float = Field(
        60.0, gt=0, description="elastic runs: how often Ray Train looks for room for more workers while training; "
        "growing restarts the workers from the last checkpoint")
    worker_resources: dict[str, float] | None = Field(None, description="Ray resources per worker, e.g. {CPU: 4}")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers on nodes: PACK fills a node first (fastest gradient "
        "exchange), SPREAD puts them on as many nodes as it can, STRICT_* insist")
    max_failures: int | None = Field(
        None, ge=-1, description="times Ray Train restarts the workers after one dies or fails, each time from the "
        "last checkpoint (-1: no limit); default 0 on the Ray tuneforge starts, 3 on a cluster (--address)")
    stop_grace_s: float = Field(
        30.0, gt=0, description="on SIGTERM (a scheduler's preemption) the workers finish their step, write a "
        "checkpoint and stop; after this many seconds the run stops as it is (its previous checkpoint stays)")

    # --- schedule --------------------------------------------------------------------------------------------
    num_epochs: int | None = Field(None, ge=1, description="default: ceil(min_update_steps / steps_per_epoch)")
    max_steps: int | None = Field(None, ge=1, description="train exactly this many optimizer steps (wins over "
                                  "num_epochs; the schedule and checkpoint events are planned for them)")
    min_update_steps: int = Field(100, ge=1)
    train_batch_size_per_device: int = Field(8, ge=1)
    eval_batch_size_per_device: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, ge=0)
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"
    num_warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the hardware has bf16, else fp32"
    )
    no_gradient_checkpoint: bool | None = Field(
        None, description="default: checkpointing on GPU (memory-bound), off on CPU (compute-bound)"
    )
    torch_compile: bool = Field(
        False, description="compile each transformer layer with torch.compile: faster steps after a one-time compile"
    )
    lora_config: dict[str, Any] | None = Field(None, description="any PEFT LoraConfig field; absent = full FT")
    shared_lora_dropout: bool = Field(
        True, description="LoRA layers reading the same input (q/k/v, gate/up) share one dropout mask, drawn fast: "
        "the same dropout rate per layer at a fraction of the cost (statistically, not bit-, equal to PEFT's)")
    fused_lora: bool = Field(
        True, description="run each plain LoRA linear layer's forward and backward as one function with in-place "
        "adds and row-major weight gradients (equal to PEFT's to rounding); off under torch_compile")

    # --- starting point and preference tuning (task: preference) ------------------------------------------------
    init_from: str | None = Field(
        None, description="start from a trained run or checkpoint: its LoRA adapter keeps training (same base "
        "model_id), or its fully fine-tuned weights are the base; e.g. the SFT run preference tuning continues")
    loss_type: Literal["dpo", "ipo", "orpo", "simpo", "kto"] | None = Field(
        None, description="preference: dpo (default), ipo, orpo, simpo (no reference model), kto (unpaired rows: "
        "prompt, completion, label)")
    beta: float | None = Field(None, gt=0, description="preference: strength of the preference (DPO's beta, IPO's "
                               "tau, ORPO's lambda); default 0.1")
    label_smoothing: float | None = Field(None, ge=0, lt=0.5, description="preference (dpo, simpo): the share of "
                                          "pairs assumed mislabelled (conservative DPO); default 0")
    simpo_gamma: float | None = Field(None, ge=0, description="preference (simpo): the target reward margin; "
                                      "default 0.5")
    desirable_weight: float | None = Field(None, gt=0, description="preference (kto): weight of desirable rows; "
                                           "default 1")
    undesirable_weight: float | None = Field(None, gt=0, description="preference (kto): weight of undesirable rows; "
                                             "default 1")
    reference: str | None = Field(
        None, description="preference (dpo, ipo, kto): the model answers are compared with. init (default): the "
        "model the run starts from (with init_from, that run's model, never silently the raw base); base: the base "
        "model with the adapter off (LoRA); or a run or checkpoint holding a LoRA adapter of the same base")

    # --- validation and checkpoints ----------------------------------------------------------------------------
    checkpoint_every_n_epochs: int | None = Field(None, ge=1)
    max_num_checkpoints: int = Field(10, ge=1, description="validation+checkpoint events spread over training")
    num_checkpoints_to_keep: int = Field(1, ge=1, description="best checkpoints kept (the latest is kept too)")
    eval_generate: EvalGenerate | None = Field(
        None, description="causal: generate at each validation event and report stop rate, exact match, JSON metrics")
    target_format: Literal["auto", "json", "text"] = Field(
        "auto", description="scoring of generated answers: json adds JSON validity and field metrics (auto: when "
        "the references are JSON)")
    eval_metrics: list[str] | None = Field(
        None, description="your own generation metrics, 'module:function' called with (predictions, references)")
    best_metric: str = Field("eval_loss", description="validation metric that ranks checkpoints")
    best_metric_mode: Literal["min", "max"] | None = Field(None, description="default: min for losses, else max")

    # --- output ----------------------------------------------------------------------------------------------
    output_dir: str = "runs"
    run_name: str | None = Field(None, description="default: the config file name (plus a timestamp if taken)")
    storage_path: str | None = Field(
        None, description="where Ray Train keeps the checkpoints: a directory every node mounts, or a pyarrow URI "
        "(s3://bucket/prefix, gs://, hdfs://); each run uses <storage_path>/<run name>/checkpoints; default: the "
        "run directory's checkpoints/")
    seed: int = 42
    logging_steps: int = Field(1, ge=1)

    # --- tracking: metrics.jsonl always, and these ----------------------------------------------------------------
    trackers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="where a run's metrics go besides metrics.jsonl: "
        "tensorboard (the run's tensorboard/), mlflow (pip install 'tuneforge[mlflow]')")
    mlflow_tracking_uri: str | None = Field(
        None, description="mlflow: the tracking store or server (http://host:5000); default: "
        "sqlite:///<output_dir>/mlflow.db, made absolute")
    mlflow_experiment: str | None = Field(None, description="mlflow: the experiment; default: the config file's name")
    mlflow_log_model: bool = Field(False, description="mlflow: also log best/ (the weights) as artifacts of the run")

    # --- hyperparameter search (tuneforge tune) -------------------------------------------------------------------
    search_space: dict[str, Any] | None = None
    tune: TuneSettings | None = None

    _notes: list[str] = PrivateAttr(default_factory=list)
    _source_name: str = PrivateAttr("run")
    _sources: dict[tuple[str, ...], str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _device_range(cls, data: Any) -> Any:
        """A num_devices range becomes num_devices (the most workers) and min_devices (the fewest)."""
        if isinstance(data, dict):
            bounds = device_range(data.get("num_devices"))
            if bounds is not None:
                low, high = bounds
                data = {**data, "num_devices": high, "min_devices": low if low < high else None}
        return data

    @field_validator("num_devices", mode="before")
    @classmethod
    def _device_count(cls, value: Any) -> Any:
        if isinstance(value, dict) or (isinstance(value, str) and not value.strip().isdigit()):
            # a range the model validator above could not read
            raise ValueError(f"{value!r} is not a worker count or a range; write e.g. 2, 1..4 or "
                             "{min: 1, max: 4} (min at least 1, not above max)")
        return value

    @field_validator("task", mode="before")
    @classmethod
    def _known_task(cls, value: Any) -> Any:
        from tuneforge.taskspec import ALIASES, SPECS

        value = ALIASES.get(value, value)
        if value not in SPECS:
            raise ValueError(f"unknown task {value!r}{suggest(str(value), SPECS, list_when_none_close=False)}; "
                             f"tuneforge knows {', '.join(SPECS)}")
        return value

    @field_validator("lora_config")
    @classmethod
    def _check_lora_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        known = lora_config_fields()
        for key in value:
            if key not in known:
                raise entry_error(key, f"unknown key '{key}' in lora_config{suggest(key, known)}")
        rank = value.get("r", 8)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise entry_error("r", f"lora_config.r must be a positive integer, the adapter's rank, e.g. 8 (got {rank!r})")
        return value

    @model_validator(mode="after")
    def _check_task_fields(self) -> TrainConfig:
        from tuneforge.taskspec import get_spec

        task = get_spec(self.task)
        if (self.eval_generate or self.eval_metrics) and not task.generates:
            key = "eval_generate" if self.eval_generate else "eval_metrics"
            raise entry_error(key, f"{key}: a {self.task} run does not generate text; remove {key}")
        if self.eval_metrics and not self.eval_generate:
            raise entry_error("eval_metrics", "eval_metrics: your metrics score generated answers; turn generation "
                                              "at validation on with eval_generate: {max_rows: 64}")
        task.check_config(self)
        if self.min_devices is not None and self.min_devices > self.num_devices:
            raise entry_error("min_devices", f"min_devices: {self.min_devices} is above num_devices "
                                             f"{self.num_devices}; the run needs at least min_devices and at most "
                                             "num_devices workers")
        self._check_preference_keys(task)
        self._check_tracking_keys()
        known = validation_metrics(self)
        if self.best_metric not in known:
            hint = (" (generation metrics need eval_generate: {max_rows: 64})"
                    if self.best_metric.removeprefix("eval_") in GENERATION_METRICS else "")
            raise entry_error("best_metric", f"best_metric: unknown metric '{self.best_metric}'"
                              f"{suggest(self.best_metric, known, list_when_none_close=False)}; "
                              f"validation reports {', '.join(known)}{hint}")
        return self

    def _check_preference_keys(self, task: Any) -> None:
        if task.learns_preferences:
            if self.reference is not None and self.loss_type in REFERENCE_FREE_LOSSES:
                raise entry_error("reference", f"reference: {self.loss_type} needs no reference model; remove "
                                               "reference (or choose loss_type: dpo, ipo or kto)")
            return
        for key in PREFERENCE_KEYS:
            if getattr(self, key) is not None:
                raise entry_error(key, f"{key}: a setting of preference tuning; add task: preference, or remove {key}")

    def _check_tracking_keys(self) -> None:
        if "mlflow" in self.trackers:
            return
        for key in ("mlflow_tracking_uri", "mlflow_experiment", "mlflow_log_model"):
            if getattr(self, key):
                raise entry_error(key, f"{key}: a setting of MLflow tracking, which is off; add mlflow to trackers "
                                       "(trackers: [tensorboard, mlflow]), or remove " + key)

    @property
    def notes(self) -> list[str]:
        """Non-fatal remarks made while loading (ignored Anyscale keys)."""
        return self._notes

    @property
    def source_name(self) -> str:
        """Stem of the YAML file this came from: the default run name."""
        return self._source_name

    def source_of(self, *key: str) -> str:
        """'file:line' (or '--set ...') where a key was written, for error messages about it."""
        return nearest_source(tuple(key), self._sources, self._sources.get((), "config"))

    @property
    def uses_lora(self) -> bool:
        return self.lora_config is not None

    @property
    def best_mode(self) -> Literal["min", "max"]:
        return self.best_metric_mode or metric_mode(self.best_metric)

    def to_yaml(self) -> str:
        """Every key, unset ones as null: the saved config says what each setting was, defaults included."""
        data = self.model_dump(mode="json")
        for optional_block in ("search_space", "tune"):
            if data.get(optional_block) is None:
                data.pop(optional_block, None)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def validation_metrics(config: TrainConfig) -> tuple[str, ...]:
    """What a validation event of this run reports: the names best_metric and tune.metric may use."""
    from tuneforge.taskspec import get_spec

    return get_spec(config.task).reported_metrics(config)


@lru_cache(maxsize=1)
def lora_config_fields() -> frozenset[str]:
    from peft import LoraConfig  # heavy import, only needed when a lora_config is given

    return frozenset(f.name for f in dataclasses.fields(LoraConfig) if f.init)


def suggest(word: str, candidates: Any, *, list_when_none_close: bool = True) -> str:
    """' (did you mean 'x'?)' for the closest candidate; with nothing close, the valid keys themselves."""
    names = sorted(candidates)
    match = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if match:
        return f" (did you mean '{match[0]}'?)"
    partial = [name for name in names if len(word) >= 4 and (word.lower() in name or name in word.lower())]
    if partial:
        return f" (did you mean '{partial[0]}'?)"
    return f" (valid keys: {', '.join(names)})" if list_when_none_close else ""


def config_keys() -> list[str]:
    return list(TrainConfig.model_fields)


def config_defaults() -> dict[str, Any]:
    """Every key's default; keys without one (model_id, train_path) are absent."""
    from pydantic_core import PydanticUndefined

    return {name: field.default for name, field in TrainConfig.model_fields.items()
            if field.default is not PydanticUndefined}


def changed_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a saved config (config.yaml) whose value is not the default, by name; keys without a default
    are always listed."""
    defaults = config_defaults()
    return {key: value for key, value in sorted(config.items()) if defaults.get(key, object()) != value}


def device_range(value: Any) -> tuple[int, int] | None:
    """(min, max) of a num_devices range, `1..4` or {min: 1, max: 4}; None for anything else (a plain count, or a
    malformed range, which the field's own validator refuses)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", value)
        bounds = (int(match[1]), int(match[2])) if match else None
    elif isinstance(value, dict) and set(value) == {"min", "max"}:
        low, high = value["min"], value["max"]
        bounds = (low, high) if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) else None
    else:
        return None
    return bounds if bounds and 1 <= bounds[0] <= bounds[1] else None


def entry_error(entry: str | int, message: str) -> PydanticCustomError:
    """A complete message about one entry of a mapping or list field (a lora_config key, a spec case): the error
    then points at that entry's line rather than the field's."""
    return PydanticCustomError("entry", "{message}", {"message": message, "entry": entry})


def nearest_source(loc: tuple[str, ...], sources: dict[tuple[str, ...], str], default: str) -> str:
    """Where the innermost written key on the way to `loc` came from ('file:line' or '--set ...')."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources:
            return sources[loc[:end]]
    return default

__all__ = [
    "BUNDLED_MODEL_ALIASES",
    "EvalGenerate",
    "TrainConfig",
    "TuneSettings",
    "changed_keys",
    "config_defaults",
    "config_keys",
    "entry_error",
    "lora_config_fields",
    "nearest_source",
    "suggest",
    "validation_metrics",
]
