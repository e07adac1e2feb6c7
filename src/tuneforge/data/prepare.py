"""From config to tokenized train/validation sets, with the statistics `tuneforge plan` prints."""

from __future__ import annotations

import random
from itertools import groupby
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from tuneforge.data import causal
from tuneforge.data.schema import infer_answer_schema
from tuneforge.data.records import Record, read_dataset
from tuneforge.errors import DataError

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig


VALID_ROWS_KEPT = 64
T = TypeVar("T")


@dataclass
class LengthStats:
    rows: int
    p50: int
    p95: int
    max: int
    truncated: int
    tokens: int
    target_tokens: int
    dropped: int = 0  # rows left with no target tokens within context_length

    @classmethod
    def of(cls, lengths: list[int], target_tokens: int, truncated: int) -> LengthStats:
        array = np.asarray(lengths or [0])
        return cls(
            rows=len(lengths),
            p50=int(np.percentile(array, 50)),
            p95=int(np.percentile(array, 95)),
            max=int(array.max()),
            truncated=truncated,
            tokens=int(array.sum()),
            target_tokens=target_tokens,
        )


@dataclass
class PreparedData:
    """Tokenized rows ready for the training loop, plus what the plan reports about them."""

    shape: str  # chat | prompt_completion | text | classification
    train: list[Any]
    valid: list[Any]
    context_length: int
    stats: dict[str, LengthStats]
    labels: list[str] = field(default_factory=list)  # classification only
    notes: list[str] = field(default_factory=list)
    valid_rows: list[dict[str, Any]] = field(default_factory=list)  # raw rows, a few, kept in the run for later stages
    system_prompt: str | None = None  # causal chat: the system message every training row shared, if one
    answer_schema: dict[str, Any] | None = None  # causal: the JSON Schema every training target satisfies, if one
    long_rows: str = "truncated by context_length"  # what happens to a row longer than the context (plan wording)
    stream: Any = None  # data.streaming.StreamedTrain: training rows the workers stream (then `train` is empty)

    @property
    def train_rows(self) -> int:
        return self.stream.rows if self.stream else len(self.train)


def split_records(records: list[T], share: float, seed: int, path: Path) -> tuple[list[T], list[T]]:
    """Seeded random hold-out of `share` of the rows (at least one, never all)."""
    if share == 0:
        return records, []
    if len(records) < 2:
        raise DataError(f"{path}: only {len(records)} row; a validation split needs at least 2 (or give valid_path)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_valid = min(len(records) - 1, max(1, round(len(records) * share)))
    held_out = set(order[:n_valid])
    train = [r for i, r in enumerate(records) if i not in held_out]
    valid = [r for i, r in enumerate(records) if i in held_out]
    return train, valid


Parts = list[tuple[str, list[Record]]]  # (file as messages name it, its rows), in file order


def prepare_causal(config: TrainConfig, tokenizer: Any, model_max_length: int | None) -> PreparedData:
    train_parts = read_dataset(config.train_path, "train_path")
    shape = causal.detect_shape(train_parts[0][1], Path(train_parts[0][0]))
    notes = validate_parts(train_parts, shape)
    if config.valid_path:
        valid_parts = read_dataset(config.valid_path, "valid_path")
        valid_shape = causal.detect_shape(valid_parts[0][1], Path(valid_parts[0][0]))
        if valid_shape != shape:
            raise DataError(f"{config.valid_path}: rows are {valid_shape} but train_path's rows are {shape}; use one shape")
        notes += validate_parts(valid_parts, shape)
    else:
        train_parts, valid_parts = split_parts(train_parts, config.valid_split, config.seed, config.train_path)

    train = tokenize_parts(train_parts, shape, tokenizer, config.train_on_inputs)
    valid = tokenize_parts(valid_parts, shape, tokenizer, config.train_on_inputs)
    context_length = choose_context_length(config.context_length, [len(e) for e in train + valid], model_max_length)
    stats = {}
    kept = {}
    for name, examples in (("train", train), ("valid", valid)):
        lengths = [len(example) for example in examples]
        kept[name], truncated = fit_to_context(examples, context_length, config.truncation)
        dropped = len(examples) - len(kept[name])
        notes += fit_notes(name, dropped, truncated, context_length)
        target_tokens = int(sum(example.target_mask.sum() for example in kept[name]))
        # Token lengths describe every row read; the row count is what training uses (steps/epoch follow it).
        stats[name] = replace(LengthStats.of(lengths, target_tokens, truncated), rows=len(kept[name]), dropped=dropped)
    if not kept["train"]:
        raise DataError(f"{config.train_path}: no row has target tokens within context_length {context_length}")
    train_rows = [record.data for _, records in train_parts for record in records]
    valid_rows = [record.data for _, records in (valid_parts or train_parts) for record in records]
    inferred = infer_answer_schema([causal.answer_target(row) for row in train_rows]) if shape != "text" else None
    return PreparedData(shape, kept["train"], kept["valid"], context_length, stats,
                        notes=notes + (inferred.notes if inferred else []),
                        valid_rows=valid_rows[:rows_kept(config)],
                        system_prompt=causal.shared_system_prompt(train_rows),
                        answer_schema=inferred.schema if inferred else None)


def validate_parts(parts: Parts, shape: causal.Shape) -> list[str]:
    return [note for label, records in parts for note in causal.validate_rows(records, Path(label), shape)]


def tokenize_parts(parts: Parts, shape: causal.Shape, tokenizer: Any, train_on_inputs: bool) -> list[causal.Example]:
    return [example for label, records in parts
            for example in causal.tokenize_records(records, Path(label), shape, tokenizer, train_on_inputs)]


def split_parts(parts: Parts, share: float, seed: int, spec: str) -> tuple[Parts, Parts]:
    """`split_records` over the rows of all files together; each side keeps its rows grouped by file, in order."""
    located = [(label, record) for label, records in parts for record in records]
    train, valid = split_records(located, share, seed, Path(spec))
    return group_by_file(train), group_by_file(valid)


def group_by_file(located: list[tuple[str, Record]]) -> Parts:
    return [(label, [record for _, record in group]) for label, group in groupby(located, key=lambda item: item[0])]


def fit_notes(name: str, dropped: int, truncated: int, context_length: int) -> list[str]:
    notes = []
    if dropped:
        notes.append(f"{name}: {dropped} row(s) dropped: no target tokens left within context_length {context_length}")
    if truncated:
        notes.append(f"{name}: {truncated} row(s) truncated to context_length {context_length}")
    return notes


def rows_kept(config: TrainConfig) -> int:
    """Raw validation rows kept: what export checks fidelity on, or more if validation generates on more."""
    return max(VALID_ROWS_KEPT, config.eval_generate.max_rows if config.eval_generate else 0)


def choose_context_length(configured: int | None, lengths: list[int], model_max_length: int | None) -> int:
    """The configured length, or the longest row capped at what the model supports."""
    if configured:
        return configured
    longest = max(lengths, default=1)
    return min(longest, model_max_length) if model_max_length else longest


def fit_to_context(examples: list[causal.Example], context_length: int, policy: str) -> tuple[list[causal.Example], int]:
    """Truncate (or refuse) rows longer than the context; drop rows left with nothing to learn."""
    too_long = [example for example in examples if len(example) > context_length]
    if too_long and policy == "refuse":
        first = too_long[0]
        others = f" (and {len(too_long) - 1} more row(s))" if len(too_long) > 1 else ""
        raise DataError(
            f"{first.source}: row is {len(first)} tokens, longer than context_length {context_length}{others}; "
            "raise context_length or set truncation: truncate"
        )
    kept = []
    for example in examples:
        if len(example) > context_length:
            example = causal.Example(example.input_ids[:context_length], example.target_mask[:context_length], example.source)
        # A target at position 0 has no preceding token to be predicted from, so it does not count.
        if example.target_mask[1:].any():
            kept.append(example)
    return kept, len(too_long)
