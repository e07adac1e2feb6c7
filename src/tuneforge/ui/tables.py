"""What a command shows when its work is done: run summaries, plans, comparisons, evaluation reports, checks,
searches, run listings and export reports. Each function takes what the library returned and prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from tuneforge.rundir import ExperimentDir, RunDir
from tuneforge.ui.console import console, key_value_table, show_note


def titled_table(title: str, **options: Any) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", **options)


# --- train / plan ---------------------------------------------------------------------------------------------


def show_run_summary(result: Any, hint: str | None = None, dashboard: str | None = None) -> None:
    """A finished run: its best checkpoint and metric, losses, speed, where to look next."""
    results = result.results
    best = results.get("best_metrics") or {}
    rows = [
        ("run", result.run_dir),
        ("best checkpoint", results.get("best_checkpoint")),
        (f"best {results.get('best_metric')}", best.get(results.get("best_metric"), "n/a")),
        ("best at step", best.get("step", "n/a")),
        ("train loss first → last", f"{results.get('first_train_loss') or 0:.4f} → {results.get('last_train_loss') or 0:.4f}"),
        ("tokens/s (mean)", results.get("tokens_per_second")),
        ("wall time", f"{results.get('train_seconds')} s"),
    ]
    console.print(key_value_table("run complete", rows))
    run = RunDir(result.run_dir)
    if run.tensorboard_dir.is_dir():  # trackers may leave TensorBoard out
        console.print(f"TensorBoard: [bold]tensorboard --logdir {result.run_dir}[/bold]")
    show_mlflow(run.mlflow_file)
    if getattr(result, "report", None):
        console.print(f"Report:      [bold]{result.report}[/bold]")
    if hint:
        console.print(f"Try it:      [bold]{hint}[/bold]")
    if dashboard:
        console.print(f"Ray dashboard: {dashboard}")


def show_plan(prepared: Any) -> None:
    console.print(key_value_table("data", data_rows(prepared)))
    if prepared.task.spec.learns_preferences:
        console.print(key_value_table("preference", preference_rows(prepared)))
    console.print(key_value_table("schedule", schedule_rows(prepared)))


def preference_rows(prepared: Any) -> list[tuple[str, Any]]:
    """The loss, where the run starts and what it is compared with."""
    config, start = prepared.config, prepared.start
    rows: list[tuple[str, Any]] = [("loss", config.loss_type), ("beta", config.beta)]
    if config.loss_type == "simpo":
        rows.append(("simpo_gamma", config.simpo_gamma))
    if config.label_smoothing:
        rows.append(("label_smoothing", config.label_smoothing))
    if start.init_dir or start.base_dir:
        what = "its LoRA adapter keeps training" if start.init_dir else "its fully fine-tuned weights as the base"
        rows.append(("starts from", f"{start.init_dir or start.base_dir} ({what})"))
    if config.reference is None:
        rows.append(("reference model", f"none ({config.loss_type} needs none)"))
        return rows
    reference = {"init": "the model the run starts from", "base": "the base model, adapter off"}
    rows.append(("reference model", reference.get(config.reference, f"the adapter of {start.reference_dir}")))
    rows.append(("reference log-probs", f"computed once before step 1 for {len(prepared.data.train) + len(prepared.data.valid)} "
                 "rows, kept with the run (reused by --resume, trials and reruns)"))
    return rows


def data_rows(prepared: Any) -> list[tuple[str, Any]]:
    data = prepared.data
    rows: list[tuple[str, Any]] = [("shape", data.shape), ("context_length", data.context_length)]
    pairs = prepared.task.spec.learns_preferences and prepared.config.loss_type != "kto"
    for name, stats in data.stats.items():
        rows.append((f"{name} {'pairs' if pairs and name in ('train', 'valid') else 'rows'}", stats.rows))
        rows.append((f"{name} tokens p50 / p95 / max", f"{stats.p50} / {stats.p95} / {stats.max}"))
        rows.append((f"{name} {data.long_rows}", stats.truncated))
    if data.labels:
        rows.append(("labels", data.labels))
    schema = getattr(data, "answer_schema", None)
    if schema:
        rows.append(("answer schema (inferred)", describe_schema(schema)))
    return rows


def describe_schema(schema: dict[str, Any]) -> str:
    """{"meetings": [{"person", "day", "attendees"}]}-style summary of an inferred answer schema."""
    schema = schema.get("anyOf", [schema])[0]
    if schema.get("type") == "object":
        required = set(schema.get("required", []))
        keys = [f"{key}{'' if key in required else '?'}: {describe_schema(sub)}"
                for key, sub in schema.get("properties", {}).items()]
        return "{" + ", ".join(keys) + "}"
    if schema.get("type") == "array":
        return f"[{describe_schema(schema.get('items') or {})}]"
    if "enum" in schema:
        return " | ".join(map(repr, schema["enum"]))
    kind = schema.get("type", "any")
    return "/".join(kind) if isinstance(kind, list) else kind


def batch_layout(config: Any) -> str:
    if config.padding_free:
        return "padding-free (rows end to end)"
    if config.padding == "max_length":
        return f"padded to context_length ({config.context_length})"
    multiple = f", a multiple of {config.pad_to_multiple_of}" if config.pad_to_multiple_of else ""
    return f"padded to the longest row{multiple}"


def schedule_rows(prepared: Any) -> list[tuple[str, Any]]:
    plan = prepared.plan
    return [
        ("rows per optimizer step", plan.global_batch_size),
        ("batches", batch_layout(prepared.config)),
        ("steps per epoch", plan.steps_per_epoch),
        ("epochs", plan.num_epochs),
        ("total steps", plan.total_steps),
        ("warm-up steps", plan.warmup_steps),
        ("validation + checkpoint at steps", plan.event_steps),
        ("... at epochs", plan.event_epochs()),
    ]


# --- generate -------------------------------------------------------------------------------------------------


def show_comparison(pairs: list[tuple[Any, dict[str, Any]]], base: list[Any], tuned: list[Any]) -> None:
    """The base model's and the fine-tuned model's completions side by side, one row per prompt."""
    table = titled_table("before → after fine-tuning", show_lines=True)
    table.add_column("prompt", ratio=2)
    table.add_column("base model (before)", ratio=3)
    table.add_column("fine-tuned (after)", ratio=3)
    for (prompt, _), before, after in zip(pairs, base, tuned, strict=True):
        shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        table.add_row(shown, mark_finish(before), mark_finish(after))
    console.print(table)


def mark_finish(completion: Any) -> str:
    suffix = "" if completion.finish_reason == "stop" else " [dim](… did not stop: max_new_tokens reached)[/dim]"
    return completion.text.replace("[", "\\[") + suffix


# --- eval / check ---------------------------------------------------------------------------------------------


def show_eval_view(view: Any) -> None:
    """An evaluation as its task describes it (an eval_views.EvalView): tables, lines, then notes."""
    for block in view.blocks:
        if isinstance(block, str):
            console.print(block, highlight=False, markup=False)
            continue
        table = titled_table(block.title, show_lines=block.show_lines)
        for index, column in enumerate(block.columns):
            text = index < block.text_columns
            table.add_column(column, justify="left" if text else "right", ratio=1 if block.show_lines and text else None)
        for row in block.rows:
            table.add_row(*(Text(cell) for cell in row))
        if block.total:
            table.add_section()
            table.add_row(*(Text(cell, style="bold" if index == 0 else "") for index, cell in enumerate(block.total)))
        console.print(table)
    for note in view.notes:
        show_note(note)



def show_checks(spec: Path, results: list[Any]) -> None:
    """Behavioural checks: pass/FAIL per case, then the counts."""
    table = titled_table(f"behavioural checks: {spec}")
    for column in ("", "kind", "case", "predictions"):
        table.add_column(column)
    for result in results:
        table.add_row("[green]pass[/green]" if result.passed else "[red]FAIL[/red]", result.kind, result.name,
                      result.detail)
    console.print(table)
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")


# --- tune / runs ----------------------------------------------------------------------------------------------


def show_search_result(result: Any) -> None:
    """A finished search: every trial, best first, and where its files are."""
    show_trials(result.trials, result.best)
    console.print(f"experiment: {result.experiment_dir} (trials.csv, best_run.json, objective_by_trial.png)")
    console.print(f"TensorBoard over every trial: [bold]tensorboard --logdir {result.experiment_dir}[/bold]")
    show_mlflow(ExperimentDir(result.experiment_dir).mlflow_file)


def show_mlflow(record_file: Path) -> None:
    """The command that opens MLflow's UI on the store a run or search logged to, if it logged to one."""
    from tuneforge.observe.mlflow_runs import RunRecord, ui_command

    record = RunRecord.read(record_file)
    if record:
        console.print(f"MLflow:      [bold]{ui_command(record.tracking_uri)}[/bold] (run {record.run_id})")


def show_trials(trials: list[dict[str, Any]], best: dict[str, Any]) -> None:
    params = sorted({key for trial in trials for key in trial if key.startswith("param.")})
    table = titled_table(f"trials ({best['metric']}, {best['mode']})")
    for column in ("trial", "status", "evals", *[p.removeprefix("param.") for p in params], "best objective"):
        table.add_column(column)
    for trial in sorted(trials, key=lambda t: (t["best_objective"] is None, t["best_objective"] or 0),
                        reverse=best["mode"] == "max"):
        marker = " ★" if trial["run_id"] == best["run_id"] else ""
        objective = trial["best_objective"]
        table.add_row(trial["run_id"] + marker, trial["status"], str(trial["iterations"]),
                      *[str(trial.get(p, "")) for p in params], f"{objective:.4f}" if objective is not None else "-")
    console.print(table)


def show_runs(directory: Path, entries: list[Any]) -> None:
    table = titled_table(f"runs in {directory}")
    for column in ("name", "kind", "status", "task", "best", "path"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.name, entry.kind, entry.status, entry.task, entry.best, str(entry.path))
    console.print(table)


def show_best_run(experiment: Path, best: dict[str, Any]) -> None:
    rows = [("trial", best["run_id"]), (f"objective ({best['metric']}, {best['mode']})", best["objective"]),
            *[(f"  {k}", v) for k, v in best["hyperparameters"].items()], ("checkpoint", best["checkpoint"])]
    console.print(key_value_table(f"best run of {experiment}", rows))


# --- export ---------------------------------------------------------------------------------------------------


def show_export(result: Any) -> None:
    console.print(key_value_table(f"export: {result.artifact}", report_rows(result.report)))
    console.print(f"report: {result.report_file}")


def report_rows(report: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in report.items():
        if isinstance(value, dict):
            rows.extend(report_rows(value, f"{prefix}{key}."))
        elif key not in ("tensor_types",):
            rows.append((f"{prefix}{key}", value))
    return rows
