"""Padding-free batches for causal decoders: the rows of a micro-batch laid end to end in one sequence.

A padded batch computes every layer for every pad position: 7 % of the tokens of batches of ~120-token chat rows,
42 % when lengths range from 32 to 512 (bench/train_vs_hf.py's shapes). Laid end to end, the rows cost exactly
their own tokens. Two things keep rows apart: position ids restart at 0 for every row (so rotary embeddings see
what they would see unpacked), and attention runs row by row, causal inside each row, through an attention function
registered with transformers (`row_attention`): no token attends to another row and there is no [tokens, tokens]
mask. Rows of similar length attend in one call on a padded [rows, heads, longest, head_dim] view gathered from the
sequence (one fused attention call runs ~1.5x faster per FLOP on CPU than one call per row, `bench/step_ab.py`);
rows of very different lengths attend row by row, so attention costs the sum of the rows' squared lengths rather
than a padded batch's. The loss is the same as the padded batch's up to float rounding (tests/test_padding_free.py
checks loss and gradients).

Used for decoders whose attention goes through transformers' attention interface with rotary positions and no
sliding window shorter than the context; anything else trains on padded batches.
"""

from __future__ import annotations

import contextlib
import functools
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
    attend = functools.partial(F.scaled_dot_product_attention, is_causal=True, dropout_p=dropout, scale=scaling,
                               enable_gqa=query.shape[1] != key.shape[1])
    if len(row_lengths) > 1 and padded_attention_pays(row_lengths):
        return attend_padded(attend, query, key, value, row_lengths), None
    # split, not slicing: the backward of a split is one concatenation, that of each slice a full-size zero fill
    outputs = [attend(q, k, v) for q, k, v in zip(*(t.split(row_lengths, dim=2) for t in (query, key, value)),
                                                  strict=True)]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


# One attention call over a padded view does the pads' work too; it still wins while that work is under half again
# the rows' own (per FLOP, one call per row is ~1.5x slower: bf16 and fp32, rows of 64-512 tokens, 2 threads).
PADDED_ATTENTION_MAX_WORK = 1.5


def padded_attention_pays(row_lengths: list[int]) -> bool:
    longest = max(row_lengths)
    return len(row_lengths) * longest * longest <= PADDED_ATTENTION_MAX_WORK * sum(n * n for n in row_lengths)


def attend_padded(attend: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  row_lengths: list[int]) -> torch.Tensor:
    """Every row at once on a [rows, heads, longest, head_dim] view. The pads after a row's tokens are copies of
    that row's last token: a causal row never attends to a later position, so no real token sees them, and the
    outputs at the pads are dropped (their gradients are zero)."""
    gather, scatter = padded_layout(tuple(row_lengths), query.device)
    rows, longest = len(row_lengths), max(row_lengths)

    def padded(t: torch.Tensor) -> torch.Tensor:
        return t[0].index_select(1, gather).view(t.shape[1], rows, longest, t.shape[3]).transpose(0, 1)

    output = attend(padded(query), padded(key), padded(value))  # [rows, heads, longest, head_dim]
    flat = output.transpose(1, 2).reshape(rows * longest, output.shape[1], output.shape[3])
    return flat.index_select(0, scatter).unsqueeze(0)


@functools.lru_cache(maxsize=16)
def padded_layout(row_lengths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices that lay the sequence out as padded rows (`gather`, pads repeat the row's last token) and pick the
    real tokens back out of the padded layout (`scatter`, in sequence order). Every layer of a step asks again."""
    longest, start = max(row_lengths), 0
    gather, scatter = [], []
    for row, length in enumerate(row_lengths):
        gather.extend(range(start, start + length))
        gather.extend([start + length - 1] * (longest - length))
        scatter.extend(range(row * longest, row * longest + length))
        start += length
    return (torch.tensor(gather, dtype=torch.long, device=device),
            torch.tensor(scatter, dtype=torch.long, device=device))


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

