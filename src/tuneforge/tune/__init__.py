"""Hyperparameter search on Ray Tune: every trial is a full tuneforge run, through the same training loop.

    search_space:                       # any config key, nested ones dotted
      learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
      lora_config.r: {grid: [8, 16]}
    tune:
      search_alg: basic                 # basic (grid/random) | optuna | hyperopt
      scheduler: asha                   # fifo | asha | pbt
      num_samples: 4

The objective, unless `tune.metric` names one, is HF's `default_compute_objective` (tuneforge.metrics): the
validation loss when it is the only metric, else the sum of the other quality metrics (classification: accuracy +
precision + recall + F1, maximised).

    space       the search-space schema (SpaceSpec) and the checks run before any trial starts
    resources   how many trials fit at once, and what each trial's workers get
    trial       the Tune function that trains one run, and what it reports
    search      the Tuner: objective, search algorithm, scheduler, progress
    results     trials.csv, best_run.json and the plot, from Ray's ResultGrid and the runs' own files
"""

from tuneforge.tune.results import SearchResult, load_experiment_config, read_best_run
from tuneforge.tune.tuner import objective_direction, search
from tuneforge.tune.space import validate_search
from tuneforge.tune.trial import trial_dirname  # noqa: F401 - searches started before the package unpickle it here

__all__ = ["SearchResult", "load_experiment_config", "objective_direction", "read_best_run", "search",
           "validate_search"]
