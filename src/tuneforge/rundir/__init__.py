"""The run directory, its checkpoints and its exports: every path and every status change goes through here.

    runs/<name>/
        config.yaml               the resolved config (defaults and derived values filled in)
        plan.json                 steps, epochs, events, data statistics; lr_schedule.png
        run.json                  RunState: created | running | completed | failed | interrupted | stopped
        validation_samples.jsonl  raw validation rows later stages check against (export's fidelity probes)
        metrics.jsonl             one line per log step and per validation event
        tensorboard/              event files
        checkpoints/step-NNNNNN/  the best `num_checkpoints_to_keep` plus the latest (Ray Train manages them)
        best/                     copy of the best checkpoint
        results.json              final and best metrics; a run is complete when it exists
        report.html               `tuneforge report`'s page
        eval/<name>/              `tuneforge eval` results (EvalDir)
        export/                   `tuneforge export` artifacts and export_report.json

A checkpoint directory describes itself: weights (a LoRA adapter only, or the full model), the tokenizer,
`tuneforge.json` (CheckpointMeta) and `training_state.pt` (optimizer, schedule, RNG, step).

A search's experiment directory (ExperimentDir) holds one run directory per trial beside its own files:

    <output_dir>/<experiment>/
        tune_config.yaml          the search's config (search_space and tune included): what --resume reloads
        search.json               metric, mode, and what --auto built
        trial_<id>/               one run directory per trial
        trials.csv, best_run.json, objective_by_trial.png    written when the search ends
        report.html               `tuneforge report`'s page
"""

from tuneforge.rundir.meta import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    DEFAULT_RUNS_DIR,
    META_FILE,
    RAY_SNAPSHOT,
    REPORT_FILE,
    RESULTS_FILE,
    STATE_FILE,
    STEP_PREFIX,
    CheckpointError,
    CheckpointMeta,
    RunState,
    now,
    read_json,
    read_jsonl,
)
from tuneforge.rundir.run import (
    EvalDir,
    Folder,
    RunDir,
    checkpoint_name,
    checkpoint_store,
    export_report_file,
    is_checkpoint,
    is_whole_checkpoint,
    locate,
    read_snapshot,
    record_export,
    resolve_checkpoint,
    snapshot_is_damaged,
    stored_latest_step,
)
from tuneforge.rundir.search import (
    ExperimentDir,
    RunEntry,
    describe_run,
    describe_search,
    list_runs,
)

__all__ = [
    "BEST_DIR",
    "CHECKPOINTS_DIR",
    "DEFAULT_RUNS_DIR",
    "META_FILE",
    "RAY_SNAPSHOT",
    "REPORT_FILE",
    "RESULTS_FILE",
    "STATE_FILE",
    "STEP_PREFIX",
    "CheckpointError",
    "CheckpointMeta",
    "EvalDir",
    "ExperimentDir",
    "Folder",
    "RunDir",
    "RunEntry",
    "RunState",
    "checkpoint_name",
    "checkpoint_store",
    "describe_run",
    "describe_search",
    "export_report_file",
    "is_checkpoint",
    "is_whole_checkpoint",
    "list_runs",
    "locate",
    "now",
    "read_json",
    "read_jsonl",
    "read_snapshot",
    "record_export",
    "resolve_checkpoint",
    "snapshot_is_damaged",
    "stored_latest_step",
]
