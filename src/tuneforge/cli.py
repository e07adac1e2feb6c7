"""The `tuneforge` command. Each command parses its arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from tuneforge.errors import TuneforgeError
from tuneforge.ui import console, error_console, key_value_table, show_note

# click's UsageError, whichever copy this Typer uses (recent Typers vendor click): BadParameter's base either way.
USAGE_ERROR = typer.BadParameter.__base__
HELP_REQUEST = getattr(sys.modules[USAGE_ERROR.__module__], "NoArgsIsHelpError", ())  # a bare `tuneforge`


class OneLineUsageErrors(TyperGroup):
    """A bad option value or a missing argument ends like every other error: one line and exit code 2, instead of
    Typer's boxed usage message."""

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except HELP_REQUEST:
        raise
    except USAGE_ERROR as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        error_console.print(f"[bold red]error:[/bold red] {exc.format_message()}{hint}", highlight=False,
                            soft_wrap=True)
        raise typer.Exit(2) from None


app = typer.Typer(
    cls=OneLineUsageErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Config-driven fine-tuning on Ray Train: train, plan, generate, and more. Add --debug for tracebacks.",
)
DEBUG = {"on": False}

SetOption = typer.Option(None, "--set", "-s", help="override a config key: --set learning_rate=3e-4 (repeatable)")


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="show tracebacks and Ray's logs on errors")) -> None:
    DEBUG["on"] = debug
    if not debug:
        quiet_libraries()


def quiet_libraries() -> None:
    """Library chatter (deprecation warnings, weight-loading bars) would bury the progress display."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("transformers", "peft", "accelerate", "torch.distributed", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)


def friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one red line and exit code 2; Ctrl-C in exit code 130. `--debug` shows tracebacks."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (TuneforgeError, OSError) as exc:
            if DEBUG["on"]:
                raise
            error_console.print(f"[bold red]error:[/bold red] {describe_error(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            error_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper


def describe_error(exc: BaseException) -> str:
    """One line. An OSError that escaped the library (a full disk, a read-only or missing output directory) names
    the path and the reason, without the errno noise."""
    if isinstance(exc, OSError) and not isinstance(exc, TuneforgeError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc} (check the path, its permissions and free disk space)"
    return str(exc)


def show_notes(notes: list[str]) -> None:
    for note in notes:
        show_note(note)


def refuse_ignored(conflicts: list[tuple[Any, str]]) -> None:
    """An option that would have no effect is refused, never silently ignored: (given, why) pairs."""
    for given, why in conflicts:
        if given:
            raise TuneforgeError(why)


# ----------------------------------------------------------------------------------------------------------------
# train / plan
# ----------------------------------------------------------------------------------------------------------------


@app.command()
@friendly
def train(
    config: Optional[Path] = typer.Argument(None, help="the run's YAML config"),
    set_: Optional[list[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue RUN from its latest checkpoint"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (directory under output_dir)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run of the same name"),
    address: Optional[str] = typer.Option(None, "--address", help="join a Ray cluster (e.g. auto, ray://host:10001)"),
    dashboard: bool = typer.Option(False, "--dashboard", help="start Ray's dashboard on 127.0.0.1"),
) -> None:
    """Fine-tune a model as CONFIG describes (or continue a run with --resume RUN)."""
    from tuneforge.cluster import dashboard_url
    from tuneforge.config import load_config
    from tuneforge.train import resume as resume_run
    from tuneforge.train import train as train_run
    from tuneforge.ui import RichReporter

    refuse_ignored([
        (resume and config, f"give CONFIG or --resume RUN, not both: a resumed run keeps its config.yaml; drop {config}"),
        (resume and name, "--name names a new run; a resumed run keeps its directory, so drop --name"),
        (resume and overwrite, "--overwrite replaces a run; --resume continues one, so drop one of them"),
    ])
    overrides = list(set_ or []) + ([f"run_name={name}"] if name else [])
    with RichReporter() as reporter:
        if resume:
            result = resume_run(resume, overrides=overrides, address=address, dashboard=dashboard, reporter=reporter,
                                debug=DEBUG["on"])
        else:
            if config is None:
                raise TuneforgeError("give a CONFIG file, or --resume RUN to continue a run")
            loaded = load_config(config, overrides)
            show_notes(loaded.notes)
            result = train_run(loaded, address=address, dashboard=dashboard, overwrite=overwrite, reporter=reporter,
                               debug=DEBUG["on"])
    show_run_summary(result)
    if dashboard_url():
        console.print(f"Ray dashboard: {dashboard_url()}")


def show_run_summary(result: Any) -> None:
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
    console.print(f"TensorBoard: [bold]tensorboard --logdir {result.run_dir}[/bold]")
    if results.get("task") == "causal_lm":
        console.print(f"Try it:      [bold]tuneforge generate {result.run_dir} --prompt \"...\"[/bold]")


@app.command()
@friendly
def plan(
    config: Path = typer.Argument(..., help="the run's YAML config"),
    set_: Optional[list[str]] = SetOption,
    png: Optional[Path] = typer.Option(None, "--png", help="where to write the learning-rate plot"),
) -> None:
    """Show what a run will do before it trains: data statistics, steps, epochs, checkpoint events, LR plot."""
    from tuneforge.config import load_config
    from tuneforge.plan import plot_learning_rates
    from tuneforge.train import prepare_run

    loaded = load_config(config, list(set_ or []))
    show_notes(loaded.notes)
    prepared = prepare_run(loaded)
    show_notes(prepared.data.notes)
    console.print(key_value_table("data", data_rows(prepared)))
    console.print(key_value_table("schedule", schedule_rows(prepared)))
    target = png or Path(prepared.config.output_dir) / "plans" / f"{loaded.source_name}-lr_schedule.png"
    plot_learning_rates(prepared.config, prepared.plan, target)
    console.print(f"learning-rate schedule: {target}")


def data_rows(prepared: Any) -> list[tuple[str, Any]]:
    data = prepared.data
    rows: list[tuple[str, Any]] = [("shape", data.shape), ("context_length", data.context_length)]
    for name, stats in data.stats.items():
        rows.append((f"{name} rows", stats.rows))
        rows.append((f"{name} tokens p50 / p95 / max", f"{stats.p50} / {stats.p95} / {stats.max}"))
        rows.append((f"{name} truncated by context_length", stats.truncated))
    if data.labels:
        rows.append(("labels", data.labels))
    return rows


def schedule_rows(prepared: Any) -> list[tuple[str, Any]]:
    plan_ = prepared.plan
    return [
        ("rows per optimizer step", plan_.global_batch_size),
        ("steps per epoch", plan_.steps_per_epoch),
        ("epochs", plan_.num_epochs),
        ("total steps", plan_.total_steps),
        ("warm-up steps", plan_.warmup_steps),
        ("validation + checkpoint at steps", plan_.event_steps),
        ("... at epochs", plan_.event_epochs()),
    ]


# ----------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------


@app.command()
@friendly
def generate(
    run: Optional[Path] = typer.Argument(None, help="a run directory (uses best/) or a checkpoint directory"),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="run a GGUF model through llama.cpp instead"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="with --gguf: a GGUF LoRA adapter to apply"),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="prompt text (repeatable)"),
    input_file: Optional[Path] = typer.Option(None, "--input", help="JSONL of chat `messages` or `prompt` rows"),
    output: Optional[Path] = typer.Option(None, "--output", help="write one JSON line per input row here"),
    system: Optional[str] = typer.Option(None, "--system", help="system message for chat models"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (default)"),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    compare_base: bool = typer.Option(False, "--compare-base", help="also answer with the base model (adapter off)"),
) -> None:
    """Complete prompts with a fine-tuned model (base + adapter, unmerged; stops at the trained end-of-turn)."""
    from tuneforge.generate import GenerationSettings, Generator, read_prompt_rows

    if not prompt and not input_file:
        raise TuneforgeError("give --prompt TEXT or --input FILE")
    refuse_ignored([
        (lora and not gguf, "--lora applies a GGUF adapter and needs --gguf FILE (a run's own adapter loads with RUN)"),
        (output and not input_file, "--output writes one line per --input row; give --input FILE or drop --output"),
        (gguf and run, f"give RUN or --gguf FILE, not both; drop {run} or --gguf"),
        (gguf and compare_base, "--compare-base switches a run's LoRA adapter off; it does not apply to --gguf"),
        (prompt and input_file, "give --prompt or --input, not both: with --input the prompts come from its rows"),
    ])
    settings = GenerationSettings(max_new_tokens, temperature, top_p, batch_size)
    if gguf:
        generate_gguf(gguf, lora, prompt or [], input_file, system, settings, output)
        return
    if run is None:
        raise TuneforgeError("give a RUN (or checkpoint) directory, or --gguf FILE")
    with error_console.status(f"loading {run}"):  # on stderr and transient: stdout may be the JSONL of completions
        generator = Generator.from_path(run)
    if input_file:
        pairs = read_prompt_rows(input_file)
        generate_rows(generator, pairs, settings, system, output, compare_base)
        return
    for text in prompt or []:
        if compare_base:
            show_comparison(generator, [(text, {"prompt": text})], settings, system)
            continue
        console.print(f"[bold cyan]> {text}[/bold cyan]")
        for piece in generator.stream(text, settings, system=system):
            console.out(piece, end="", highlight=False)
        console.out("")


def generate_gguf(model: Path, lora: Path | None, prompts: list[str], input_file: Path | None, system: str | None,
                  settings: Any, output: Path | None) -> None:
    from tuneforge.generate import read_prompt_rows
    from tuneforge.gguf_chat import GgufChat
    from tuneforge.atomic import write_text

    rows = read_prompt_rows(input_file) if input_file else []  # bad rows are refused before llama.cpp starts
    with GgufChat(model, lora) as chat:
        if input_file:
            lines = [json.dumps({**row, "completion": chat.complete(messages, settings, system=system)},
                                ensure_ascii=False) for messages, row in rows]
            if output:
                write_text(output, "\n".join(lines) + "\n")
                console.print(f"wrote {len(lines)} completions to {output}")
            else:
                sys.stdout.write("\n".join(lines) + "\n")
            return
        for text in prompts:
            console.print(f"[bold cyan]> {text}[/bold cyan]")
            for piece in chat.stream(text, settings, system=system):
                console.out(piece, end="", highlight=False)
            console.out("")


def generate_rows(generator: Any, pairs: list[tuple[Any, dict[str, Any]]], settings: Any, system: str | None,
                  output: Path | None, compare_base: bool) -> None:
    from tuneforge.atomic import write_text

    prompts = [prompt for prompt, _ in pairs]
    completions = generator.complete(prompts, settings, system=system)
    base = generator.complete(prompts, settings, system=system, use_base=True) if compare_base else None
    lines = []
    for index, ((_, row), completion) in enumerate(zip(pairs, completions, strict=True)):
        record = {**row, "completion": completion.text, "finish_reason": completion.finish_reason}
        if base:
            record["base_completion"] = base[index].text
        lines.append(json.dumps(record, ensure_ascii=False))
    if output:
        write_text(output, "\n".join(lines) + "\n")
        console.print(f"wrote {len(lines)} completions to {output}")
    if compare_base and base:
        print_comparison(pairs, base, completions)
    elif not output:
        sys.stdout.write("\n".join(lines) + "\n")


def show_comparison(generator: Any, pairs: list[tuple[Any, dict[str, Any]]], settings: Any, system: str | None) -> None:
    prompts = [prompt for prompt, _ in pairs]
    tuned = generator.complete(prompts, settings, system=system)
    base = generator.complete(prompts, settings, system=system, use_base=True)
    print_comparison(pairs, base, tuned)


def print_comparison(pairs: list[tuple[Any, dict[str, Any]]], base: list[Any], tuned: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="before → after fine-tuning", show_lines=True, title_justify="left", title_style="bold")
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


# ----------------------------------------------------------------------------------------------------------------
# eval / predict / check
# ----------------------------------------------------------------------------------------------------------------


@app.command("eval")
@friendly
def eval_(
    run: Path = typer.Argument(..., help="a run directory (uses best/) or a checkpoint directory"),
    data: Path = typer.Option(..., "--data", help="labelled CSV/JSONL (classification) or chat/prompt JSONL"),
    name: Optional[str] = typer.Option(None, "--name", help="results go to RUN/eval/NAME (default: data file name)"),
    output: Optional[Path] = typer.Option(None, "--output", help="write results here instead"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    allow_unseen_labels: bool = typer.Option(False, "--allow-unseen-labels",
                                             help="exit 0 even if some labels never appear in training"),
) -> None:
    """Score a run on a data file: classification P/R/F1 + confusion matrix, or causal loss + stop rate."""
    from tuneforge.evaluate import evaluate_causal, evaluate_classifier, refuse_unseen_labels
    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint

    task = CheckpointMeta.read(resolve_checkpoint(run)).task
    if task == "classification":
        report = evaluate_classifier(run, data, name=name, output_dir=output, batch_size=batch_size)
        show_classification_report(report.results)
        console.print(f"results: {report.output_dir / 'results.json'} · confusion matrix: "
                      f"{report.output_dir / 'confusion_matrix.png'}")
        if not allow_unseen_labels:
            refuse_unseen_labels(report)
    elif allow_unseen_labels:
        raise TuneforgeError(f"--allow-unseen-labels applies to classification runs; {run} is a {task} run")
    else:
        report = evaluate_causal(run, data, name=name, output_dir=output, batch_size=min(batch_size, 8))
        rows = [(key, report.results[key]) for key in ("rows", "eval_loss", "perplexity", "generated", "stopped_rate",
                                                        "exact_match")]
        console.print(key_value_table(f"evaluation on {data}", rows))
        console.print(f"results: {report.output_dir / 'results.json'}")


def show_classification_report(results: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"evaluation on {results['data']} ({results['rows']} rows)", title_justify="left",
                  title_style="bold")
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, scores in results["per_class"].items():
        unseen = " [yellow](never trained)[/yellow]" if label in results["unseen_labels"] else ""
        table.add_row(label + unseen, *(f"{scores[k]:.3f}" for k in ("precision", "recall", "f1")), str(scores["support"]))
    table.add_section()
    table.add_row("[bold]weighted[/bold]", *(f"{results[k]:.3f}" for k in ("precision", "recall", "f1")),
                  str(results["rows"]))
    console.print(table)
    console.print(f"accuracy {results['accuracy']:.3f}")
    if results["unseen_labels"]:
        from tuneforge.evaluate import unseen_summary

        show_note(f"{unseen_summary(results)} never appear in training; they count as wrong")


@app.command()
@friendly
def predict(
    run: Path = typer.Argument(..., help="a classification run or checkpoint"),
    text: Optional[list[str]] = typer.Option(None, "--text", "-t", help="text to classify (repeatable)"),
    input_file: Optional[Path] = typer.Option(None, "--input", help="CSV/JSONL with the run's text fields"),
    output: Optional[Path] = typer.Option(None, "--output", help="write JSON lines here instead of stdout"),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                              help="below this confidence, predict --fallback"),
    fallback: Optional[str] = typer.Option(None, "--fallback", help="label for low-confidence predictions"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Label texts with a probability per class, as JSON lines."""
    from tuneforge.atomic import write_text
    from tuneforge.predict import Predictor, apply_threshold

    if not text and not input_file:
        raise TuneforgeError("give --text TEXT or --input FILE")
    if (threshold is None) != (fallback is None):
        raise TuneforgeError("--threshold and --fallback go together")
    predictor = Predictor.from_path(run)
    rows: list[dict[str, Any]] = [{"text": t} for t in text or []]
    texts = list(text or [])
    if input_file:
        file_texts, file_rows = predictor.read_texts(input_file)
        texts, rows = texts + file_texts, rows + file_rows
    predictions = apply_threshold(predictor.predict(texts, batch_size), threshold, fallback)
    lines = [json.dumps({**row, **prediction.to_dict()}, ensure_ascii=False) for row, prediction in zip(rows, predictions)]
    if output:
        write_text(output, "\n".join(lines) + "\n")
        console.print(f"wrote {len(lines)} predictions to {output}")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


@app.command()
@friendly
def check(
    run: Path = typer.Argument(..., help="a classification run or checkpoint"),
    spec: Path = typer.Argument(..., help="YAML of invariance / directional / minimum_functionality cases"),
) -> None:
    """Run behavioural tests; exits non-zero if any case fails."""
    from rich.table import Table

    from tuneforge.check import load_spec, run_checks
    from tuneforge.predict import Predictor

    predictor = Predictor.from_path(run)
    results = run_checks(predictor, load_spec(spec, predictor.labels))
    table = Table(title=f"behavioural checks: {spec}", title_justify="left", title_style="bold")
    for column in ("", "kind", "case", "predictions"):
        table.add_column(column)
    for result in results:
        table.add_row("[green]pass[/green]" if result.passed else "[red]FAIL[/red]", result.kind, result.name,
                      result.detail)
    console.print(table)
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------------------------
# tune / runs
# ----------------------------------------------------------------------------------------------------------------


@app.command()
@friendly
def tune(
    config: Optional[Path] = typer.Argument(None, help="YAML with search_space: and tune: blocks"),
    set_: Optional[list[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue an interrupted search (its directory)"),
    address: Optional[str] = typer.Option(None, "--address", help="join a Ray cluster"),
) -> None:
    """Search hyperparameters with Ray Tune; every trial is a full tuneforge run."""
    from tuneforge.config import load_config
    from tuneforge.tune import load_experiment_config, objective_direction, search
    from tuneforge.ui import SearchDisplay

    refuse_ignored([
        (resume and config, f"give CONFIG or --resume EXPERIMENT, not both: a search keeps its config; drop {config}"),
        (resume and set_, "--set cannot change a resumed search (its trials keep their config); drop --set"),
    ])
    if resume:
        loaded = load_experiment_config(resume)
    elif config is None:
        raise TuneforgeError("give a CONFIG file, or --resume EXPERIMENT to continue a search")
    else:
        loaded = load_config(config, list(set_ or []))
    show_notes(loaded.notes)
    from tuneforge.config import TuneSettings

    metric, _ = objective_direction(loaded, loaded.tune or TuneSettings())
    with SearchDisplay(metric) as display:
        result = search(loaded, address=address, resume_dir=resume, display=display, debug=DEBUG["on"])
    show_trials(result.trials, result.best)
    console.print(f"experiment: {result.experiment_dir} (trials.csv, best_run.json, objective_by_trial.png)")
    console.print(f"TensorBoard over every trial: [bold]tensorboard --logdir {result.experiment_dir}[/bold]")


def show_trials(trials: list[dict[str, Any]], best: dict[str, Any]) -> None:
    from rich.table import Table

    params = sorted({key for trial in trials for key in trial if key.startswith("param.")})
    table = Table(title=f"trials ({best['metric']}, {best['mode']})", title_justify="left", title_style="bold")
    for column in ("trial", "status", "evals", *[p.removeprefix("param.") for p in params], "best objective"):
        table.add_column(column)
    for trial in sorted(trials, key=lambda t: (t["best_objective"] is None, t["best_objective"] or 0),
                        reverse=best["mode"] == "max"):
        marker = " ★" if trial["run_id"] == best["run_id"] else ""
        objective = trial["best_objective"]
        table.add_row(trial["run_id"] + marker, trial["status"], str(trial["iterations"]),
                      *[str(trial.get(p, "")) for p in params], f"{objective:.4f}" if objective is not None else "-")
    console.print(table)


runs_app = typer.Typer(help="Look at runs and searches under an output directory.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
@friendly
def runs_list(directory: Path = typer.Argument(Path("runs"), help="output_dir to look in")) -> None:
    """Every run and search with its status and best metric."""
    from rich.table import Table

    from tuneforge.rundir import list_runs

    table = Table(title=f"runs in {directory}", title_justify="left", title_style="bold")
    for column in ("name", "kind", "status", "task", "best", "path"):
        table.add_column(column)
    for entry in list_runs(directory):
        table.add_row(entry.name, entry.kind, entry.status, entry.task, entry.best, str(entry.path))
    console.print(table)


@runs_app.command("best")
@friendly
def runs_best(experiment: Path = typer.Argument(..., help="a search's directory")) -> None:
    """The best trial of a search: its objective, hyperparameters and checkpoint."""
    from tuneforge.tune import read_best_run

    best = read_best_run(experiment)
    rows = [("trial", best["run_id"]), (f"objective ({best['metric']}, {best['mode']})", best["objective"]),
            *[(f"  {k}", v) for k, v in best["hyperparameters"].items()], ("checkpoint", best["checkpoint"])]
    console.print(key_value_table(f"best run of {experiment}", rows))


# ----------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------


@app.command()
@friendly
def export(
    run: Path = typer.Argument(..., help="a run directory (uses best/) or a checkpoint directory"),
    format_: str = typer.Option("merged", "--format", help="merged | gguf | gguf-lora"),
    quant: str = typer.Option("q8_0", "--quant", help="gguf: f16 | q8_0 | q4_0 | q4_k_m"),
    output: Optional[Path] = typer.Option(None, "--output", help="directory for the artifacts (default RUN/export)"),
    with_base: bool = typer.Option(False, "--with-base", help="gguf-lora: also write the base model as GGUF"),
    prompts: int = typer.Option(8, "--prompts", min=1, help="validation prompts for the fidelity/parity checks"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
) -> None:
    """Export for local use: merged HF weights, a GGUF model, or a GGUF LoRA adapter; always checked."""
    from tuneforge.export import ExportSettings, export_model

    settings = ExportSettings(quant=quant, output_dir=output, with_base=with_base, prompts=prompts,
                              max_new_tokens=max_new_tokens)
    console.print(f"[dim]· exporting {run} as {format_}{'' if format_ == 'merged' else ' (' + quant + ')'}[/dim]")
    result = export_model(run, format_, settings)
    console.print(key_value_table(f"export: {result.artifact}", report_rows(result.report)))
    console.print(f"report: {result.output_dir / 'export_report.json'}")


def report_rows(report: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in report.items():
        if isinstance(value, dict):
            rows.extend(report_rows(value, f"{prefix}{key}."))
        elif key not in ("tensor_types",):
            rows.append((f"{prefix}{key}", value))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# doctor
# ----------------------------------------------------------------------------------------------------------------


@app.command()
@friendly
def doctor(
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="run one llama.cpp generation (in a child process)"),
    ray: bool = typer.Option(True, "--ray/--no-ray", help="time a local Ray start"),
    as_json: bool = typer.Option(False, "--json", help="print the checks as JSON"),
) -> None:
    """Check this machine: versions, CPU features, training precision, threads, llama.cpp, bundled models, Ray.
    Paste the output into bug reports."""
    from tuneforge.doctor import as_dict, exit_code, render, run_checks

    with error_console.status("checking") as status:
        checks = run_checks(smoke=smoke, ray=ray, progress=lambda text: status.update(text))
    if as_json:
        sys.stdout.write(json.dumps(as_dict(checks), indent=2) + "\n")
    else:
        for line in render(checks):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(exit_code(checks))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
