"""`tuneforge generate`, `eval`, `predict` and `check`: using a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tuneforge import ui
from tuneforge.cli.app import (
    ConstrainOption,
    app,
    emit_lines,
    refuse_ignored,
)
from tuneforge.errors import TuneforgeError


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


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="a run directory (uses best/) or a checkpoint directory"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled CSV/JSONL (classification) or chat/prompt JSONL"),
    lm_eval: Optional[str] = typer.Option(None, "--lm-eval", metavar="TASK[,TASK]",
                                          help="causal: lm-evaluation-harness tasks by name, or task YAML paths"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="--lm-eval: documents per task"),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="--lm-eval: examples in each prompt"),
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
    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint
    from tuneforge.tasks import get_task

    if lm_eval is not None:
        refuse_ignored([(data is not None, "--data and --lm-eval are two evaluations: run them one at a time"),
                        (any_json or json_schema or constrain or metric or target_format != "auto" or
                         allow_unseen_labels, "--json, --json-schema, --constrain, --metric, --target-format and "
                         "--allow-unseen-labels apply to --data; lm-eval tasks score as their YAML says")])
        return benchmark(run, lm_eval, compare_base=compare_base, limit=limit, num_fewshot=num_fewshot,
                         batch_size=batch_size, name=name, output=output)
    refuse_ignored([(limit is not None or num_fewshot is not None, "--limit and --num-fewshot apply to --lm-eval")])
    if data is None:
        raise TuneforgeError("tuneforge eval needs --data FILE (a labelled or chat/prompt file) or --lm-eval TASKS")
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
    show_tracked(report)
    refresh_report(run, output)
    if "unseen_labels" in report.results and not allow_unseen_labels:
        refuse_unseen_labels(report)


def benchmark(run: Path, tasks: str, *, compare_base: bool, limit: int | None, num_fewshot: int | None,
              batch_size: int, name: str | None, output: Path | None) -> None:
    from tuneforge.benchmarks import benchmark_view, evaluate_benchmarks

    names = [task.strip() for task in tasks.split(",") if task.strip()]
    if not names:
        raise TuneforgeError("--lm-eval: name at least one task (TASK[,TASK], or a task YAML's path)")
    report = evaluate_benchmarks(run, names, compare_base=compare_base, limit=limit, num_fewshot=num_fewshot,
                                 batch_size=batch_size, name=name, output_dir=output)
    ui.show_eval_view(benchmark_view(report))
    show_tracked(report)
    refresh_report(run, output)


def show_tracked(report: Any) -> None:
    if report.tracked:  # where the scores went in the run's MLflow run
        ui.show_phase(report.tracked)


def refresh_report(run: Path, output: Path | None) -> None:
    from tuneforge.rundir import RunDir

    if output is None and RunDir(run).is_run():  # the run's page now shows this evaluation too
        from tuneforge.report import write_report

        ui.show_phase(f"report: {write_report([run])}")


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
