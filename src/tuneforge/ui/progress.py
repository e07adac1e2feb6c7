"""Live displays: a progress bar for training (loss, tokens/s, time left) and a view of a hyperparameter search."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tuneforge.ui.console import console, show_note, show_phase

PLAIN_LOG_EVERY_S = 30.0  # without a live terminal, a progress line at most this often


class RichReporter:
    """Shows a run's progress. Workers' events arrive on a background thread; Rich's Progress is thread-safe."""

    def __init__(self, title: str = "training", *, debug: bool = False):
        self.title = title
        self.debug = debug  # also show where the start-up seconds went
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=28),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task_id: Any = None
        self.prepare_id: Any = None
        self.last_plain = 0.0

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(self, message: str) -> None:
        if self.task_id is None:
            show_phase(message)

    def note(self, message: str) -> None:
        show_note(message)

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "prepare":
            self.preparation(event)
        elif kind == "start":
            self.start(event)
        elif kind == "step" and self.task_id is not None:
            self.step(event)
        elif kind == "eval":
            self.evaluation(event)
        elif kind == "reference":
            done = f"computed in {event['seconds']:.1f} s, once" if "seconds" in event else event["source"]
            console.print(f"[dim]· reference log-probabilities of {event['rows']:,} rows: {done} (kept with the run "
                          "and its checkpoints)[/dim]")

    def preparation(self, event: dict[str, Any]) -> None:
        """Ray Data tokenizing streamed data: chunks done of all, rows so far."""
        stats = f"{event['rows']:,} rows · {event['bytes'] / 2**20:,.1f} MiB in all"
        if self.prepare_id is None:
            self.prepare_id = self.progress.add_task("tokenizing (Ray Data)", total=event["total"], stats=stats)
        self.progress.update(self.prepare_id, completed=event["done"], stats=stats)

    def start(self, event: dict[str, Any]) -> None:
        counts = event.get("trainable", {})
        share = 100 * counts.get("trainable", 0) / max(counts.get("total", 1), 1)
        console.print(
            f"[dim]· {event['world_size']} worker(s) on {event['device']}, {event['precision']}, "
            f"{counts.get('trainable', 0):,} trainable parameters ({share:.2f}%)[/dim]"
        )
        if event.get("restart"):
            console.print(f"[yellow]· workers restarted (attempt {event['restart'] + 1}): continuing from the "
                          f"checkpoint of step {event.get('step', 0)}[/yellow]")
            if event.get("resized"):
                console.print(f"[yellow]· {event['resized']}[/yellow]")
        elif event.get("step"):
            console.print(f"[dim]· resuming at step {event['step']}[/dim]")
        if self.debug and event.get("startup_seconds"):
            from tuneforge.train.startup import startup_line

            console.print(f"[dim]· {startup_line(event['startup_seconds'])}[/dim]", highlight=False)
        if self.task_id is not None:  # a restart: the same bar goes back to the checkpoint's step
            self.progress.update(self.task_id, completed=event.get("step", 0))
            return
        self.task_id = self.progress.add_task(self.title, total=event["total_steps"], completed=event.get("step", 0),
                                              stats="")

    def step(self, event: dict[str, Any]) -> None:
        stats = f"loss {event['loss']:.4f} · {event['tokens_per_second']:,.0f} tok/s · lr {event['lr']:.2e}"
        self.progress.update(self.task_id, completed=event["step"], stats=stats)
        if not console.is_terminal and time.monotonic() - self.last_plain > PLAIN_LOG_EVERY_S:
            self.last_plain = time.monotonic()
            total = next((task.total for task in self.progress.tasks if task.id == self.task_id), "?")
            console.print(f"step {event['step']}/{total} · {stats}")

    def evaluation(self, event: dict[str, Any]) -> None:
        shown = [f"{key} {value:.4f}" for key, value in event.items()
                 if key.startswith("eval_") and key != "eval_seconds" and isinstance(value, (int, float))]
        train_loss = f"train_loss {event['train_loss']:.4f} · " if event.get("train_loss") is not None else ""
        console.print(f"[cyan]step {event['step']} (epoch {event['epoch']:.2f})[/cyan] {train_loss}" + " · ".join(shown)
                      + " · checkpoint saved")


class SearchDisplay:
    """Live view of a hyperparameter search: one line per trial result, a bar of finished trials."""

    def __init__(self, metric: str):
        self.metric = metric
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.task_id = self.progress.add_task("trials finished", total=None)
        self.finished = 0

    def __enter__(self) -> SearchDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, message: str) -> None:
        show_note(message)

    def expect(self, trials: int) -> None:
        self.progress.update(self.task_id, total=trials)

    def auto_plan(self, plan: Any) -> None:
        """What `tune --auto` built, and why, before any trial starts."""
        from rich.table import Table

        self.metric = plan.metric
        table = Table(title="tune --auto: the search", title_justify="left", show_lines=False)
        for column in ("", "value", "why"):
            table.add_column(column, overflow="fold")
        for what, value, why in plan.rows():
            table.add_row(what, value, why)
        console.print(table)
        for note in plan.notes:
            show_note(note)

    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else ""
        loss = result.get("eval_loss")
        extra = f" · eval_loss {loss:.4f}" if isinstance(loss, (int, float)) and self.metric != "eval_loss" else ""
        params = result.get("config") or {}
        tried = (" · " + ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                                   for key, value in params.items())
                 if params and result.get("training_iteration") == 1 else "")
        console.print(f"[cyan]trial_{trial_id}[/cyan] eval {result.get('training_iteration')} "
                      f"(step {result.get('step')}) {shown}{extra}{tried}", highlight=False)

    def trial_done(self, trial_id: str, status: str) -> None:
        self.finished += 1
        colour = "green" if status == "done" else "red"
        console.print(f"[{colour}]trial_{trial_id} {status}[/{colour}]", highlight=False)
        self.progress.update(self.task_id, completed=self.finished)
