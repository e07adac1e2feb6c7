"""Evaluation of a trained classifier on a labelled file: weighted and per-class precision, recall, F1, support,
accuracy and a confusion matrix. Rows whose label training never saw are kept: they are reported by name and
count and scored as wrong (the model cannot predict a class it does not have)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.classification import read_labelled, row_text
from tuneforge.atomic import atomic_dir, write_json
from tuneforge.errors import DataError
from tuneforge.metrics import classification_summary, perplexity


@dataclass
class EvalReport:
    results: dict[str, Any]
    output_dir: Path


def evaluate_classifier(run: str | Path, data_path: str | Path, *, name: str | None = None,
                        output_dir: str | Path | None = None, batch_size: int = 32) -> EvalReport:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from tuneforge.data.records import check_data_file
    from tuneforge.predict import Predictor

    data_path = Path(data_path)
    check_data_file(data_path, "eval data")  # before the model loads
    predictor = Predictor.from_path(run)
    label_field = str(predictor.meta.label_field)
    records, labels = read_labelled(data_path, "eval data", predictor.text_fields, label_field)
    predictions = predictor.predict([row_text(r.data, predictor.text_fields) for r in records], batch_size)
    y_pred = [p.label for p in predictions]
    unseen = Counter(label for label in labels if label not in set(predictor.labels))
    names = predictor.labels + sorted(unseen)
    precision, recall, f1, support = precision_recall_fscore_support(labels, y_pred, labels=names, zero_division=0)
    results = {
        "data": str(data_path),
        "checkpoint": str(run),
        "rows": len(records),
        **classification_summary(labels, y_pred),
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)},
        "unseen_labels": dict(unseen),
        "unseen_rows": sum(unseen.values()),
        "confusion_matrix": {"labels": names, "matrix": confusion_matrix(labels, y_pred, labels=names).tolist()},
        "mistakes": [{"source": f"{data_path}:{r.line}", "label": t, "predicted": p.label,
                      "confidence": round(p.confidence, 4)}
                     for r, t, p in zip(records, labels, predictions, strict=True) if t != p.label][:50],
    }
    target = eval_dir(run, data_path, name, output_dir)
    with atomic_dir(target) as staged:
        write_json(staged / "results.json", results)
        plot_confusion(results["confusion_matrix"], staged / "confusion_matrix.png")
    return EvalReport(results, target)


def eval_dir(run: str | Path, data_path: Path, name: str | None, output_dir: str | Path | None) -> Path:
    """Where results go: `output_dir`, else RUN/eval/<name>, with RUN found by name under ./runs as every command
    that takes a run finds it."""
    from tuneforge.rundir import RunDir

    return Path(output_dir) if output_dir else RunDir.locate(run).eval_dir(name or data_path.stem)


def refuse_unseen_labels(report: EvalReport) -> None:
    """Rows whose label training never saw are already counted and scored as wrong; unless the caller accepts
    them, such an evaluation fails, since the model cannot predict those classes at all."""
    if report.results["unseen_labels"]:
        raise DataError(f"{report.results['data']}: {unseen_summary(report.results)} never seen in training, scored "
                        f"as wrong (results in {report.output_dir}); fix those labels or pass --allow-unseen-labels")


def unseen_summary(results: dict[str, Any]) -> str:
    named = ", ".join(f"'{label}' ({count})" for label, count in results["unseen_labels"].items())
    return f"{results['unseen_rows']} row(s) with label(s) {named}"


def plot_confusion(confusion: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = confusion["labels"]
    size = 2.2 + 0.7 * len(labels)
    figure, axes = plt.subplots(figsize=(size + 1, size), dpi=110)
    display = ConfusionMatrixDisplay(np.asarray(confusion["matrix"]), display_labels=labels)
    display.plot(ax=axes, cmap="Blues", xticks_rotation=35, values_format="d", colorbar=True)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def evaluate_causal(run: str | Path, data_path: str | Path, *, name: str | None = None,
                    output_dir: str | Path | None = None, batch_size: int = 8, max_generate: int = 64,
                    max_new_tokens: int = 128) -> EvalReport:
    """Loss and perplexity on every row (same masks as training), then greedy generation on up to
    `max_generate` rows: how often the model stops by itself, and how often it reproduces the reference."""
    import torch

    from tuneforge.data import causal
    from tuneforge.data.collate import collate_causal
    from tuneforge.data.records import read_records
    from tuneforge.generate import GenerationSettings, Generator, read_prompt_rows
    from tuneforge.train.objectives import CausalLMObjective

    data_path = Path(data_path)
    records = read_records(data_path, "eval data")
    shape = causal.detect_shape(records, data_path)
    causal.validate_rows(records, data_path, shape)
    generator = Generator.from_path(run)
    tokenizer = generator.tokenizer
    tokenizer.padding_side = "right"
    examples = causal.tokenize_records(records, data_path, shape, tokenizer, train_on_inputs=False)
    context = generator.meta.context_length or max(len(e) for e in examples)
    examples = [causal.Example(e.input_ids[:context], e.target_mask[:context], e.source) for e in examples]
    objective = CausalLMObjective(generator.model)
    loss_sum = count = 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate_causal(examples[start : start + batch_size], tokenizer.pad_token_id, context_length=context)
            batch_loss, batch_count = objective(**batch)
            loss_sum, count = loss_sum + float(batch_loss), count + float(batch_count)
    tokenizer.padding_side = "left"
    pairs = [pair for pair in read_prompt_rows(data_path) if "reference" in pair[1]][:max_generate]
    completions = generator.complete([p for p, _ in pairs], GenerationSettings(max_new_tokens=max_new_tokens,
                                                                               batch_size=batch_size))
    loss = loss_sum / max(count, 1.0)
    results = {
        "data": str(data_path), "checkpoint": str(run), "rows": len(examples), "eval_loss": loss,
        "perplexity": perplexity(loss), "generated": len(completions),
        "stopped_rate": sum(c.finish_reason == "stop" for c in completions) / max(len(completions), 1),
        "exact_match": sum(c.text.strip() == row["reference"].strip() for c, (_, row) in zip(completions, pairs, strict=True))
        / max(len(completions), 1),
        "samples": [{"reference": row["reference"], "completion": c.text, "finish_reason": c.finish_reason}
                    for c, (_, row) in list(zip(completions, pairs, strict=True))[:10]],
    }
    target = eval_dir(run, data_path, name, output_dir)
    with atomic_dir(target) as staged:
        write_json(staged / "results.json", results)
    return EvalReport(results, target)
