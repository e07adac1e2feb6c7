"""Log-probabilities of given tokens, for the API's `logprobs` (what the model thought of each token it answered, and
of each prompt token with `echo`). Engine-neutral: torch and llama.cpp (in its child process, which never imports
torch) both hand over their logits as a numpy array and get the same answer.

The values are the model's own distribution, log-softmax of the raw logits: not the temperature-, top_p- or
grammar-shaped one a token was drawn from (as vLLM's default), so a score does not depend on how it was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; its completions take 5, lm-eval asks for 1


@dataclass
class TokenScore:
    token: int
    logprob: float | None  # None for a sequence's first token: nothing before it predicts it
    top: list[tuple[int, float]]  # the `top` likeliest tokens at that position, likeliest first


def score_rows(ids: list[int], logits: np.ndarray, first_row: int, start: int, top: int) -> list[TokenScore]:
    """Scores of ids[start:], from `logits` whose row r holds the model's output after position first_row + r (so
    it predicts the token at first_row + r + 1)."""
    scores = []
    for position in range(start, len(ids)):
        if position == 0:
            scores.append(TokenScore(ids[0], None, []))
            continue
        row = log_softmax(logits[position - 1 - first_row])
        scores.append(TokenScore(ids[position], float(row[ids[position]]), top_tokens(row, top)))
    return scores


def log_softmax(logits: np.ndarray) -> np.ndarray:
    row = logits.astype(np.float64)
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_tokens(row: np.ndarray, top: int) -> list[tuple[int, float]]:
    if top <= 0:
        return []
    best = np.argpartition(-row, top - 1)[:top]
    best = best[np.argsort(-row[best], kind="stable")]
    return [(int(token), float(row[token])) for token in best]
