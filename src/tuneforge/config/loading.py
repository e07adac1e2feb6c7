"""Loading a YAML config: the line of every key, `--set` overrides, validation errors as one `file:line` message,
relative data paths resolved. Anyscale LLMForge keys tuneforge has no use for are dropped with a note; any other
unknown key is an error that names the nearest valid key.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.config.schema import TrainConfig, nearest_source, suggest
from tuneforge.errors import ConfigError

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
    resolve_tracking(config)
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


def resolve_data_paths(config: TrainConfig, config_dir: Path) -> None:
    for field in ("train_path", "valid_path"):
        value = getattr(config, field)
        if value is not None and "://" not in value:  # a URI (s3://, gs://, file://) is pyarrow's to resolve
            setattr(config, field, str(resolve_path(value, config_dir)))
    if config.storage_path and "://" not in config.storage_path:
        config.storage_path = str(Path(config.storage_path).expanduser().resolve())
    if config.eval_generate and config.eval_generate.json_schema:
        config.eval_generate.json_schema = str(resolve_path(config.eval_generate.json_schema, config_dir))


def resolve_tracking(config: TrainConfig) -> None:
    """MLflow's store and experiment written into the config: a resumed run (which reads its config.yaml) and the
    trials of a search (which run in directories of their own) log to the same place."""
    for key, value in tracking_keys(config).items():
        setattr(config, key, value)


def tracking_keys(config: TrainConfig) -> dict[str, str]:
    """mlflow_tracking_uri and mlflow_experiment as a run uses them: default a SQLite store in output_dir and the
    config file's name; a SQLite path made absolute. Empty without MLflow."""
    from tuneforge.rundir import mlflow_store

    if "mlflow" not in config.trackers:
        return {}
    uri = config.mlflow_tracking_uri or f"sqlite:///{mlflow_store(config.output_dir)}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative to this working directory
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return {"mlflow_tracking_uri": uri, "mlflow_experiment": config.mlflow_experiment or config.source_name}


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

__all__ = [
    "ANYSCALE_ONLY_KEYS",
    "apply_override",
    "collect_key_lines",
    "describe_validation_error",
    "load_config",
    "model_keys",
    "names_something",
    "nested_model",
    "parse_yaml_with_lines",
    "resolve_data_paths",
    "resolve_path",
    "resolve_tracking",
    "tracking_keys",
    "validate_config",
]
