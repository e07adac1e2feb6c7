from __future__ import annotations

import numpy as np
import pytest

from tuneforge.train.batching import accumulation_for, epoch_batches, eval_batches


def shards(lengths, world, **kw):
    return [epoch_batches(lengths, world_size=world, rank=r, **kw) for r in range(world)]


def micro_batches(steps):
    return [batch for step in steps for batch in step]


def test_ranks_get_disjoint_rows_that_cover_whole_steps():
    lengths = list(range(1, 101))
    per_rank = shards(lengths, 2, global_batch=8, batch_size=4, steps=12, seed=1, epoch=0, group_by_length=False)
    rows = [i for rank in per_rank for batch in micro_batches(rank) for i in batch]
    assert len(rows) == len(set(rows)) == 96  # 100 rows, 8 per global batch: the 4 left over wait for next epoch
    assert all(len(batch) == 4 for rank in per_rank for batch in micro_batches(rank))


def test_same_seed_and_epoch_give_the_same_order_other_epochs_differ():
    kw = dict(global_batch=4, batch_size=4, world_size=1, rank=0, steps=10, seed=5, group_by_length=True)
    lengths = list(np.random.default_rng(0).integers(1, 300, 40))
    assert epoch_batches(lengths, epoch=2, **kw) == epoch_batches(lengths, epoch=2, **kw)
    assert epoch_batches(lengths, epoch=2, **kw) != epoch_batches(lengths, epoch=3, **kw)


def test_one_worker_with_batch_4_sees_the_same_global_batches_as_two_with_batch_2():
    lengths = list(range(50))
    kw = dict(global_batch=4, steps=6, seed=9, epoch=1, group_by_length=True)
    single = micro_batches(epoch_batches(lengths, batch_size=4, world_size=1, rank=0, **kw))
    pair = [micro_batches(rank) for rank in shards(lengths, 2, batch_size=2, **kw)]
    assert [sorted(a + b) for a, b in zip(*pair)] == [sorted(batch) for batch in single]


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_worker_count_of_an_elastic_run_trains_the_same_rows_at_each_step(workers, group_by_length):
    """Planned for 4 workers of 2 rows: 8 rows per step. With fewer workers each runs more micro-batches (3 workers:
    2 each, 6 parts of 1-2 rows), never more than 2 rows at once, and every step holds the same 8 rows."""
    lengths = list(np.random.default_rng(2).integers(5, 200, 90))
    kw = dict(global_batch=8, batch_size=2, steps=11, seed=3, epoch=1, group_by_length=group_by_length)
    planned = shards(lengths, 4, **kw)
    elastic = shards(lengths, workers, **kw)
    accumulation = accumulation_for(8, 2, workers)
    assert accumulation == {1: 4, 2: 2, 3: 2}[workers]
    for step in range(11):
        assert sorted(i for rank in elastic for i in sum(rank[step], [])) == \
            sorted(i for rank in planned for i in sum(rank[step], []))
        assert all(len(rank[step]) == accumulation for rank in elastic)  # DDP: every rank the same backward count
        assert all(1 <= len(batch) <= 2 for rank in elastic for batch in rank[step])


def test_one_worker_with_accumulation_takes_the_micro_batches_two_workers_take_side_by_side():
    """Without length grouping the layout is the one before elastic runs: micro-batch k of rank r is the step's
    (k × world_size + r)-th slice of batch_size rows."""
    lengths = list(range(64))
    kw = dict(global_batch=8, batch_size=2, steps=8, seed=4, epoch=0, group_by_length=False)
    one = epoch_batches(lengths, world_size=1, rank=0, **kw)
    two = shards(lengths, 2, **kw)
    for step in range(8):
        assert one[step][0::2] == two[0][step] and one[step][1::2] == two[1][step]


def test_length_grouping_cuts_padding():
    lengths = list(np.random.default_rng(1).integers(10, 500, 800))
    kw = dict(global_batch=8, batch_size=8, world_size=1, rank=0, steps=100, seed=0, epoch=0)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = padding(micro_batches(epoch_batches(lengths, group_by_length=True, **kw)))
    plain = padding(micro_batches(epoch_batches(lengths, group_by_length=False, **kw)))
    assert grouped < plain / 5


def test_fewer_rows_than_a_step_needs_are_cycled():
    batches = micro_batches(epoch_batches([3, 4, 5], global_batch=4, batch_size=4, world_size=1, rank=0, steps=1,
                                          seed=0, epoch=0, group_by_length=False))
    assert len(batches[0]) == 4 and set(batches[0]) <= {0, 1, 2}


def test_eval_batches_cover_every_row_once_across_ranks():
    lengths = list(range(23))
    seen = [i for r in range(3) for b in eval_batches(lengths, batch_size=4, world_size=3, rank=r) for i in b]
    assert sorted(seen) == list(range(23))
