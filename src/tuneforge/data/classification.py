"""Classification rows: text columns joined in order, one label column, CSV or JSONL.

The label set is learned from the training file (sorted, saved with the run). Validation is `valid_path` or a
stratified, seeded `valid_split`. A validation label that training never saw is refused before training (the model
could not score it); in `tuneforge eval` data such rows are kept and scored as wrong, never dropped.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge.data.records import Record, read_records
from tuneforge.errors import DataError, where

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig

UNSEEN = -1  # label index of an evaluation row whose label the model was never trained on


@dataclass
class ClassExample:
    input_ids: np.ndarray  # int32
    label: int
    source: str  # file:line

    def __len__(self) -> int:
        return len(self.input_ids)


def check_columns(records: list[Record], path: Path, text_fields: list[str], label_field: str | None) -> None:
    """Every row has the text columns (and the label column when given); names what is missing and what exists."""
    wanted = [*text_fields, *([label_field] if label_field else [])]
    for record in records:
        missing = [name for name in wanted if name not in record.data]
        if missing:
            found = ", ".join(record.data) or "none"
            kind = "label column" if missing == [label_field] else "column"
            raise DataError(f"{where(path, record.line)}: missing {kind} {', '.join(repr(m) for m in missing)} "
                            f"(columns found: {found}); check text_fields / label_field")


def row_text(row: dict[str, Any], text_fields: list[str]) -> str:
    return " ".join(str(row[name]).strip() for name in text_fields if row.get(name) not in (None, "")).strip()


def row_label(record: Record, path: Path, label_field: str) -> str:
    value = record.data[label_field]
    label = "" if value is None else str(value).strip()
    if not label:
        raise DataError(f"{where(path, record.line)}: empty label in column '{label_field}'; every row needs one")
    return label


def read_labelled(path: Path, role: str, text_fields: list[str], label_field: str) -> tuple[list[Record], list[str]]:
    records = read_records(path, role)
    check_columns(records, path, text_fields, label_field)
    labels = [row_label(record, path, label_field) for record in records]
    for record in records:
        if not row_text(record.data, text_fields):
            raise DataError(f"{where(path, record.line)}: all text fields ({', '.join(text_fields)}) are empty")
    return records, labels


def stratified_split(labels: list[str], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out `share` of every class (seeded); every class keeps at least one training row."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    rng = random.Random(seed)
    held_out: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        if len(members) >= 2 and share > 0:
            held_out.update(members[: min(len(members) - 1, max(1, round(len(members) * share)))])
    train = [i for i in range(len(labels)) if i not in held_out]
    return train, sorted(held_out)


def labelled_splits(config: TrainConfig) -> tuple[tuple[list[Record], list[str]], tuple[list[Record], list[str]]]:
    """(records, labels) of the training and the validation rows: valid_path, or the seeded stratified split."""
    text_fields, label_field = list(config.text_fields or []), str(config.label_field)
    records, labels = read_labelled(Path(config.train_path), "train_path", text_fields, label_field)
    if config.valid_path:
        return (records, labels), read_labelled(Path(config.valid_path), "valid_path", text_fields, label_field)
    train_idx, valid_idx = stratified_split(labels, config.valid_split, config.seed)
    return tuple(([records[i] for i in chosen], [labels[i] for i in chosen]) for chosen in (train_idx, valid_idx))


def prepare_classification(config: TrainConfig, tokenizer: Any, max_length: int | None) -> Any:
    from tuneforge.data.prepare import VALID_ROWS_KEPT, LengthStats, PreparedData, choose_context_length

    text_fields = list(config.text_fields or [])
    train_path = Path(config.train_path)
    (train_records, train_labels), (valid_records, valid_labels) = labelled_splits(config)
    valid_path = Path(config.valid_path or config.train_path)
    label_names = sorted(set(train_labels))
    if len(label_names) < 2:
        raise DataError(f"{train_path}: only one label ({label_names[0]!r}) in training data; a classifier needs at least 2")
    refuse_unseen(valid_labels, label_names, valid_path)
    index = {label: i for i, label in enumerate(label_names)}
    lengths_all = token_lengths([row_text(r.data, text_fields) for r in train_records + valid_records], tokenizer)
    context_length = choose_context_length(config.context_length, lengths_all, max_length)
    notes, stats, splits = [], {}, {}
    for name, recs, labs, path in (("train", train_records, train_labels, train_path),
                                   ("valid", valid_records, valid_labels, valid_path)):
        examples, lengths, truncated = encode(recs, [index[label] for label in labs], path, text_fields, tokenizer,
                                              context_length, config.truncation)
        if truncated:
            notes.append(f"{name}: {truncated} row(s) truncated to context_length {context_length}")
        stats[name] = LengthStats.of(lengths, len(examples), truncated)
        splits[name] = examples
    counts = Counter(train_labels)
    notes.append("train rows per label: " + ", ".join(f"{label} {counts[label]}" for label in label_names))
    return PreparedData("classification", splits["train"], splits["valid"], context_length, stats, label_names, notes,
                        valid_rows=[record.data for record in (valid_records or train_records)[:VALID_ROWS_KEPT]])


def refuse_unseen(valid_labels: list[str], label_names: list[str], path: Path) -> None:
    unseen = Counter(label for label in valid_labels if label not in set(label_names))
    if unseen:
        named = ", ".join(f"'{label}' ({count} row{'s' if count > 1 else ''})" for label, count in unseen.most_common())
        raise DataError(f"{path}: validation label(s) {named} never appear in the training data; "
                        "add training rows for them or remove them from validation")


def token_lengths(texts: list[str], tokenizer: Any) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []


def encode(records: list[Record], labels: list[int], path: Path, text_fields: list[str], tokenizer: Any,
           context_length: int, policy: str) -> tuple[list[ClassExample], list[int], int]:
    """Tokenize with the tokenizer's own truncation (it keeps [CLS] ... [SEP] intact), counting truncated rows."""
    texts = [row_text(r.data, text_fields) for r in records]
    full = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
    lengths = [len(ids) for ids in full]
    long_rows = [i for i, n in enumerate(lengths) if n > context_length]
    if long_rows and policy == "refuse":
        first = records[long_rows[0]]
        more = f" (and {len(long_rows) - 1} more row(s))" if len(long_rows) > 1 else ""
        raise DataError(f"{where(path, first.line)}: row is {lengths[long_rows[0]]} tokens, longer than context_length "
                        f"{context_length}{more}; raise context_length or set truncation: truncate")
    if long_rows:
        clipped = tokenizer([texts[i] for i in long_rows], truncation=True, max_length=context_length)["input_ids"]
        for i, ids in zip(long_rows, clipped, strict=True):
            full[i] = ids
    examples = [ClassExample(np.asarray(ids, dtype=np.int32), label, where(path, r.line))
                for ids, label, r in zip(full, labels, records, strict=True)]
    return examples, lengths, len(long_rows)


def balanced_class_weights(labels: list[int], num_classes: int) -> list[float]:
    """scikit-learn's 'balanced' weights: n_rows / (n_classes × rows_of_class). Every class is in training."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=np.asarray(labels))
    return [float(w) for w in weights]
