"""Rows -> padded tensors. Training pads on the right; the masks decide what is attended to and trained."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


def padded_length(lengths: list[int], padding: str, context_length: int, multiple_of: int | None) -> int:
    length = context_length if padding == "max_length" else max(lengths)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    return length


def pad_right(examples: list[Any], pad_id: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded on the right to `width`, and the attention mask."""
    input_ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(examples), width), dtype=np.int64)
    for row, example in enumerate(examples):
        input_ids[row, : len(example)] = example.input_ids
        attention[row, : len(example)] = 1
    return input_ids, attention


def collate_causal(
    examples: list[Any], pad_id: int, *, padding: str = "longest", context_length: int, multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    labels = [np.where(example.target_mask, example.input_ids, IGNORE_INDEX) for example in examples]
    return collate_token_labels(examples, pad_id, labels, padding=padding, context_length=context_length,
                                multiple_of=multiple_of)


def collate_token_labels(examples: list[Any], pad_id: int, labels: list[np.ndarray], *, padding: str,
                         context_length: int, multiple_of: int | None) -> dict[str, torch.Tensor]:
    """Ids, mask and a label per token (IGNORE_INDEX on padding), padded on the right."""
    width = padded_length([len(e) for e in examples], padding, context_length, multiple_of)
    input_ids, attention = pad_right(examples, pad_id, width)
    padded = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
    for row, row_labels in enumerate(labels):
        padded[row, : len(row_labels)] = row_labels
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(padded)}


def collate_causal_padding_free(examples: list[Any]) -> dict[str, torch.Tensor]:
    """The rows end to end in one [1, tokens] sequence (tuneforge.models.padding_free): position ids restart at
    each row, and a row's first token is never a target (in a padded batch the shift drops it; here the previous
    row's last token would otherwise be trained to predict it)."""
    input_ids = np.concatenate([example.input_ids for example in examples]).astype(np.int64)
    labels = np.concatenate([np.where(example.target_mask, example.input_ids, IGNORE_INDEX) for example in examples])
    lengths = np.array([len(example) for example in examples], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    labels[starts] = IGNORE_INDEX
    positions = np.arange(len(input_ids)) - np.repeat(starts, lengths)
    return {"input_ids": torch.from_numpy(input_ids)[None], "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long),
            "labels": torch.from_numpy(labels.astype(np.int64))[None], "position_ids": torch.from_numpy(positions)[None],
            "row_lengths": torch.from_numpy(lengths)}


def collate_classification(
    examples: list[Any], pad_id: int, *, padding: str = "longest", context_length: int, multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    width = padded_length([len(e) for e in examples], padding, context_length, multiple_of)
    input_ids, attention = pad_right(examples, pad_id, width)
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
            "labels": torch.tensor([example.label for example in examples], dtype=torch.long)}


def collate_token_classification(
    examples: list[Any], pad_id: int, *, padding: str = "longest", context_length: int, multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    return collate_token_labels(examples, pad_id, [example.labels for example in examples], padding=padding,
                                context_length=context_length, multiple_of=multiple_of)


def count_real_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())
