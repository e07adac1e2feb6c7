"""The `tuneforge` command. Each command parses its arguments, calls the library and hands what it returned to one
display function in `tuneforge.ui`; nothing else lives here."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from tuneforge import ui
from tuneforge.errors import TuneforgeError

# Kept, no public API does it: Typer has no hook for how a usage error is shown, and since it vendors click (0.26)
# it exports neither UsageError nor NoArgsIsHelpError (fastapi/typer#1867). The public BadParameter's base is
# click's UsageError in every Typer of typer>=0.12, vendored click or not; NoArgsIsHelpError (click 8.2+, a bare
# `tuneforge`, which Typer answers with the help) lives beside it.
USAGE_ERROR = typer.BadParameter.__base__
HELP_REQUEST = getattr(sys.modules[USAGE_ERROR.__module__], "NoArgsIsHelpError", ())


class OneLineErrors(TyperGroup):
    """Every error a user can fix ends the same way: one red line and exit code 2, instead of Typer's boxed usage
    message (a bad option value, a missing argument) or a traceback (bad input the library refused)."""

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        with one_line_usage_errors(), friendly(ctx):
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except HELP_REQUEST:
        raise
    except USAGE_ERROR as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        ui.show_error(f"{exc.format_message()}{hint}")
        raise typer.Exit(2) from None


@contextlib.contextmanager
def friendly(ctx: typer.Context) -> Iterator[None]:
    """Around every command: bad input (a TuneforgeError, or an OSError the library let through) ends in one red
    line and exit code 2, Ctrl-C in exit code 130. With --debug, read from `ctx.obj` once the callback has set it,
    errors keep their traceback."""
    try:
        yield
    except (TuneforgeError, OSError) as exc:
        if debugging(ctx):
            raise
        ui.show_error(ui.describe_error(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        ui.show_interrupted()
        raise typer.Exit(130) from None


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Config-driven fine-tuning on Ray Train: train, plan, generate, and more. Add --debug for tracebacks.",
)

SetOption = typer.Option(None, "--set", "-s", help="override a config key: --set learning_rate=3e-4 (repeatable)")
ConstrainOption = typer.Option(None, "--constrain", metavar="json|schema",
                               help="constrain answers: json (any JSON value, as --json) or schema (the run's answer "
                                    "schema, inferred from its training targets)")


@dataclass(frozen=True)
class GlobalOptions:
    """Options given before the command: the callback puts them on `ctx.obj`, which every command's ctx inherits."""

    debug: bool = False


def debugging(ctx: typer.Context) -> bool:
    return isinstance(ctx.obj, GlobalOptions) and ctx.obj.debug


@app.callback()
def options(ctx: typer.Context,
            debug: bool = typer.Option(False, "--debug", help="show tracebacks and Ray's logs on errors")) -> None:
    ctx.obj = GlobalOptions(debug=debug)
    if not debug:
        ui.quiet_libraries()


def refuse_ignored(conflicts: list[tuple[Any, str]]) -> None:
    """An option that would have no effect is refused, never silently ignored: (given, why) pairs."""
    for given, why in conflicts:
        if given:
            raise TuneforgeError(why)


def emit_lines(records: list[dict[str, Any]], output: Path | None, what: str) -> None:
    """One JSON line per record: written to OUTPUT (whole or not at all), else to stdout."""
    from tuneforge.atomic import write_text

    text = "\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\n"
    if output:
        write_text(output, text)
        ui.show_wrote(len(records), what, output)
    else:
        sys.stdout.write(text)


# --- train / plan ----------------------------------------------------------------------------------------------


@app.command()
def train(
    ctx: typer.Context,
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
    from tuneforge.tasks import get_task
    from tuneforge.train import resume as resume_run
    from tuneforge.train import train as train_run

    refuse_ignored([
        (resume and config, f"give CONFIG or --resume RUN, not both: a resumed run keeps its config.yaml; drop {config}"),
        (resume and name, "--name names a new run; a resumed run keeps its directory, so drop --name"),
        (resume and overwrite, "--overwrite replaces a run; --resume continues one, so drop one of them"),
    ])
    overrides = list(set_ or []) + ([f"run_name={name}"] if name else [])
    with ui.RichReporter(debug=debugging(ctx)) as reporter:
        if resume:
            result = resume_run(resume, overrides=overrides, address=address, dashboard=dashboard, reporter=reporter,
                                debug=debugging(ctx))
        else:
            if config is None:
                raise TuneforgeError("give a CONFIG file, or --resume RUN to continue a run")
            loaded = load_config(config, overrides)
            ui.show_notes(loaded.notes)
            result = train_run(loaded, address=address, dashboard=dashboard, overwrite=overwrite, reporter=reporter,
                               debug=debugging(ctx))
    hint = get_task(result.results.get("task")).next_step_hint(result.run_dir)
    ui.show_run_summary(result, hint=hint, dashboard=dashboard_url())


@app.command()
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
    ui.show_notes(loaded.notes)
    prepared = prepare_run(loaded)
    ui.show_notes(prepared.data.notes)
    ui.show_plan(prepared)
    target = png or Path(prepared.config.output_dir) / "plans" / f"{loaded.source_name}-lr_schedule.png"
    plot_learning_rates(prepared.config, prepared.plan, target)
    ui.show_written("learning-rate schedule", target)


# --- generate --------------------------------------------------------------------------------------------------


@app.command()
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
    any_json: bool = typer.Option(False, "--json", help="constrain every answer to one JSON value"),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="constrain answers to this JSON Schema"),
    constrain: Optional[str] = ConstrainOption,
) -> None:
    """Complete prompts with a fine-tuned model (base + adapter, unmerged; stops at the trained end-of-turn)."""
    from tuneforge.constrain import constraint_for, gguf_grammar
    from tuneforge.generate import GenerationSettings, Generator, read_prompt_rows

    if not prompt and not input_file:
        raise TuneforgeError("give --prompt TEXT or --input FILE")
    refuse_ignored([
        (lora and not gguf, "--lora applies a GGUF adapter and needs --gguf FILE (a run's own adapter loads with RUN)"),
        (output and not input_file, "--output writes one line per --input row; give --input FILE or drop --output"),
        (gguf and run, f"give RUN or --gguf FILE, not both; drop {run} or --gguf"),
        (gguf and compare_base, "--compare-base switches a run's LoRA adapter off; it does not apply to --gguf"),
        (prompt and input_file, "give --prompt or --input, not both: with --input the prompts come from its rows"),
        (gguf and constrain == "schema", "--constrain schema reads a run's answer schema; with --gguf give "
                                         "--json-schema FILE"),
    ])
    settings = GenerationSettings(max_new_tokens, temperature, top_p, batch_size)
    if gguf:
        grammar = gguf_grammar(any_json=any_json, schema_path=json_schema)
        generate_gguf(gguf, lora, prompt or [], input_file, system, settings, output, grammar)
        return
    if run is None:
        raise TuneforgeError("give a RUN (or checkpoint) directory, or --gguf FILE")
    any_json, run_schema = constrain_choice(constrain, any_json)
    constraint = constraint_for(any_json=any_json, schema_path=json_schema, run_schema=run_schema,
                                answer_schema=answer_schema_of(run) if run_schema else None, source=str(run))
    with ui.busy(f"loading {run}"):  # on stderr and transient: stdout may be the JSONL of completions
        generator = Generator.from_path(run)
    if input_file:
        generate_rows(generator, read_prompt_rows(input_file), settings, system, output, compare_base, constraint)
        return
    for text in prompt or []:
        if compare_base:
            generate_rows(generator, [(text, {"prompt": text})], settings, system, None, compare_base, constraint)
        else:
            ui.show_stream(text, generator.stream(text, settings, system=system, constraint=constraint))


def constrain_choice(constrain: str | None, any_json: bool) -> tuple[bool, bool]:
    """(any JSON, the run's answer schema) from --constrain and --json."""
    if constrain not in (None, "json", "schema"):
        raise TuneforgeError(f"--constrain {constrain}: use json (any JSON value) or schema (the run's answer schema)")
    return any_json or constrain == "json", constrain == "schema"


def answer_schema_of(run: Path) -> dict[str, Any] | None:
    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint

    return CheckpointMeta.read(resolve_checkpoint(run)).answer_schema


def generate_gguf(model: Path, lora: Path | None, prompts: list[str], input_file: Path | None, system: str | None,
                  settings: Any, output: Path | None, grammar: str | None) -> None:
    from tuneforge.generate import read_prompt_rows
    from tuneforge.gguf_chat import GgufChat

    rows = read_prompt_rows(input_file) if input_file else []  # bad rows are refused before llama.cpp starts
    with GgufChat(model, lora, json_schema=grammar) as chat:
        if input_file:
            records = [{**row, "completion": chat.complete(messages, settings, system=system)}
                       for messages, row in rows]
            emit_lines(records, output, "completions")
            return
        for text in prompts:
            ui.show_stream(text, chat.stream(text, settings, system=system))


def generate_rows(generator: Any, pairs: list[tuple[Any, dict[str, Any]]], settings: Any, system: str | None,
                  output: Path | None, compare_base: bool, constraint: Any = None) -> None:
    """Completions for every row: JSON lines to OUTPUT or stdout; with --compare-base, the base model's too, and a
    before/after table instead of stdout."""
    prompts = [prompt for prompt, _ in pairs]
    completions = generator.complete(prompts, settings, system=system, constraint=constraint)
    base = (generator.complete(prompts, settings, system=system, use_base=True, constraint=constraint)
            if compare_base else None)
    records = []
    for index, ((_, row), completion) in enumerate(zip(pairs, completions, strict=True)):
        record = {**row, "completion": completion.text, "finish_reason": completion.finish_reason}
        if base:
            record["base_completion"] = base[index].text
        records.append(record)
    if output or not base:
        emit_lines(records, output, "completions")
    if base:
        ui.show_comparison(pairs, base, completions)


# --- eval / predict / check ------------------------------------------------------------------------------------


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="a run directory (uses best/) or a checkpoint directory"),
    data: Path = typer.Option(..., "--data", help="labelled CSV/JSONL (classification) or chat/prompt JSONL"),
    name: Optional[str] = typer.Option(None, "--name", help="results go to RUN/eval/NAME (default: data file name)"),
    output: Optional[Path] = typer.Option(None, "--output", help="write results here instead"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    allow_unseen_labels: bool = typer.Option(False, "--allow-unseen-labels",
                                             help="exit 0 even if some labels never appear in training"),
    compare_base: bool = typer.Option(False, "--compare-base", help="causal: score the base model's answers too"),
    max_generate: int = typer.Option(64, "--max-generate", min=0, help="causal: rows answered and scored"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    target_format: str = typer.Option("auto", "--target-format", help="causal: auto, json or text scoring"),
    any_json: bool = typer.Option(False, "--json", help="causal: constrain answers to one JSON value"),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="causal: constrain answers to a schema"),
    constrain: Optional[str] = ConstrainOption,
    metric: Optional[list[str]] = typer.Option(None, "--metric", metavar="MODULE:FUNCTION",
                                               help="causal: also score with your function(predictions, references) "
                                                    "(repeatable)"),
) -> None:
    """Score a run on a data file: classification P/R/F1 + confusion matrix, or causal loss, stop rate, exact match
    and JSON field scores with the first mistakes."""
    from tuneforge.constrain import constraint_for
    from tuneforge.evaluate import refuse_unseen_labels
    from tuneforge.rundir import CheckpointMeta, RunDir, resolve_checkpoint
    from tuneforge.tasks import get_task

    meta = CheckpointMeta.read(resolve_checkpoint(run))
    if allow_unseen_labels and not meta.labels:  # a run without labels has no unseen ones: refused before it loads
        raise TuneforgeError(f"--allow-unseen-labels applies to classification runs; {run} is a {meta.task} run")
    task = get_task(meta.task)
    generation = {"compare_base": compare_base, "max_generate": max_generate, "max_new_tokens": max_new_tokens,
                  "target_format": target_format, "user_metrics": tuple(metric or ())}
    if not task.spec.generates:
        refuse_ignored([(compare_base or any_json or json_schema or constrain or metric or target_format != "auto",
                         f"--compare-base, --json, --json-schema, --constrain, --metric and --target-format score "
                         f"generated text; "
                         f"{run} is a {meta.task} run")])
        generation = {}
    elif target_format not in ("auto", "json", "text"):
        raise TuneforgeError(f"--target-format {target_format}: use auto, json or text")
    else:
        check_user_metrics(metric or ())
        any_json, run_schema = constrain_choice(constrain, any_json)
        generation["constraint"] = constraint_for(any_json=any_json, schema_path=json_schema, run_schema=run_schema,
                                                  answer_schema=meta.answer_schema, source=str(run))
    report = task.evaluate(run, data, name=name, output_dir=output, batch_size=batch_size, **generation)
    ui.show_eval_view(task.eval_view(report))
    if output is None and RunDir(run).is_run():  # the run's page now shows this evaluation too
        from tuneforge.report import write_report

        ui.show_phase(f"report: {write_report([run])}")
    if "unseen_labels" in report.results and not allow_unseen_labels:
        refuse_unseen_labels(report)


def check_user_metrics(specs: list[str]) -> None:
    """A --metric that does not import is refused before any model loads."""
    from tuneforge.scoring import load_user_metric

    for spec in specs:
        try:
            load_user_metric(spec)
        except ValueError as exc:
            raise TuneforgeError(f"--metric: {exc}") from None


@app.command()
def predict(
    run: Path = typer.Argument(..., help="a classification or token classification run, or a checkpoint"),
    text: Optional[list[str]] = typer.Option(None, "--text", "-t", help="text to label or tag (repeatable)"),
    input_file: Optional[Path] = typer.Option(None, "--input", help="CSV/JSONL with the run's text fields ('text' "
                                              "for a tagger)"),
    output: Optional[Path] = typer.Option(None, "--output", help="write JSON lines here instead of stdout"),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                              help="below this confidence, predict --fallback"),
    fallback: Optional[str] = typer.Option(None, "--fallback", help="label for low-confidence predictions"),
    aggregation: str = typer.Option("first", "--aggregation", help="tagger: a word's label from its subwords: "
                                    "first, average or max"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Label texts with a probability per class, or tag their entities (spans with offsets), as JSON lines."""
    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint
    from tuneforge.tasks import get_task

    if not text and not input_file:
        raise TuneforgeError("give --text TEXT or --input FILE")
    if (threshold is None) != (fallback is None):
        raise TuneforgeError("--threshold and --fallback go together")
    task = get_task(CheckpointMeta.read(resolve_checkpoint(run)).task)
    if not (task.spec.classifies_texts or task.spec.tags_words):
        raise TuneforgeError(f"{run} is a {task.name} run: predict labels or tags texts; use tuneforge generate")
    refuse_ignored([(not task.spec.classifies_texts and threshold is not None, "--threshold/--fallback apply to "
                     "classification runs; a tagger's entities carry their own score"),
                    (not task.spec.tags_words and aggregation != "first", "--aggregation applies to token "
                     "classification runs")])
    model = task.load(run)
    rows: list[dict[str, Any]] = [{"text": t} for t in text or []]
    texts = list(text or [])
    if input_file:
        file_texts, file_rows = model.read_texts(input_file)
        texts, rows = texts + file_texts, rows + file_rows
    answers = task.predictions(model, texts, batch_size=batch_size, threshold=threshold, fallback=fallback,
                               aggregation=aggregation)
    emit_lines([{**row, **answer} for row, answer in zip(rows, answers, strict=True)], output, "predictions")


@app.command()
def check(
    run: Path = typer.Argument(..., help="a classification run or checkpoint"),
    spec: Path = typer.Argument(..., help="YAML of invariance / directional / minimum_functionality cases"),
) -> None:
    """Run behavioural tests; exits non-zero if any case fails."""
    from tuneforge.check import load_spec, run_checks
    from tuneforge.predict import Predictor

    predictor = Predictor.from_path(run)
    results = run_checks(predictor, load_spec(spec, predictor.labels))
    ui.show_checks(spec, results)
    if not all(result.passed for result in results):
        raise typer.Exit(1)


# --- tune / runs -----------------------------------------------------------------------------------------------


@app.command()
def tune(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="YAML with search_space: and tune: blocks"),
    set_: Optional[list[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue an interrupted search (its directory)"),
    address: Optional[str] = typer.Option(None, "--address", help="join a Ray cluster"),
    auto: bool = typer.Option(False, "--auto", help="build the search from the task, model, data and machine, "
                              "judged by what the model generates (completes your search_space; --set keys stay fixed)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="with --auto: wall-clock time for the whole "
                                         "search, e.g. 30m, 1h30m, 900 (seconds); default 30m"),
) -> None:
    """Search hyperparameters with Ray Tune; every trial is a full tuneforge run."""
    from tuneforge.config import TuneSettings, load_config
    from tuneforge.tune import load_experiment_config, objective_direction, search
    from tuneforge.tune.auto import parse_duration

    refuse_ignored([
        (resume and config, f"give CONFIG or --resume EXPERIMENT, not both: a search keeps its config; drop {config}"),
        (resume and set_, "--set cannot change a resumed search (its trials keep their config); drop --set"),
        (resume and auto, "--auto builds a new search, and a resumed search keeps the space it started with; drop "
                          "--auto to continue it"),
        (budget and not auto, "--budget is the time of an --auto search; add --auto (or set tune.time_budget_s)"),
    ])
    budget_s = parse_duration(budget) if budget else None
    if resume:
        loaded = load_experiment_config(resume)
    elif config is None:
        raise TuneforgeError("give a CONFIG file, or --resume EXPERIMENT to continue a search")
    else:
        loaded = load_config(config, list(set_ or []))
    ui.show_notes(loaded.notes)
    metric, _ = objective_direction(loaded, loaded.tune or TuneSettings())
    with ui.SearchDisplay(metric) as display:
        result = search(loaded, address=address, resume_dir=resume, display=display, debug=debugging(ctx), auto=auto,
                        budget_s=budget_s)
    ui.show_search_result(result)
    from tuneforge.report import write_report

    ui.show_phase(f"report: {write_report([result.experiment_dir])}")


runs_app = typer.Typer(help="Look at runs and searches under an output directory.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(directory: Path = typer.Argument(Path("runs"), help="output_dir to look in")) -> None:
    """Every run and search with its status and best metric."""
    from tuneforge.rundir import list_runs

    ui.show_runs(directory, list_runs(directory))


@runs_app.command("best")
def runs_best(experiment: Path = typer.Argument(..., help="a search's directory")) -> None:
    """The best trial of a search: its objective, hyperparameters and checkpoint."""
    from tuneforge.tune import read_best_run

    ui.show_best_run(experiment, read_best_run(experiment))


# --- serve -----------------------------------------------------------------------------------------------------


@app.command()
def serve(
    runs: list[Path] = typer.Argument(..., help="run directories, checkpoints, merged exports or GGUF files to serve"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="a GGUF LoRA adapter to apply to the GGUF file served"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: this machine only)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    replicas: int = typer.Option(1, "--replicas", min=1, help="replicas of the model server"),
    autoscale: Optional[str] = typer.Option(None, "--autoscale", metavar="MIN:MAX", help="autoscale replicas"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR",
                                              help="require 'Authorization: Bearer <key>' with the key in $VAR"),
    max_tokens: int = typer.Option(1024, "--max-tokens-limit", min=1, help="largest max_tokens a request may ask"),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="concurrent requests generated together"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)"),
) -> None:
    """Serve fine-tuned models over HTTP in OpenAI's API shape (chat, completions, classify) on Ray Serve."""
    import signal
    import time

    from tuneforge.serve import Limits, ServeOptions, start, stop
    from tuneforge.serve.server import api_key_from_env, parse_autoscale

    options = ServeOptions(host=host, port=port, replicas=replicas, autoscale=parse_autoscale(autoscale),
                           api_key=api_key_from_env(api_key_env), address=address, gguf_lora=lora,
                           limits=Limits(max_tokens=max_tokens), max_batch_size=max_batch_size)
    with ui.busy(f"starting {len(runs)} model(s) on Ray Serve"):
        served = start(runs, options)
    ui.show_serving(served.url, served.model_ids, api_key=options.api_key is not None,
                    exposed=host not in ("127.0.0.1", "localhost", "::1"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop: the same clean stop
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ui.show_phase("stopping: requests in flight finish first")
    finally:
        stop()


@app.command()
def monitor(
    address: Optional[str] = typer.Option(None, "--address", help="a running Ray cluster (default: start one here "
                                          "for `tuneforge train --address` to join)"),
    directory: Path = typer.Option(Path("tuneforge-monitor"), "--dir", help="where prometheus.yml, Prometheus's "
                                   "data and the Grafana folder go"),
    host: str = typer.Option("127.0.0.1", "--host", help="address Prometheus, Grafana and the dashboard listen on"),
    prometheus_port: int = typer.Option(9090, "--prometheus-port", min=1, max=65535),
    grafana_port: int = typer.Option(3000, "--grafana-port", min=1, max=65535),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", min=1, max=65535),
    scrape_interval: float = typer.Option(2.0, "--scrape-interval", min=1.0, help="seconds between scrapes"),
) -> None:
    """Watch training, searches and serving live: Prometheus on Ray's metrics, Ray's dashboard, a Grafana folder."""
    import signal
    import time

    from tuneforge.observe.monitor import MonitorOptions, start_monitor

    options = MonitorOptions(address=address, directory=directory, host=host, prometheus_port=prometheus_port,
                             grafana_port=grafana_port, dashboard_port=dashboard_port,
                             scrape_interval_s=scrape_interval)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop: the same clean stop
    with ui.busy("starting Prometheus" + ("" if address else " and Ray")):
        watching = start_monitor(options)
    try:
        ui.show_monitor(watching)
        while watching.running():
            watching.refresh_targets()
            time.sleep(5)
        raise TuneforgeError(f"prometheus stopped: see {directory / 'prometheus.log'}")
    except KeyboardInterrupt:
        ui.show_phase("stopping Prometheus")
    finally:
        watching.stop()


# --- export / doctor -------------------------------------------------------------------------------------------


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="one run directory, several to compare, or a search's directory"),
    output: Optional[Path] = typer.Option(None, "--output", help="the HTML file (default: report.html in the run or "
                                          "search, ./report.html for several runs)"),
) -> None:
    """Write one self-contained HTML page about a run (or several side by side, or a search): config, plan, curves,
    metrics, evaluations, answers, exports; a search's trials and objective. Opens without network access."""
    from tuneforge.report import write_report

    ui.show_phase(f"report: {write_report(runs, output)}")


@app.command()
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
    ui.show_phase(f"exporting {run} as {format_}{'' if format_ == 'merged' else ' (' + quant + ')'}")
    ui.show_export(export_model(run, format_, settings))


@app.command()
def doctor(
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="run one llama.cpp generation (in a child process)"),
    ray: bool = typer.Option(True, "--ray/--no-ray", help="time a local Ray start"),
    as_json: bool = typer.Option(False, "--json", help="print the checks as JSON"),
) -> None:
    """Check this machine: versions, CPU features, training precision, threads, llama.cpp, bundled models, Ray.
    Paste the output into bug reports."""
    from tuneforge.doctor import as_dict, exit_code, render, run_checks

    with ui.busy("checking") as status:
        checks = run_checks(smoke=smoke, ray=ray, progress=status.update)
    if as_json:
        sys.stdout.write(json.dumps(as_dict(checks), indent=2) + "\n")
    else:
        ui.show_plain_lines(render(checks))
    raise typer.Exit(exit_code(checks))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
