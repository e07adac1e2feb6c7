"""How `tuneforge eval` shows an evaluation, as plain data: tables and lines that the CLI renders (ui.tables) and
that a task's binding chooses (`Task.eval_view`). No task is named here, and the renderer knows no task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ViewTable:
    title: str
    columns: list[str]  # the first is text (left-aligned), the others numbers (right-aligned)
    rows: list[list[str]]
    total: list[str] | None = None  # a last row after a rule (weighted, micro)
    show_lines: bool = False
    text_columns: int = 1  # leading columns that are text


@dataclass
class EvalView:
    blocks: list[ViewTable | str] = field(default_factory=list)  # tables and lines, in order
    notes: list[str] = field(default_factory=list)  # shown as warnings after the blocks


def scores(values: dict[str, Any]) -> list[str]:
    return [f"{values[key]:.3f}" for key in ("precision", "recall", "f1")]


def results_view(report: Any, keys: tuple[str, ...] | None = None) -> EvalView:
    """Any task's results as a key/value table: `keys`, else every number and string the results hold."""
    results = report.results
    if keys is None:
        keys = tuple(key for key, value in results.items()
                     if key not in ("data", "checkpoint") and isinstance(value, (int, float, str)))
    table = ViewTable(f"evaluation on {results['data']}", ["key", "value"],
                      [[key, str(results[key])] for key in keys], text_columns=2)
    return EvalView([table, f"results: {report.files.results_file}"])


def classification_view(report: Any) -> EvalView:
    from tuneforge.evaluate import unseen_summary

    results = report.results
    rows = [[label + (" (never trained)" if label in results["unseen_labels"] else ""), *scores(values),
             str(values["support"])] for label, values in results["per_class"].items()]
    table = ViewTable(f"evaluation on {results['data']} ({results['rows']} rows)",
                      ["label", "precision", "recall", "f1", "support"], rows,
                      total=["weighted", *scores(results), str(results["rows"])])
    notes = ([f"{unseen_summary(results)} never appear in training; they count as wrong"]
             if results["unseen_labels"] else [])
    return EvalView([table, f"accuracy {results['accuracy']:.3f}",
                     f"results: {report.files.results_file} · confusion matrix: {report.files.confusion_plot}"], notes)


def tagging_view(report: Any) -> EvalView:
    results = report.results
    support = sum(values["support"] for values in results["per_type"].values())
    table = ViewTable(f"entities in {results['data']} ({results['sentences']} sentences)",
                      ["type", "precision", "recall", "f1", "support"],
                      [[kind, *scores(values), str(values["support"])] for kind, values in results["per_type"].items()],
                      total=["micro", *scores(results), str(support)])
    blocks: list[ViewTable | str] = [table, f"word accuracy {results['accuracy']:.3f} · aggregation "
                                            f"{results['aggregation']}"]
    for mistake in results["mistakes"][:3]:
        expected = ", ".join(f"{text} [{kind}]" for text, kind in mistake["expected"]) or "none"
        predicted = ", ".join(f"{text} [{kind}]" for text, kind in mistake["predicted"]) or "none"
        blocks.append(f"  {mistake['source']}: {mistake['text']}\n    expected {expected}\n    predicted {predicted}")
    blocks.append(f"results: {report.files.results_file} · confusion matrix: {report.files.confusion_plot}")
    return EvalView(blocks)


CAUSAL_METRICS = ("stop_rate", "exact_match", "json_valid", "json_exact", "field_precision", "field_recall",
                  "field_f1", "run_on")


def causal_view(report: Any) -> EvalView:
    """Loss, then the generation metrics (beside the base model's with --compare-base), the first mistakes and
    which JSON fields went wrong how often."""
    results = report.results
    base = results.get("base")
    constraint = f", answers constrained to {results['constraint']}" if results.get("constraint") else ""
    columns = ["metric", *(["base model"] if base else []), "fine-tuned" if base else "value"]
    rows = [["eval loss (perplexity)", *([""] if base else []),
             f"{results['eval_loss']:.4f} ({results['perplexity']:.2f})"]]
    rows += [[key, *([f"{base.get(key, 0.0):.3f}"] if base else []), f"{results[key]:.3f}"]
             for key in CAUSAL_METRICS if key in results]
    blocks: list[ViewTable | str] = [ViewTable(f"evaluation on {results['data']}: {results['rows']} rows, "
                                               f"{results['generated']} answered{constraint}", columns, rows)]
    blocks += mistakes_table(results.get("mistakes", [])) + field_errors_table(results.get("field_errors", {}))
    blocks.append(f"results: {report.files.results_file}  answers: {report.files.samples_file}")
    return EvalView(blocks)


def mistakes_table(mistakes: list[dict[str, Any]], limit: int = 8) -> list[ViewTable | str]:
    if not mistakes:
        return []
    rows = [[mistake["prompt"], mistake["reference"],
             mistake["answer"] + ("" if mistake["finish_reason"] == "stop" else " …(did not stop)")]
            for mistake in mistakes[:limit]]
    return [ViewTable(f"first mistakes ({len(rows)} shown)", ["prompt", "expected", "got"], rows, show_lines=True,
                      text_columns=3)]


def field_errors_table(errors: dict[str, dict[str, int]], limit: int = 12) -> list[ViewTable | str]:
    if not errors:
        return []
    kinds = ("wrong", "missing", "spurious")
    rows = [[path, *(str(counts.get(kind, 0)) for kind in kinds)] for path, counts in list(errors.items())[:limit]]
    return [ViewTable("JSON fields with errors", ["field", *kinds], rows)]
