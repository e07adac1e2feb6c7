"""Which rows each worker sees, in which batches: deterministic from (seed, epoch), so a resumed run replays the
same order and skips exactly the batches it already trained on."""

from __future__ import annotations

import numpy as np

MEGABATCH_FACTOR = 50  # as in HF's LengthGroupedSampler: sort by length within 50 global batches


def epoch_batches(
    lengths: list[int],
    *,
    batch_size: int,
    world_size: int,
    rank: int,
    batches_per_rank: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
) -> list[list[int]]:
    """This rank's `batches_per_rank` batches of row indices for one epoch.

    Rows are shuffled with (seed, epoch); the tail that does not fill a whole optimizer step is left out (the
    steps-per-epoch formula floors). Each global batch (batch_size × world_size rows) is split across ranks, so with
    length grouping every rank gets rows of similar length and no rank waits on another's long batch.
    """
    rng = np.random.default_rng([seed, epoch])
    global_batch = batch_size * world_size
    needed = batches_per_rank * global_batch
    order = rng.permutation(len(lengths))
    while len(order) < needed:  # fewer rows than one step needs: cycle through them again
        order = np.concatenate([order, rng.permutation(len(lengths))])
    order = order[:needed]
    global_batches = [order[i : i + global_batch] for i in range(0, needed, global_batch)]
    if group_by_length:
        global_batches = length_grouped(order, lengths, global_batch, rng)
    return [batch[rank * batch_size : (rank + 1) * batch_size].tolist() for batch in global_batches]


def length_grouped(order: np.ndarray, lengths: list[int], global_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    mega = global_batch * MEGABATCH_FACTOR
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: list[int], *, batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's share of the validation rows, longest first, in batches. Ranks may get different counts; the
    caller sums losses across ranks once at the end."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    mine = order[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
