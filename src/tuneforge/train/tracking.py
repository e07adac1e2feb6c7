"""What a run records as it trains: `metrics.jsonl` (one JSON object per log line or validation) and TensorBoard
event files. The driver writes both from the workers' event stream, so they land in the run directory wherever the
workers run."""

from __future__ import annotations

import json
from typing import Any

from tuneforge.atomic import write_text
from tuneforge.metrics import perplexity
from tuneforge.rundir import RunDir

TRAIN_SCALARS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
                 "tokens_per_second": "train/tokens_per_second"}


class Tracker:
    """Appends to a run's metrics. When a run resumes from step N, what was logged after N is dropped (from
    metrics.jsonl, and hidden in TensorBoard with purge_step): those steps are about to be trained again."""

    def __init__(self, run: RunDir, resume_step: int | None = None):
        self.run, self.samples_path = run, run.generation_samples_file
        self.last_step = resume_step or 0
        self.open(resume_step)

    def open(self, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if resume_step is not None:
            # One row per (kind, step): an attempt cut short may have logged steps it then trained again.
            latest = {(row.get("type"), row.get("step")): row for row in self.run.metrics()
                      if int(row.get("step", 0)) <= resume_step}
            keep = sorted(latest.values(), key=lambda row: (int(row["step"]), row.get("type") != "step"))
            write_text(self.run.metrics_file, "".join(json.dumps(row) + "\n" for row in keep))
            drop_samples_after(self.run, resume_step)
        self.metrics_file = open(self.run.metrics_file, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
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
        step = int(event["step"])
        if kind == "step":
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
        table = ["| prompt | expected | answer |", "|---|---|---|"]
        table += [f"| {cell(r['prompt'])} | {cell(r['reference'])} | {cell(r['answer'])} |" for r in rows[:TEXT_SAMPLES]]
        self.writer.add_text("eval/samples", "\n".join(table), step)

    def close(self) -> None:
        self.metrics_file.close()
        self.writer.close()


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
