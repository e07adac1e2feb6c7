"""Training and search metrics as Ray metrics (`ray.util.metrics`).

Every worker records its own view, tagged with the run, the Tune trial (empty outside a search) and its rank; each
node's metrics agent serves them to Prometheus as `ray_tuneforge_*`. metrics.jsonl stays the record of a run: these
are for watching runs live, next to Ray's own node, Train and Data metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.metrics import quality_metrics
from tuneforge.rundir import ExperimentDir

TAG_KEYS = ("run", "trial", "rank")
EXTRA_TAG_KEYS = {"tuneforge_eval_metric": ("metric",)}

# name -> (kind, description). Ray adds the "ray_" prefix; counters get "_total" in Prometheus.
TRAINING_METRICS: dict[str, tuple[str, str]] = {
    "tuneforge_train_loss": ("gauge", "mean train loss per target token over the last logging window"),
    "tuneforge_learning_rate": ("gauge", "learning rate at the last logged step"),
    "tuneforge_grad_norm": ("gauge", "gradient norm before clipping at the last logged step"),
    "tuneforge_tokens_per_second": ("gauge", ("the run's real (non-padding) tokens trained per second, all workers "
                                              "together, over the last window")),
    "tuneforge_step": ("gauge", "optimizer steps done"),
    "tuneforge_total_steps": ("gauge", "optimizer steps the run plans"),
    "tuneforge_epoch": ("gauge", "epochs done (fractional)"),
    "tuneforge_eval_loss": ("gauge", "validation loss at the last checkpoint event"),
    "tuneforge_eval_metric": ("gauge", "the task's other validation metrics at the last checkpoint event, by metric"),
    "tuneforge_checkpoints": ("counter", "checkpoint events (validation + checkpoint) done"),
}
STEP_FIELDS = {"loss": "tuneforge_train_loss", "lr": "tuneforge_learning_rate", "grad_norm": "tuneforge_grad_norm",
               "tokens_per_second": "tuneforge_tokens_per_second", "step": "tuneforge_step",
               "epoch": "tuneforge_epoch"}


class TrainingMetrics:
    """One worker's metrics. `record` takes the loop's events (step, eval, checkpoint) as metrics.jsonl has them."""

    def __init__(self, run: str, trial: str, rank: int):
        from ray.util import metrics

        kinds = {"gauge": metrics.Gauge, "counter": metrics.Counter}
        self.tags = {"run": run, "trial": trial, "rank": str(rank)}
        self.metrics = {name: kinds[kind](name, description, tag_keys=TAG_KEYS + EXTRA_TAG_KEYS.get(name, ()))
                        for name, (kind, description) in TRAINING_METRICS.items()}

    def start(self, total_steps: int, step: int) -> None:
        self.set("tuneforge_total_steps", total_steps)
        self.set("tuneforge_step", step)

    def record(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step":
            for field, name in STEP_FIELDS.items():
                if isinstance(event.get(field), (int, float)):
                    self.set(name, event[field])
        elif kind == "eval":
            self.metrics["tuneforge_checkpoints"].inc(1, tags=self.tags)
            for field, name in (("step", "tuneforge_step"), ("epoch", "tuneforge_epoch"),
                                ("eval_loss", "tuneforge_eval_loss")):
                if isinstance(event.get(field), (int, float)):
                    self.set(name, event[field])
            for key, value in quality_metrics(event).items():  # accuracy, F1, stop rate...: not timings, perplexity
                self.metrics["tuneforge_eval_metric"].set(value, tags={**self.tags, "metric": key.removeprefix("eval_")})

    def set(self, name: str, value: float) -> None:
        self.metrics[name].set(float(value), tags=self.tags)


def run_tags(run_dir: Path) -> tuple[str, str]:
    """(run, trial): a search's trials are its run directories `trial_<id>` beside tune_config.yaml."""
    search = ExperimentDir.of_trial(run_dir)
    if search:
        return search.name, run_dir.name
    return run_dir.name, ""
