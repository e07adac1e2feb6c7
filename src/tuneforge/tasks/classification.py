"""Sequence classification with an encoder: text columns joined, one label column; class-weighted cross-entropy;
validation reports accuracy and weighted precision / recall / F1. Inference predicts a label and a probability per
class; evaluation adds per-class scores and a confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.tasks.base import Task
from tuneforge.taskspec import CLASSIFICATION


class SequenceClassification(Task):
    spec = CLASSIFICATION

    def prepare_data(self, config: Any, tokenizer: Any, max_length: int | None, progress: Any = None) -> Any:
        from tuneforge.data.classification import prepare_classification

        return prepare_classification(config, tokenizer, max_length)

    def run_facts(self, config: Any, tokenizer: Any, data: Any) -> dict[str, Any]:
        from tuneforge.data.classification import balanced_class_weights

        facts: dict[str, Any] = {"text_fields": list(config.text_fields), "label_field": config.label_field}
        if config.class_weights == "balanced":
            facts["class_weights"] = balanced_class_weights([example.label for example in data.train], len(data.labels))
        return facts

    def collate(self, examples: list[Any], pad_id: int, *, padding: str, context_length: int,
                multiple_of: int | None) -> dict[str, Any]:
        from tuneforge.data.collate import collate_classification

        return collate_classification(examples, pad_id, padding=padding, context_length=context_length,
                                      multiple_of=multiple_of)

    def objective(self, model: Any, meta: Any, config: Any) -> Any:
        from tuneforge.models.objectives import ClassificationObjective

        return ClassificationObjective(model, meta.class_weights)

    def load(self, path: str | Path) -> Any:
        from tuneforge.predict import Predictor

        return Predictor.from_path(path)

    def evaluate(self, run: str | Path, data_path: str | Path, **options: Any) -> Any:
        from tuneforge.evaluate import evaluate_classifier

        return evaluate_classifier(run, data_path, **options)

    def eval_view(self, report: Any) -> Any:
        from tuneforge.eval_views import classification_view

        return classification_view(report)

    def predictions(self, loaded: Any, texts: list[str], *, batch_size: int, threshold: float | None,
                    fallback: str | None, aggregation: str) -> list[dict[str, Any]]:
        from tuneforge.predict import apply_threshold

        return [p.to_dict() for p in apply_threshold(loaded.predict(texts, batch_size), threshold, fallback)]

    def fidelity_check(self, loaded: Any, samples: list[dict[str, Any]], *, prompts: int, max_new_tokens: int) -> Any:
        from tuneforge.fidelity import classifier_check

        return classifier_check(loaded, samples)

    def next_step_hint(self, run_dir: Path) -> str | None:
        return f"tuneforge predict {run_dir} --text \"...\""
