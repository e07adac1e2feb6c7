"""Which rows each worker sees, in which batches: deterministic from (seed, epoch), so a resumed run replays the
same order and skips exactly the batches it already trained on."""

from __future__ import annotations

import math

import numpy as np

MEGABATCH_FACTOR = 50  # as in HF's LengthGroupedSampler: sort by length within 50 steps' rows


def accumulation_for(global_batch: int, batch_size: int, world_size: int) -> int:
    """Micro-batches each worker runs per optimizer step so that `world_size` workers, none holding more than
    `batch_size` rows at once, take the whole global batch: more of them when an elastic run goes on with fewer
    workers than it planned for."""
    return math.ceil(global_batch / (batch_size * world_size))


def epoch_batches(
    lengths: list[int],
    *,
    global_batch: int,
    batch_size: int,
    world_size: int,
    rank: int,
    steps: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
) -> list[list[list[int]]]:
    """This rank's micro-batches of row indices for each of an epoch's `steps` optimizer steps.

    Rows are shuffled with (seed, epoch); the tail that does not fill a whole optimizer step is left out (the
    steps-per-epoch formula floors). Which rows form each step depends only on (seed, epoch, global_batch), never on
    the number of workers, so an elastic run that goes on with fewer workers trains on the same steps.
    """
    rng = np.random.default_rng([seed, epoch])
    needed = steps * global_batch
    order = rng.permutation(len(lengths))
    while len(order) < needed:  # fewer rows than one step needs: cycle through them again
        order = np.concatenate([order, rng.permutation(len(lengths))])
    order = order[:needed]
    step_rows = [order[i : i + global_batch] for i in range(0, needed, global_batch)]
    if group_by_length:
        step_rows = length_grouped(order, lengths, global_batch, rng)
    accumulation = accumulation_for(global_batch, batch_size, world_size)
    return [rank_share(rows, world_size, rank, accumulation) for rows in step_rows]


def rank_share(step_rows: np.ndarray, world_size: int, rank: int, accumulation: int) -> list[list[int]]:
    """One rank's micro-batches of a step: the step's rows cut into world_size × accumulation near-equal parts,
    part k × world_size + rank being this rank's k-th, so that the ranks' k-th micro-batches hold neighbouring rows
    (of similar length, when grouped). The loss is summed over the step's targets, so uneven parts change nothing."""
    parts = np.array_split(step_rows, world_size * accumulation)
    return [parts[k * world_size + rank].tolist() for k in range(accumulation)]


def length_grouped(order: np.ndarray, lengths: list[int], global_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Steps of rows of similar length: rows sorted by length within chunks of 50 steps, the steps then shuffled."""
    mega = global_batch * MEGABATCH_FACTOR
    steps = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
        steps.extend(chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch))
    return [steps[i] for i in rng.permutation(len(steps))]


def eval_batches(lengths: list[int], *, batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's share of the validation rows, longest first, in batches. Ranks may get different counts; the
    caller sums losses across ranks once at the end."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    mine = order[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
