"""The one YAML config: schema, loading with file:line errors, `--set` overrides.

Keys follow the Anyscale fine-tuning config (`model_id`, `train_path`, `num_devices`, `learning_rate`,
`lora_config`, `num_checkpoints_to_keep`, ...) so existing files load. LLMForge keys that tuneforge has no use for
are accepted with a note; any other unknown key is an error that names the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tuneforge.errors import ConfigError
from tuneforge.metrics import metric_mode
from tuneforge.scoring import GENERATION_METRICS

BUNDLED_MODEL_ALIASES = ("smollm2-135m-instruct", "minilm-l6")

# LLMForge keys that only make sense on Anyscale's own stack (DeepSpeed, flash-attn kernels, their serving
# prompt formats). Users' files carry them; refusing the file would be unfriendly, silently dropping them is not.
ANYSCALE_ONLY_KEYS = frozenset(
    {
        "deepspeed",
        "flash_attention_2",
        "generation_config",
        "prompt_format",
        "trainer_resources",
        "dataset_size_scaling_factor",
        "embedding_scaling_technique",
        "classifier_config",
        "liger_kernel",
        "logger",
        "optimizer_config",
        "preference_tuning_config",
        "checkpoint_and_evaluation_frequency",
        "initial_adapter_model_ckpt_path",
        "initial_base_model_ckpt_path",
    }
)


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


class TrainConfig(BaseModel):
    """Everything one training run needs. Field descriptions double as the reference in the README."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- what to train -------------------------------------------------------------------------------------
    task: str = Field("causal_lm", description="causal_lm, classification or token_classification "
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
    num_devices: int = Field(1, ge=1, description="Ray Train workers (one per GPU, or CPU slices)")
    worker_resources: dict[str, float] | None = Field(None, description="Ray resources per worker, e.g. {CPU: 4}")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers on nodes: PACK fills a node first (fastest gradient "
        "exchange), SPREAD puts them on as many nodes as it can, STRICT_* insist")
    max_failures: int | None = Field(
        None, ge=-1, description="times Ray Train restarts the workers after one dies or fails, each time from the "
        "last checkpoint (-1: no limit); default 0 on the Ray tuneforge starts, 3 on a cluster (--address)")

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

    # --- hyperparameter search (tuneforge tune) -------------------------------------------------------------------
    search_space: dict[str, Any] | None = None
    tune: TuneSettings | None = None

    _notes: list[str] = PrivateAttr(default_factory=list)
    _source_name: str = PrivateAttr("run")
    _sources: dict[tuple[str, ...], str] = PrivateAttr(default_factory=dict)

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
        known = validation_metrics(self)
        if self.best_metric not in known:
            hint = (" (generation metrics need eval_generate: {max_rows: 64})"
                    if self.best_metric.removeprefix("eval_") in GENERATION_METRICS else "")
            raise entry_error("best_metric", f"best_metric: unknown metric '{self.best_metric}'"
                              f"{suggest(self.best_metric, known, list_when_none_close=False)}; "
                              f"validation reports {', '.join(known)}{hint}")
        return self

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


def entry_error(entry: str | int, message: str) -> PydanticCustomError:
    """A complete message about one entry of a mapping or list field (a lora_config key, a spec case): the error
    then points at that entry's line rather than the field's."""
    return PydanticCustomError("entry", "{message}", {"message": message, "entry": entry})


def model_keys(model: type[BaseModel], parent: tuple[str, ...]) -> list[str]:
    """The valid keys at `parent` (where a validation error happened) inside `model`, following nested models."""
    for part in parent:
        field = model.model_fields.get(part)
        if field is not None:  # else a list index
            model = nested_model(field.annotation) or model
    return list(model.model_fields)


def nested_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):  # Optional[X], list[X]
        found = nested_model(argument)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override and validate a YAML config. Relative data paths are resolved against the working
    directory first, then the config file's directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    raw, lines = parse_yaml_with_lines(text, path)
    sources = {key: f"{path}:{line}" for key, line in lines.items()}
    for override in overrides or []:
        key = apply_override(raw, override)
        sources[tuple(key.split("."))] = f"--set {override}"
    config = validate_config(raw, sources, default_source=str(path))
    config._source_name = path.stem
    config._sources = {(): str(path), **sources}
    resolve_data_paths(config, path.parent)
    return config


def parse_yaml_with_lines(text: str, path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The YAML mapping, and the 1-based line of every key path (for error messages)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: config file is empty; it needs at least model_id and train_path")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: config must be a mapping of key: value, got {type(data).__name__}")
    lines: dict[tuple[str, ...], int] = {}
    collect_key_lines(node, (), lines)
    return data, lines


def collect_key_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """Lines of mapping keys, and of list items under their index (as validation errors locate them)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            collect_key_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, str(index))
            out[key] = item.start_mark.line + 1
            collect_key_lines(item, key, out)


def apply_override(raw: dict[str, Any], override: str) -> str:
    """Apply one `key.sub=value` override in place (value parsed as YAML). Returns the dotted key."""
    key, sep, value_text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override}: expected KEY=VALUE, e.g. --set learning_rate=3e-4")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as exc:
        reason = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"--set {override}: the value is not valid YAML ({reason}); quote it: --set '{key}=\"...\"'") from None
    *parents, leaf = key.split(".")
    target = raw
    for part in parents:
        child = target.get(part)
        if child is None:
            child = target[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override}: '{part}' is not a mapping, cannot set '{leaf}' inside it")
        target = child
    target[leaf] = value
    return key


def validate_config(
    raw: dict[str, Any], sources: dict[tuple[str, ...], str], default_source: str
) -> TrainConfig:
    notes = []
    cleaned = dict(raw)
    for key in sorted(ANYSCALE_ONLY_KEYS & cleaned.keys()):
        del cleaned[key]
        notes.append(f"{sources.get((key,), default_source)}: '{key}' is an Anyscale LLMForge key tuneforge does not use; ignored")
    try:
        config = TrainConfig.model_validate(cleaned)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, sources, default_source)) from None
    config._notes.extend(notes)
    return config


def describe_validation_error(exc: ValidationError, sources: dict[tuple[str, ...], str], default_source: str,
                              model: type[BaseModel] = TrainConfig) -> str:
    """One line for the first error: where (file:line or --set), which key, what is wrong, how to fix."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(str(part) for part in first["loc"])
    key = ".".join(loc) or "config"
    if first["type"] == "entry":
        loc = (*loc, str(first["ctx"]["entry"]))
        message = first["ctx"]["message"]
    elif first["type"] == "extra_forbidden":
        message = f"unknown key '{key}'{suggest(loc[-1], model_keys(model, loc[:-1]))}"
    elif first["type"] == "missing":
        message = f"missing required key '{key}'"
    else:
        detail = first["msg"].removeprefix("Value error, ")
        value = first.get("input")
        shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
        message = f"{key}: {detail}{shown}"
    more = f" [and {len(errors) - 1} more problem(s)]" if len(errors) > 1 else ""
    return f"{nearest_source(loc, sources, default_source)}: {message}{more}"


def nearest_source(loc: tuple[str, ...], sources: dict[tuple[str, ...], str], default: str) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources:
            return sources[loc[:end]]
    return default


def resolve_data_paths(config: TrainConfig, config_dir: Path) -> None:
    for field in ("train_path", "valid_path"):
        value = getattr(config, field)
        if value is not None and "://" not in value:  # a URI (s3://, gs://, file://) is pyarrow's to resolve
            setattr(config, field, str(resolve_path(value, config_dir)))
    if config.storage_path and "://" not in config.storage_path:
        config.storage_path = str(Path(config.storage_path).expanduser().resolve())
    if config.eval_generate and config.eval_generate.json_schema:
        config.eval_generate.json_schema = str(resolve_path(config.eval_generate.json_schema, config_dir))


def resolve_path(value: str, config_dir: Path) -> Path:
    """CWD-relative first (how Anyscale files are written), then relative to the config file."""
    path = Path(value).expanduser()
    if path.is_absolute() or names_something(path):
        return path.resolve()
    beside_config = config_dir / path
    return beside_config.resolve() if names_something(beside_config) else path.resolve()


def names_something(path: Path) -> bool:
    """An existing file or directory, or a glob that matches one."""
    import glob

    return path.exists() or bool(glob.glob(str(path)))
