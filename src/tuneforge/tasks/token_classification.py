"""Token classification with an encoder: tagged words (IOB2 or IOBES) from JSONL tokens/tags, JSONL character spans
or CoNLL text; a label per word on its first subword; class-weighted cross-entropy; validation reports entity-level
precision / recall / F1 (strict span match, as seqeval) and word accuracy. Inference gives entity spans with
character offsets, label and score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.tasks.base import Task
from tuneforge.taskspec import TOKEN_CLASSIFICATION


class TokenClassification(Task):
    spec = TOKEN_CLASSIFICATION

    def prepare_data(self, config: Any, tokenizer: Any, max_length: int | None, progress: Any = None) -> Any:
        from tuneforge.data.tagging import prepare_token_classification

        return prepare_token_classification(config, tokenizer, max_length)

    def run_facts(self, config: Any, tokenizer: Any, data: Any) -> dict[str, Any]:
        from tuneforge.data.tagging import label_token_counts

        facts: dict[str, Any] = {"tag_scheme": config.tag_scheme, "tokens_field": config.tokens_field,
                                 "tags_field": config.tags_field}
        if config.class_weights == "balanced":
            counts = label_token_counts(data.train, len(data.labels))
            total, present = sum(counts), sum(1 for count in counts if count)
            # scikit-learn's 'balanced' over the labels seen; a label never seen in training (a scheme form such as
            # E-X that no word carried) keeps weight 1
            facts["class_weights"] = [total / (present * count) if count else 1.0 for count in counts]
        return facts

    def collate(self, examples: list[Any], pad_id: int, *, padding: str, context_length: int,
                multiple_of: int | None) -> dict[str, Any]:
        from tuneforge.data.collate import collate_token_classification

        return collate_token_classification(examples, pad_id, padding=padding, context_length=context_length,
                                            multiple_of=multiple_of)

    def objective(self, model: Any, meta: Any, config: Any) -> Any:
        from tuneforge.models.objectives import TokenClassificationObjective

        return TokenClassificationObjective(model, meta.labels, meta.tag_scheme or "IOB2", meta.class_weights)

    def load(self, path: str | Path) -> Any:
        from tuneforge.predict_tokens import Tagger

        return Tagger.from_path(path)

    def evaluate(self, run: str | Path, data_path: str | Path, **options: Any) -> Any:
        from tuneforge.evaluate import evaluate_tagger

        return evaluate_tagger(run, data_path, **options)

    def eval_view(self, report: Any) -> Any:
        from tuneforge.eval_views import tagging_view

        return tagging_view(report)

    def predictions(self, loaded: Any, texts: list[str], *, batch_size: int, threshold: float | None,
                    fallback: str | None, aggregation: str) -> list[dict[str, Any]]:
        return [{"entities": [entity.to_dict() for entity in entities]}
                for entities in loaded.predict(texts, aggregation)]

    def fidelity_check(self, loaded: Any, samples: list[dict[str, Any]], *, prompts: int, max_new_tokens: int) -> Any:
        from tuneforge.fidelity import tagger_check

        return tagger_check(loaded, samples)

    def next_step_hint(self, run_dir: Path) -> str | None:
        return f"tuneforge predict {run_dir} --text \"...\""
