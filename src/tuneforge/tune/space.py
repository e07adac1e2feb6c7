"""The search space: one `SpaceSpec` per searched key, and the checks that refuse a bad space before any trial starts.

    search_space:
      learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
      lora_config.r: {grid: [8, 16]}        # nested keys dotted, or written nested
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from tuneforge.config import (
    TrainConfig,
    TuneSettings,
    config_keys,
    lora_config_fields,
    suggest,
    validation_metrics,
)
from tuneforge.errors import ConfigError

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")
RANGE_SHAPES = {"uniform": "[low, high]", "loguniform": "[low, high]", "randint": "[low, high]",
                "quniform": "[low, high, step]"}
UNSEARCHABLE = ("search_space", "tune", "model_id", "task", "train_path", "valid_path", "output_dir", "run_name")
PLANNED = ("num_devices", "worker_resources")  # resources are planned for the whole search before it starts
# Search keys that are not config keys: what a trial's config follows from (trial_params).
FINE_TUNING = "fine_tuning"  # lora | full: full drops the config's lora_config
FINE_TUNING_METHODS = ("lora", "full")


class SpaceSpec(BaseModel):
    """What one searched key may take: listed values (grid: every one, choice: sampled) or a range to sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: list[Any] | None = None
    loguniform: list[Any] | None = None
    randint: list[Any] | None = None
    quniform: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in SPACE_KINDS:
            got = f" (got {', '.join(map(str, data))})" if isinstance(data, dict) and data else ""
            raise ValueError(f"expected one of {', '.join(SPACE_KINDS)}, e.g. {{grid: [1, 2]}}{got}")
        return data

    @field_validator(*SPACE_KINDS, mode="before")
    @classmethod
    def _non_empty_list(cls, values: Any, info: Any) -> Any:
        if not isinstance(values, list) or not values:
            raise ValueError(f"{info.field_name} needs a non-empty list")
        return values

    @field_validator(*RANGE_SHAPES)
    @classmethod
    def _range(cls, values: list[Any], info: Any) -> list[Any]:
        # Numbers as YAML wrote them: randint keeps its ints, and `1e-5` (a string to YAML 1.1) is refused, not
        # silently read.
        kind, shape = info.field_name, RANGE_SHAPES[info.field_name]
        if len(values) != shape.count(",") + 1 or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"{kind} takes {shape} numbers")
        low, high = values[0], values[1]
        if low > high or (kind == "loguniform" and low <= 0):
            raise ValueError(f"{kind} range {values} is empty or not positive")
        return values

    @property
    def kind(self) -> str:
        return next(kind for kind in SPACE_KINDS if getattr(self, kind) is not None)

    @property
    def values(self) -> list[Any]:
        return getattr(self, self.kind)

    def samples(self) -> list[Any]:
        """The values validation tries: every listed one, both ends of a range (randint's high is exclusive)."""
        if self.kind in ("grid", "choice"):
            return self.values
        low, high = self.values[0], self.values[1]
        return [low, high - 1 if self.kind == "randint" and high > low else high]


def parse_spec(raw: Any) -> SpaceSpec:
    """A SpaceSpec, or ValueError naming the first problem in words (no pydantic boilerplate)."""
    try:
        return SpaceSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        cause = (error.get("ctx") or {}).get("error")
        raise ValueError(str(cause) if cause is not None else error["msg"]) from None


def is_spec(value: Any) -> bool:
    """A dict naming a space kind is a spec (checked whole by SpaceSpec); any other dict groups nested keys."""
    return isinstance(value, dict) and any(key in SPACE_KINDS for key in value)


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'lora_config': {'r': {'grid': [8]}}} and {'lora_config.r': {'grid': [8]}} both become the latter."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if is_spec(value):
            flat[name] = value
        elif isinstance(value, dict) and value:
            flat.update(flatten_space(value, f"{name}."))
        else:
            raise ValueError(f"search_space.{name}: expected one of {', '.join(SPACE_KINDS)}, e.g. {{grid: [1, 2]}}")
    return flat


# ----------------------------------------------------------------------------------------------------------------
# Dotted keys. Ray 2.60's dict helpers are no help here: `ray.tune.utils.flatten_dict` is @Deprecated and its
# `unflatten_dict` is only in `ray._private`, so tuneforge keeps these two.
# ----------------------------------------------------------------------------------------------------------------


def dotted(nested: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """{'lora_config': {'r': 8}} -> {'lora_config.r': 8}: trials.csv's param.* columns."""
    flat: dict[str, Any] = {}
    for key, value in (nested or {}).items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trial_params(params: dict[str, Any], *, lora_alpha_ratio: float | None = None,
                 full_learning_rate_ratio: float | None = None) -> dict[str, Any]:
    """A trial's dotted params as config keys: `fine_tuning: full` becomes lora_config null (its LoRA keys dropped,
    its learning rate times `full_learning_rate_ratio`), and a searched LoRA rank sets lora_alpha to
    `lora_alpha_ratio` times it (tune.lora_alpha_ratio)."""
    params = dict(params)
    if params.pop(FINE_TUNING, "lora") == "full":
        params = {key: value for key, value in params.items() if not key.startswith("lora_config.")}
        params["lora_config"] = None
        if full_learning_rate_ratio and "learning_rate" in params:
            params["learning_rate"] = params["learning_rate"] * full_learning_rate_ratio
    elif lora_alpha_ratio and "lora_config.r" in params and "lora_config.lora_alpha" not in params:
        alpha = lora_alpha_ratio * params["lora_config.r"]
        params["lora_config.lora_alpha"] = int(alpha) if float(alpha).is_integer() else alpha
    return params


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict with dotted `params` set: `lora_config.r` changes r and keeps the other LoRA keys."""
    result = copy.deepcopy(base)
    for key, value in params.items():
        *parents, leaf = key.split(".")
        target = result
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[leaf] = value
    return result


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def check_fixed_workers(config: TrainConfig) -> None:
    if config.min_devices is not None:
        raise ConfigError(f"{config.source_of('num_devices')}: a num_devices range (elastic workers) applies to "
                          f"`tuneforge train`; a search's trials each run a fixed number of workers, so write "
                          f"num_devices: {config.num_devices}")


def validate_search(config: TrainConfig) -> dict[str, SpaceSpec]:
    """Refuse a bad search space before any trial starts: unknown keys (with the nearest valid key), malformed
    specs, and values a trial's config would reject. Returns the specs by dotted key."""
    if not config.search_space:
        raise ConfigError(f"{config.source_of()}: no search_space; tuneforge tune needs one (e.g. "
                          "search_space: {learning_rate: {loguniform: [1.0e-5, 1.0e-3]}})")
    check_fixed_workers(config)
    try:
        raw_space = flatten_space(config.search_space)
    except ValueError as exc:
        raise ConfigError(f"{config.source_of('search_space')}: {exc}") from None
    base = config.model_dump(mode="json", exclude={"search_space", "tune"})
    space = {key: checked_spec(config, base, key, raw) for key, raw in raw_space.items()}
    settings = config.tune or TuneSettings()
    if settings.search_alg != "basic" and any(spec.kind == "grid" for spec in space.values()):
        raise ConfigError(f"{config.source_of('tune', 'search_alg')}: grid values need search_alg: basic; "
                          f"{settings.search_alg} samples, so use choice instead of grid")
    check_metric(config, settings)
    check_points(config, settings, space, base)
    return space


def checked_spec(config: TrainConfig, base: dict[str, Any], key: str, raw: Any) -> SpaceSpec:
    """One key's spec: a key a trial may set, a well-formed spec, values a trial's config accepts."""
    where = config.source_of("search_space", *key.split("."))
    problem = check_space_key(key, config.uses_lora)
    if problem:
        raise ConfigError(f"{where}: search_space: {problem}")
    try:
        spec = parse_spec(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: search_space.{key}: {exc}") from None
    if key == FINE_TUNING and (spec.kind not in ("grid", "choice") or set(spec.values) - set(FINE_TUNING_METHODS)):
        raise ConfigError(f"{where}: search_space.{key} takes choice or grid of {', '.join(FINE_TUNING_METHODS)}")
    for sample in spec.samples():
        problem = invalid_params(base, trial_params({key: sample}))
        if problem:
            raise ConfigError(f"{where}: search_space.{key} value {sample!r} is invalid: {problem}")
    return spec


def check_space_key(key: str, uses_lora: bool = True) -> str | None:
    """None when `key` names a config key a trial may set (or fine_tuning), else the problem."""
    if key == FINE_TUNING:
        return None if uses_lora else (f"'{FINE_TUNING}' chooses between the config's lora_config and full "
                                       "fine-tuning; add a lora_config")
    head, _, rest = key.partition(".")
    if head in UNSEARCHABLE:
        return f"'{head}' cannot be searched over"
    if head in PLANNED:
        return f"'{head}' cannot be searched over: every trial's resources are planned to fit before the search starts"
    if head not in config_keys():
        return f"unknown key '{key}'{suggest(head, config_keys())}"
    if rest:
        if head != "lora_config":
            return f"'{head}' has no sub-keys to search over"
        if rest not in lora_config_fields():
            return f"unknown key '{key}'{suggest(rest, lora_config_fields())}"
        if not uses_lora:
            return f"'{key}': this config fine-tunes fully (no lora_config); add a lora_config to search its keys"
    return None


def invalid_params(base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """None when the config dict `base` with dotted `params` set is a valid TrainConfig, else pydantic's reason."""
    try:
        TrainConfig.model_validate(with_params(base, params))
    except ValueError as exc:
        lines = str(exc).splitlines()
        return lines[2].strip() if len(lines) > 2 else str(exc)
    return None


def check_metric(config: TrainConfig, settings: TuneSettings) -> None:
    known = (*validation_metrics(config), "train_loss")
    if settings.metric and settings.metric not in known:
        raise ConfigError(f"{config.source_of('tune', 'metric')}: unknown metric '{settings.metric}'"
                          f"{suggest(settings.metric, known, list_when_none_close=False)}; trials report {', '.join(known)}")


def check_points(config: TrainConfig, settings: TuneSettings, space: dict[str, SpaceSpec],
                 base: dict[str, Any]) -> None:
    """points_to_evaluate name searched keys only (dotted, as in the search space), with values a trial accepts."""
    where = config.source_of("tune", "points_to_evaluate")
    for number, point in enumerate(settings.points_to_evaluate or [], start=1):
        for key in point:
            if key not in space:
                close = suggest(key, space, list_when_none_close=False)
                raise ConfigError(f"{where}: point {number}: '{key}' is not a search_space key{close}")
        problem = invalid_params(base, trial_params(point))
        if problem:
            raise ConfigError(f"{where}: point {number} is invalid: {problem}")


def expected_trials(space: dict[str, SpaceSpec], settings: TuneSettings) -> int:
    """num_samples, times every grid's size (Tune repeats the whole grid per sample)."""
    total = settings.num_samples
    for spec in space.values():
        if spec.kind == "grid":
            total *= len(spec.values)
    return total


# ----------------------------------------------------------------------------------------------------------------
# Ray Tune domains
# ----------------------------------------------------------------------------------------------------------------


def to_domain(spec: SpaceSpec) -> Any:
    from ray import tune

    values = spec.values
    return {
        "grid": lambda: tune.grid_search(values),
        "choice": lambda: tune.choice(values),
        "uniform": lambda: tune.uniform(*values),
        "loguniform": lambda: tune.loguniform(*values),
        "randint": lambda: tune.randint(*values),
        "quniform": lambda: tune.quniform(*values),
    }[spec.kind]()


def mutation_domain(spec: Any) -> Any:
    """PBT mutations: a list of values, or a search-space spec (a grid has nothing to mutate to)."""
    if isinstance(spec, list):
        return spec
    try:
        parsed = parse_spec(spec)
    except ValueError:
        parsed = None
    if parsed is None or parsed.kind == "grid":
        raise ConfigError(f"tune.hyperparam_mutations: {spec!r} must be a list of values or "
                          "{choice|uniform|...: [...]}")
    return to_domain(parsed)
