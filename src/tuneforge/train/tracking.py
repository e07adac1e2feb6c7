"""What a run records as it trains: `metrics.jsonl` (one JSON object per log line or validation), TensorBoard event
files and an MLflow run (`trackers`). The driver writes them all from the workers' event stream, so they land in the
run directory (and the MLflow store) wherever the workers run."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable

from tuneforge.atomic import write_text
from tuneforge.config import TrainConfig
from tuneforge.errors import TuneforgeError
from tuneforge.metrics import perplexity
from tuneforge.rundir import RunDir

if TYPE_CHECKING:
    from tuneforge.observe.mlflow_runs import MlflowRun

TRAIN_SCALARS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
                 "tokens_per_second": "train/tokens_per_second"}


class Tracker:
    """Appends to a run's metrics. When a run resumes from step N, what was logged after N is dropped (from
    metrics.jsonl, and hidden in TensorBoard with purge_step): those steps are about to be trained again."""

    def __init__(self, run: RunDir, resume_step: int | None = None, config: TrainConfig | None = None,
                 note: Callable[[str], None] = lambda message: None):
        trackers = config.trackers if config else ["tensorboard"]
        self.mlflow = MlflowTracking.open(run, config, note) if "mlflow" in trackers else None
        self.tensorboard = "tensorboard" in trackers
        self.run, self.samples_path = run, run.generation_samples_file
        self.last_step = resume_step or 0
        self.open(resume_step)

    def open(self, resume_step: int | None) -> None:
        if resume_step is not None:
            # One row per (kind, step): an attempt cut short may have logged steps it then trained again.
            latest = {(row.get("type"), row.get("step")): row for row in self.run.metrics()
                      if int(row.get("step", 0)) <= resume_step}
            keep = sorted(latest.values(), key=lambda row: (int(row["step"]), row.get("type") != "step"))
            write_text(self.run.metrics_file, "".join(json.dumps(row) + "\n" for row in keep))
            drop_samples_after(self.run, resume_step)
        self.metrics_file = open(self.run.metrics_file, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.writer = None
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self.writer = SummaryWriter(log_dir=str(self.run.tensorboard_dir), purge_step=purge)

    def rewind(self, step: int) -> None:
        """Workers restarted after a failure continue from the checkpoint of `step`: what was logged after it goes."""
        self.close()
        self.open(step)
        self.last_step = step

    def record(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start" and int(event.get("step", 0)) < self.last_step:
            self.rewind(int(event.get("step", 0)))
            return
        if "step" in event:
            self.last_step = max(self.last_step, int(event["step"]))
        if kind == "samples":
            self.record_samples(int(event["step"]), event["rows"])
            return
        if kind not in ("step", "eval"):
            return
        self.metrics_file.write(json.dumps(event, default=float) + "\n")
        self.metrics_file.flush()
        if self.writer:
            self.write_tensorboard(event)
        if self.mlflow:
            self.mlflow.record(event)

    def write_tensorboard(self, event: dict[str, Any]) -> None:
        step = int(event["step"])
        if event["type"] == "step":
            for key, tag in TRAIN_SCALARS.items():
                self.writer.add_scalar(tag, event[key], step)
            self.writer.add_scalar("train/perplexity", perplexity(event["loss"]), step)
        else:
            for key, value in event.items():
                if key.startswith("eval_") and isinstance(value, (int, float)) and key != "eval_seconds":
                    self.writer.add_scalar(f"eval/{key.removeprefix('eval_')}", value, step)
            if event.get("train_loss") is not None:
                self.writer.add_scalar("train/loss_since_last_eval", event["train_loss"], step)
        self.writer.flush()

    def record_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Every answer of a validation event to eval_samples.jsonl; the first few to TensorBoard's text tab."""
        with open(self.samples_path, "a", encoding="utf-8") as samples:
            samples.write("".join(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n" for row in rows))
        if not self.writer:
            return
        table = ["| prompt | expected | answer |", "|---|---|---|"]
        table += [f"| {cell(r['prompt'])} | {cell(r['reference'])} | {cell(r['answer'])} |" for r in rows[:TEXT_SAMPLES]]
        self.writer.add_text("eval/samples", "\n".join(table), step)

    def close(self) -> None:
        self.metrics_file.close()
        if self.writer:
            self.writer.close()
        if self.mlflow:
            self.mlflow.flush()

    def finish(self, status: str) -> None:
        """The end of this invocation (after results.json and the report, when it completed): MLflow's run gets the
        run's files and `status` (FINISHED, FAILED or KILLED)."""
        if self.mlflow:
            self.mlflow.finish(status)


class MlflowTracking:
    """A run's MLflow run: its resolved config as params, tags, the metrics of metrics.jsonl at the same steps, and
    its files at the end. A resumed run continues the MLflow run its directory names; a search's trial nests under
    the search's run.

    MLflow cannot delete what it logged. Where metrics.jsonl drops the steps a resumed or restarted run trains
    again, MLflow keeps what it first logged for them and skips them the second time, so no metric has two rows for
    one step (the checkpoint restores the RNG, so the steps trained again log what they logged before)."""

    FLUSH_SECONDS = 5.0  # metrics go in one call per this many seconds, and at each validation event

    def __init__(self, run: RunDir, mlflow: MlflowRun, log_model: bool, note: Callable[[str], None]):
        self.run, self.mlflow, self.log_model, self.note = run, mlflow, log_model, note
        self.last_steps = mlflow.last_steps()
        self.pending: list[tuple[str, float, int, int]] = []
        self.flushed = time.monotonic()
        self.failed = False

    @classmethod
    def open(cls, run: RunDir, config: TrainConfig, note: Callable[[str], None]) -> MlflowTracking:
        from tuneforge.observe.mlflow_runs import open_run, run_tags
        from tuneforge.rundir import ExperimentDir

        search = ExperimentDir.of_trial(run.path)
        mlflow = open_run(run.mlflow_file, str(config.mlflow_tracking_uri), str(config.mlflow_experiment), run.name,
                          run_tags(config.task, config.model_id, run.path), search.mlflow_file if search else None)
        mlflow.log_config(run.config_file)
        return cls(run, mlflow, config.mlflow_log_model, note)

    def record(self, event: dict[str, Any]) -> None:
        step, timestamp = int(event["step"]), int(1000 * event.get("time", time.time()))
        for name, value in mlflow_metrics(event).items():
            if step > self.last_steps.get(name, -1):
                self.pending.append((name, value, timestamp, step))
                self.last_steps[name] = step
        if event["type"] == "eval" or time.monotonic() - self.flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Metrics MLflow refuses (a server gone away) wait for the next flush: metrics.jsonl has them all."""
        self.flushed = time.monotonic()
        if not self.pending:
            return
        try:
            self.mlflow.log_metrics(self.pending)
        except TuneforgeError as exc:
            self.warn(exc)
        else:
            self.pending = []

    def finish(self, status: str) -> None:
        files = [self.run.config_file, self.run.plan_file, self.run.lr_plot, self.run.report_file,
                 self.run.results_file]
        try:
            self.mlflow.log_artifacts(files + ([self.run.best_dir] if self.log_model else []))
            self.mlflow.end(status)
        except TuneforgeError as exc:
            self.warn(exc)

    def warn(self, exc: TuneforgeError) -> None:
        if not self.failed:
            self.note(f"{exc} (metrics.jsonl keeps every metric)")
            self.failed = True


def mlflow_metrics(event: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row as MLflow metrics: train/<key> for a step, eval/<key> (less its eval_ prefix) for a
    validation event."""
    kind = "train" if event["type"] == "step" else "eval"
    return {f"{kind}/{key.removeprefix('eval_')}": float(value) for key, value in event.items()
            if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool)}


TEXT_SAMPLES = 8


def cell(text: str, limit: int = 200) -> str:
    """Text made safe for one Markdown table cell."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def drop_samples_after(run: RunDir, step: int) -> None:
    """A resumed run trains the steps after `step` again: their validation answers are dropped."""
    path = run.generation_samples_file
    if path.is_file():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and int(json.loads(line).get("step", 0)) <= step]
        write_text(path, "".join(kept))
