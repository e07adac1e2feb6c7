"""Padding-free batches for causal decoders: the rows of a micro-batch laid end to end in one sequence.

A padded batch computes every layer for every pad position: 7 % of the tokens of batches of ~120-token chat rows,
42 % when lengths range from 32 to 512 (bench/train_vs_hf.py's shapes). Laid end to end, the rows cost exactly
their own tokens. Two things keep rows apart: position ids restart at 0 for every row (so rotary embeddings see
what they would see unpacked), and attention runs row by row, causal inside each row, through an attention function
registered with transformers (`row_attention`): no token attends to another row, there is no [tokens, tokens] mask,
and attention costs the sum of the rows' squared lengths rather than a padded batch's. The loss is the same as the
padded batch's up to float rounding (tests/test_padding_free.py checks loss and gradients).

Used for decoders whose attention goes through transformers' attention interface with rotary positions and no
sliding window shorter than the context; anything else trains on padded batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION_NAME = "tuneforge_rows"
# Rotary decoders whose attention modules call transformers' attention interface with (query, key, value, ...).
SUPPORTED_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "stablelm", "starcoder2", "gemma"}
)


def padding_free_blocker(model_config: Any, context_length: int) -> str | None:
    """Why this model cannot train on padding-free batches, or None when it can."""
    model_type = getattr(model_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one tuneforge lays rows end to end for"
    window = getattr(model_config, "sliding_window", None)
    if getattr(model_config, "use_sliding_window", True) and window and window < context_length:
        return f"its sliding window ({window}) is shorter than context_length ({context_length})"
    return None


def row_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  row_lengths: list[int] | None = None, **_: Any) -> tuple[torch.Tensor, None]:
    """Causal attention inside each row of a padding-free sequence ([1, heads, tokens, head_dim] in, [1, tokens,
    heads, head_dim] out, as transformers' attention functions return)."""
    if row_lengths is None:
        raise RuntimeError("row_attention needs row_lengths: it serves padding-free training batches only")
    grouped = query.shape[1] != key.shape[1]
    # split, not slicing: the backward of a split is one concatenation, that of each slice a full-size zero fill
    outputs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling, enable_gqa=grouped)
        for q, k, v in zip(*(t.split(row_lengths, dim=2) for t in (query, key, value)), strict=True)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def rows_attend_within_themselves(model_config: Any) -> Iterator[None]:
    """Within the block, the model's attention layers use `row_attention` (and transformers builds no mask)."""
    from transformers import AttentionInterface

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, row_attention)
    previous = model_config._attn_implementation
    model_config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        model_config._attn_implementation = previous

