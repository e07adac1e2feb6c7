"""Token classification inference: entity spans in raw text, with character offsets, label and score.

Text is split into words the way training's span rows are (tuneforge.data.tokens.split_words); a text longer than
the run's context is cut into overlapping windows and each word keeps the prediction of the window where it has the
most context. A word's label comes from its subwords: `first` (the subword training labelled), `average` (mean
probabilities) or `max` (the most confident subword).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.data.tokens import merge_windows, split_words, tags_to_entities, word_windows
from tuneforge.errors import TuneforgeError
from tuneforge.rundir import CheckpointMeta

AGGREGATIONS = ("first", "average", "max")
WINDOW_OVERLAP = 32  # tokens shared by consecutive windows of a long text


@dataclass
class Entity:
    text: str
    label: str
    start: int  # character offsets in the input text, [start, end)
    end: int
    score: float  # mean probability of its words' tags

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "label": self.label, "start": self.start, "end": self.end,
                "score": round(self.score, 6)}


class Tagger:
    def __init__(self, model: Any, tokenizer: Any, meta: CheckpointMeta):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.labels: list[str] = list(meta.labels)
        self.scheme = meta.tag_scheme or "IOB2"
        self.context_length = meta.context_length or 512
        self.tokenizer.padding_side = "right"

    @classmethod
    def from_path(cls, path: str | Path) -> Tagger:
        from tuneforge.models.loading import load_checkpoint

        loaded = load_checkpoint(path, needs="tags_words")
        return cls(loaded.model, loaded.tokenizer, loaded.meta)

    def predict(self, texts: list[str], aggregation: str = "first") -> list[list[Entity]]:
        """The entities of each text."""
        if aggregation not in AGGREGATIONS:
            raise TuneforgeError(f"unknown aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
        results = []
        for text in texts:
            spans = split_words(text)
            words = [text[start:end] for start, end in spans]
            tagged = self.tag_words(words, aggregation) if words else []
            results.append(self.entities(text, spans, tagged))
        return results

    def entities(self, text: str, spans: list[tuple[int, int]], tagged: list[tuple[str, float]]) -> list[Entity]:
        found = []
        for label, first, last in tags_to_entities([tag for tag, _ in tagged], self.scheme):
            start, end = spans[first][0], spans[last - 1][1]
            score = sum(probability for _, probability in tagged[first:last]) / (last - first)
            found.append(Entity(text[start:end], label, start, end, score))
        return found

    def read_texts(self, path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
        """Texts (the `text` field) and the rows they came from, from a CSV or JSONL file."""
        from tuneforge.data.records import read_records
        from tuneforge.errors import DataError, where

        path = Path(path)
        records = read_records(path, "input")
        for record in records:
            if not isinstance(record.data.get("text"), str):
                raise DataError(f"{where(path, record.line)}: no 'text' field holding a string (fields found: "
                                f"{', '.join(record.data) or 'none'}); each row needs the text to tag")
        return [record.data["text"] for record in records], [record.data for record in records]

    @torch.no_grad()
    def tag_words(self, words: list[str], aggregation: str = "first") -> list[tuple[str, float]]:
        """(tag, probability) per word."""
        from tuneforge.data.tagging import word_token_counts

        room = self.context_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        counts = word_token_counts(self.tokenizer, words)
        windows = [(0, len(words))] if sum(counts) <= room else \
            word_windows(counts, room, min(WINDOW_OVERLAP, room // 2), words=words)
        per_window = [self.tag_window(words[start:end], aggregation) for start, end in windows]
        return merge_windows(windows, per_window)

    def tag_window(self, words: list[str], aggregation: str) -> list[tuple[str, float]]:
        encoding = self.tokenizer(words, is_split_into_words=True, return_tensors="pt")
        probabilities = torch.softmax(self.model(**encoding).logits[0].float(), dim=-1)
        by_word: dict[int, list[int]] = {}
        for position, word in enumerate(encoding.word_ids()):
            if word is not None:
                by_word.setdefault(word, []).append(position)
        tagged = []
        for word in range(len(words)):
            positions = by_word.get(word)
            if not positions:  # a word the tokenizer dropped (a lone control character): outside any entity
                tagged.append(("O", 1.0))
                continue
            rows = probabilities[positions]
            if aggregation == "first":
                row = rows[0]
            elif aggregation == "average":
                row = rows.mean(0)
            else:
                row = rows[int(rows.max(-1).values.argmax())]
            best = int(row.argmax())
            tagged.append((self.labels[best], float(row[best])))
        return tagged
