"""The run directory, its checkpoints and its exports: every path and every status change goes through here.

    runs/<name>/
        config.yaml               the resolved config (defaults and derived values filled in)
        plan.json                 steps, epochs, events, data statistics; lr_schedule.png
        run.json                  RunState: created | running | completed | failed | interrupted | stopped
        validation_samples.jsonl  raw validation rows later stages check against (export's fidelity probes)
        reference_logps.safetensors  preference runs: the reference model's log-probabilities, computed once
        metrics.jsonl             one line per log step and per validation event
        tensorboard/              event files
        checkpoints/step-NNNNNN/  the best `num_checkpoints_to_keep` plus the latest (Ray Train manages them)
        best/                     copy of the best checkpoint, with its model card (README.md)
        results.json              final and best metrics; a run is complete when it exists
        report.html               `tuneforge report`'s page
        mlflow_run.json           the run's MLflow run (trackers: [..., mlflow]): store, experiment, run id
        eval/<name>/              `tuneforge eval` results (EvalDir)
        export/                   `tuneforge export` artifacts, export_report.json and their model cards

A checkpoint directory describes itself: weights (a LoRA adapter only, or the full model), the tokenizer,
`tuneforge.json` (CheckpointMeta) and `training_state.pt` (optimizer, schedule, RNG, step).

A search's experiment directory (ExperimentDir) holds one run directory per trial beside its own files:

    <output_dir>/<experiment>/
        tune_config.yaml          the search's config (search_space and tune included): what --resume reloads
        search.json               metric, mode, and what --auto built
        trial_<id>/               one run directory per trial
        trials.csv, best_run.json, objective_by_trial.png    written when the search ends
        report.html               `tuneforge report`'s page
        mlflow_run.json           the search's MLflow run, parent of the trials' runs

An output_dir's default MLflow store sits beside its runs: mlflow.db, and mlartifacts/ for the runs' artifacts.
"""

# Everything is importable from here: each part's __all__ is the package's.
from tuneforge.rundir import meta, run, search
from tuneforge.rundir.meta import *
from tuneforge.rundir.run import *
from tuneforge.rundir.search import *

__all__ = meta.__all__ + run.__all__ + search.__all__
