"""The one YAML config: every setting of a run, its checks, and loading it with `file:line` in every error.

    schema    TrainConfig and its nested settings (TuneSettings, EvalGenerate), checks across keys, key suggestions
    loading   load_config: YAML with the line of every key, `--set` overrides, Anyscale-only keys, error messages

Everything is importable from here (`from tuneforge.config import TrainConfig, load_config`).
"""

# each part's __all__ is the package's
from tuneforge.config import loading, schema
from tuneforge.config.loading import *
from tuneforge.config.schema import *

__all__ = loading.__all__ + schema.__all__
