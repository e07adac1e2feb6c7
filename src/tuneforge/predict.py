"""Classification inference: a label and a probability per class for each text, with an optional confidence
threshold that maps uncertain predictions to a fallback label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.data.classification import check_columns, row_text
from tuneforge.data.records import read_records
from tuneforge.rundir import CheckpointMeta


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    fallback_from: str | None = None  # the model's own label when a confidence threshold overrode it

    @property
    def confidence(self) -> float:
        return max(self.probabilities.values())

    def to_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"label": self.label, "confidence": round(self.confidence, 6),
                                 "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()}}
        if self.fallback_from:
            shown["below_threshold"] = self.fallback_from
        return shown


class Predictor:
    def __init__(self, model: Any, tokenizer: Any, meta: CheckpointMeta):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.labels: list[str] = list(meta.labels)
        self.text_fields: list[str] = list(meta.text_fields or [])
        self.max_length = meta.context_length or 512
        self.tokenizer.padding_side = "right"

    @classmethod
    def from_path(cls, path: str | Path) -> Predictor:
        from tuneforge.models.loading import load_checkpoint

        loaded = load_checkpoint(path, needs="classifies_texts")
        return cls(loaded.model, loaded.tokenizer, loaded.meta)

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        predictions: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start : start + batch_size], truncation=True, max_length=self.max_length,
                                   padding=True, return_tensors="pt")
            probabilities = torch.softmax(self.model(**batch).logits.float(), dim=-1)
            for row in probabilities.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                predictions.append(Prediction(self.labels[best], dict(zip(self.labels, row, strict=True))))
        return predictions

    def read_texts(self, path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
        """Texts (the run's text fields joined) and the rows they came from, from a CSV or JSONL file."""
        path = Path(path)
        records = read_records(path, "input")
        check_columns(records, path, self.text_fields, None)
        return [row_text(r.data, self.text_fields) for r in records], [r.data for r in records]


def apply_threshold(predictions: list[Prediction], threshold: float | None, fallback: str | None) -> list[Prediction]:
    """Below `threshold` confidence the label becomes `fallback` (probabilities are kept as they were)."""
    if threshold is None or fallback is None:
        return predictions
    return [p if p.confidence >= threshold else Prediction(fallback, p.probabilities, fallback_from=p.label)
            for p in predictions]
