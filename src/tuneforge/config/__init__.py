"""The one YAML config: every setting of a run, its checks, and loading it with `file:line` in every error.

    schema    TrainConfig and its nested settings (TuneSettings, EvalGenerate), checks across keys, key suggestions
    loading   load_config: YAML with the line of every key, `--set` overrides, Anyscale-only keys, error messages

Everything is importable from here (`from tuneforge.config import TrainConfig, load_config`).
"""

from tuneforge.config.loading import (
    ANYSCALE_ONLY_KEYS,
    apply_override,
    collect_key_lines,
    describe_validation_error,
    load_config,
    model_keys,
    names_something,
    nested_model,
    parse_yaml_with_lines,
    resolve_data_paths,
    resolve_path,
    validate_config,
)
from tuneforge.config.schema import (
    BUNDLED_MODEL_ALIASES,
    EvalGenerate,
    TrainConfig,
    TuneSettings,
    config_keys,
    entry_error,
    lora_config_fields,
    nearest_source,
    suggest,
    validation_metrics,
)

__all__ = [
    "ANYSCALE_ONLY_KEYS", "BUNDLED_MODEL_ALIASES", "EvalGenerate", "TrainConfig", "TuneSettings", "apply_override",
    "collect_key_lines", "config_keys", "describe_validation_error", "entry_error", "load_config",
    "lora_config_fields", "model_keys", "names_something", "nearest_source", "nested_model", "parse_yaml_with_lines",
    "resolve_data_paths", "resolve_path", "suggest", "validate_config", "validation_metrics",
]
