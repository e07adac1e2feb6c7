"""Evaluation of a trained run on a reference file.

- classifier: weighted and per-class precision, recall, F1, support, accuracy and a confusion matrix. Rows whose
  label training never saw are kept: reported by name and count and scored as wrong (the model cannot predict a
  class it does not have).
- token tagger: entity-level precision, recall and F1 (strict span match) micro and per type, word accuracy, the
  first mistakes, and a confusion matrix over entity types with "none" for missed and spurious entities.
- causal LM: loss on the reference tokens, then generated answers scored as validation scores them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_dir, write_json, write_jsonl
from tuneforge.data.classification import read_labelled, row_text
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.metrics import classification_summary, perplexity
from tuneforge.rundir import EvalDir, RunDir
from tuneforge.scoring import GenerationScore, run_user_metrics, score_answers


@dataclass
class EvalReport:
    results: dict[str, Any]
    output_dir: Path
    tracked: str | None = None  # what became of the scores in the run's MLflow run, when it has one

    @property
    def files(self) -> EvalDir:
        """Where each of the evaluation's files is."""
        return EvalDir(self.output_dir)


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
        write_json(EvalDir(staged).results_file, results)
        plot_confusion(results["confusion_matrix"], EvalDir(staged).confusion_plot)
    return kept_in_run(run, EvalReport(results, target), output_dir)


NO_ENTITY = "none"  # the confusion row of a spurious entity, the column of a missed one


def evaluate_tagger(run: str | Path, data_path: str | Path, *, name: str | None = None,
                    output_dir: str | Path | None = None, batch_size: int = 32, aggregation: str = "first") -> EvalReport:
    from tuneforge.data.records import check_data_file
    from tuneforge.data.tokens import entity_scores, read_tagged, tags_to_entities, token_accuracy
    from tuneforge.predict_tokens import Tagger

    del batch_size  # sentences are tagged one at a time (windows differ per sentence)
    data_path = Path(data_path)
    check_data_file(data_path, "eval data")
    tagger = Tagger.from_path(run)
    meta = tagger.meta
    sentences, repaired = read_tagged(data_path, tokens_field=meta.tokens_field or "tokens",
                                      tags_field=meta.tags_field or "tags", scheme=tagger.scheme)
    predicted = [[tag for tag, _ in tagger.tag_words(s.words, aggregation)] for s in sentences]
    truth = [s.tags for s in sentences]
    scores = entity_scores(truth, predicted, tagger.scheme)
    pairs = [entity_pairs(tags_to_entities(t, tagger.scheme), tags_to_entities(p, tagger.scheme))
             for t, p in zip(truth, predicted, strict=True)]
    names = sorted({kind for sentence in pairs for pair in sentence for kind in pair} - {NO_ENTITY}) + [NO_ENTITY]
    matrix = [[0] * len(names) for _ in names]
    for true_kind, predicted_kind in (pair for sentence in pairs for pair in sentence):
        matrix[names.index(true_kind)][names.index(predicted_kind)] += 1
    results = {
        "data": str(data_path), "checkpoint": str(run), "sentences": len(sentences), "repaired_tags": repaired,
        "aggregation": aggregation, "precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
        "accuracy": token_accuracy(truth, predicted), "per_type": scores["per_type"],
        "confusion_matrix": {"labels": names, "matrix": matrix},
        "mistakes": [tagging_mistake(s, p, tagger.scheme) for s, p in zip(sentences, predicted, strict=True)
                     if tags_to_entities(s.tags, tagger.scheme) != tags_to_entities(p, tagger.scheme)][:MISTAKES_SHOWN],
    }
    target = eval_dir(run, data_path, name, output_dir)
    with atomic_dir(target) as staged:
        write_json(EvalDir(staged).results_file, results)
        plot_confusion(results["confusion_matrix"], EvalDir(staged).confusion_plot)
    return kept_in_run(run, EvalReport(results, target), output_dir)


def kept_in_run(run: str | Path, report: EvalReport, output_dir: str | Path | None) -> EvalReport:
    """An evaluation's scores go to the run's MLflow run (where it has one); written into its run (no output_dir),
    it shows on the run's model cards: they are written again."""
    track(report, run)
    if output_dir is None:
        from tuneforge.card import refresh_cards

        refresh_cards(RunDir.locate(run))
    return report


def track(report: EvalReport, run: str | Path) -> EvalReport:
    """The scores of an evaluation of a run that logs to MLflow, added to its MLflow run at the step of the
    checkpoint scored (eval.<name>/<metric>, and eval.<name>/base/<metric> with --compare-base), with the
    evaluation's files as artifacts under eval/<name>. `report.tracked` says what became of them."""
    from tuneforge.rundir import CheckpointMeta, locate, resolve_checkpoint

    owner = RunDir.of_checkpoint(locate(run))
    if owner is None or not owner.mlflow_file.is_file():
        return report
    from tuneforge.observe.mlflow_runs import INSTALL, MlflowRun, RunRecord, installed

    record = RunRecord.read(owner.mlflow_file)
    if record is None or not installed():
        report.tracked = f"MLflow: scores not added to the run's MLflow run ({INSTALL})"
        return report
    name, step = report.output_dir.name, CheckpointMeta.read(resolve_checkpoint(run)).step
    timestamp = int(time.time() * 1000)
    rows = [(f"eval.{name}/{key}", value, timestamp, step) for key, value in eval_scores(report.results).items()]
    try:
        mlflow = MlflowRun.find(record)
        if mlflow is None:
            raise TuneforgeError(f"MLflow at {record.tracking_uri}: run {record.run_id} is gone")
        mlflow.log_metrics(rows)
        mlflow.log_artifacts([report.output_dir], "eval")
    except TuneforgeError as exc:
        report.tracked = f"{exc}; scores not added"
    else:
        report.tracked = f"MLflow: {len(rows)} scores added to run {record.run_id} at step {step}"
    return report


def eval_scores(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """An evaluation's numbers as metrics, less their eval_ prefix (the base model's under base/)."""
    scores = {f"{prefix}{key.removeprefix('eval_')}": float(value) for key, value in results.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if isinstance(results.get("base"), dict):
        scores.update(eval_scores(results["base"], "base/"))
    return scores


def entity_pairs(true: list[tuple[str, int, int]], predicted: list[tuple[str, int, int]]) -> list[tuple[str, str]]:
    """(true type, predicted type) per entity, matched by exact span; NO_ENTITY on the side that has none."""
    by_span = {(start, end): kind for kind, start, end in predicted}
    pairs = [(kind, by_span.pop((start, end), NO_ENTITY)) for kind, start, end in true]
    return pairs + [(NO_ENTITY, kind) for kind in by_span.values()]


def tagging_mistake(sentence: Any, predicted: list[str], scheme: str) -> dict[str, Any]:
    from tuneforge.data.tokens import tags_to_entities

    def spans(tags: list[str]) -> list[list[str]]:
        return [[" ".join(sentence.words[start:end]), kind] for kind, start, end in tags_to_entities(tags, scheme)]

    return {"source": sentence.source, "text": sentence.text or " ".join(sentence.words),
            "expected": spans(sentence.tags), "predicted": spans(predicted)}


def eval_dir(run: str | Path, data_path: Path, name: str | None, output_dir: str | Path | None) -> Path:
    """Where results go: `output_dir`, else RUN/eval/<name>, with RUN found by name under ./runs as every command
    that takes a run finds it."""
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
                    max_new_tokens: int = 128, target_format: str = "auto", constraint: Any = None,
                    compare_base: bool = False, user_metrics: tuple[str, ...] = ()) -> EvalReport:
    """Loss and perplexity on every row (same masks as training), then greedy generation on up to `max_generate`
    rows with a reference answer, scored as validation scores it (tuneforge.scoring): stop rate, exact match, and
    for JSON answers validity, parsed equality, field precision/recall/F1 and run-on text. `compare_base` scores the
    base model's answers too (LoRA runs). `constraint` (constrain.constraint_for) restricts the answers. Every answer goes to samples.jsonl beside results.json."""
    from tuneforge.data import causal
    from tuneforge.data.records import read_records
    from tuneforge.generate import GenerationSettings, Generator, read_prompt_rows

    data_path = Path(data_path)
    records = read_records(data_path, "eval data")
    shape = causal.detect_shape(records, data_path)
    causal.validate_rows(records, data_path, shape)
    generator = Generator.from_path(run)
    loss = causal_loss(generator, records, data_path, shape, batch_size)
    pairs = [(prompt, row["reference"]) for prompt, row in read_prompt_rows(data_path) if "reference" in row]
    pairs = pairs[:max_generate]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    tuned = answer_and_score(generator, pairs, settings, target_format=target_format, constraint=constraint,
                             user_metrics=user_metrics)
    results = {"data": str(data_path), "checkpoint": str(run), "rows": len(records), "eval_loss": loss,
               "perplexity": perplexity(loss), "generated": len(pairs), "constraint": constraint.description if constraint else None,
               **tuned.summary()}
    if compare_base:
        base = answer_and_score(generator, pairs, settings, target_format=target_format, constraint=constraint,
                                user_metrics=user_metrics, use_base=True)
        results["base"] = base.summary()
    target = eval_dir(run, data_path, name, output_dir)
    with atomic_dir(target) as staged:
        files = EvalDir(staged)
        write_json(files.results_file, results)
        write_jsonl(files.samples_file, tuned.samples)
        if compare_base:
            write_jsonl(files.base_samples_file, base.samples)
    return kept_in_run(run, EvalReport(results, target), output_dir)


def causal_loss(generator: Any, records: list[Any], data_path: Path, shape: str, batch_size: int) -> float:
    """Token-weighted loss on the target tokens of every row, with training's masks and context length."""
    import torch

    from tuneforge.data import causal
    from tuneforge.data.collate import collate_causal
    from tuneforge.models.objectives import CausalLMObjective

    tokenizer = generator.tokenizer
    tokenizer.padding_side = "right"
    try:
        examples = causal.tokenize_records(records, data_path, shape, tokenizer, train_on_inputs=False)
        context = generator.meta.context_length or max(len(e) for e in examples)
        examples = [causal.Example(e.input_ids[:context], e.target_mask[:context], e.source) for e in examples]
        objective = CausalLMObjective(generator.model)
        loss_sum = count = 0.0
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collate_causal(examples[start : start + batch_size], tokenizer.pad_token_id,
                                       context_length=context)
                batch_loss, batch_count = objective(**batch)
                loss_sum, count = loss_sum + float(batch_loss), count + float(batch_count)
    finally:
        tokenizer.padding_side = "left"
    return loss_sum / max(count, 1.0)


MISTAKES_SHOWN = 20


@dataclass
class GenerationEval:
    """Generated answers scored against references: the metrics, and one sample row per answer."""

    score: GenerationScore
    samples: list[dict[str, Any]]
    user: dict[str, float]
    seconds: float

    @property
    def metrics(self) -> dict[str, float]:
        return {**self.score.metrics, **self.user}

    def mistakes(self, limit: int = MISTAKES_SHOWN) -> list[dict[str, Any]]:
        wrong = [s for s in self.samples if not (s["json_exact"] if self.score.is_json else s["exact"])]
        return [{key: s[key] for key in ("prompt", "reference", "answer", "finish_reason")} for s in wrong[:limit]]

    def summary(self) -> dict[str, Any]:
        """What results.json keeps: metrics, the first mistakes, and per JSON field how often it went wrong."""
        errors = {path: dict(kinds) for path, kinds in self.score.field_error_counts().items()}
        return {**self.metrics, "target_format": "json" if self.score.is_json else "text",
                "generate_seconds": round(self.seconds, 2), "mistakes": self.mistakes(),
                **({"field_errors": errors} if self.score.is_json else {})}


def answer_and_score(generator: Any, pairs: list[tuple[Any, str]], settings: Any, *, target_format: str = "auto",
                     constraint: Any = None, user_metrics: tuple[str, ...] = (), use_base: bool = False) -> GenerationEval:
    """Greedy answers to (prompt, reference) pairs, scored."""
    started = time.perf_counter()
    completions = generator.complete([p for p, _ in pairs], settings, use_base=use_base, constraint=constraint)
    return score_completions(pairs, completions, target_format=target_format, user_metrics=user_metrics,
                             seconds=time.perf_counter() - started)


def score_completions(pairs: list[tuple[Any, str]], completions: list[Any], *, target_format: str = "auto",
                      user_metrics: tuple[str, ...] = (), seconds: float = 0.0) -> GenerationEval:
    references = [reference for _, reference in pairs]
    answers = [c.text for c in completions]
    score = score_answers(answers, references, [c.finish_reason == "stop" for c in completions],
                          target_format=target_format)
    user = run_user_metrics(user_metrics, answers, references) if user_metrics else {}
    samples = [{"prompt": prompt_text(prompt), "reference": reference, "answer": completion.text,
                "finish_reason": completion.finish_reason, "new_tokens": completion.new_tokens, "exact": verdict.exact,
                "json_valid": verdict.json_valid, "json_exact": verdict.json_exact, "run_on": verdict.run_on,
                "field_errors": verdict.field_errors}
               for (prompt, reference), completion, verdict in zip(pairs, completions, score.answers, strict=True)]
    return GenerationEval(score, samples, user, seconds)


def prompt_text(prompt: Any) -> str:
    """What a person reads as the prompt: the last user message of a chat, or the prompt string."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt[-1].get("content", ""))
