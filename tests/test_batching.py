from __future__ import annotations

import numpy as np

from tuneforge.train.batching import epoch_batches, eval_batches


def shards(lengths, world, **kw):
    return [epoch_batches(lengths, world_size=world, rank=r, **kw) for r in range(world)]


def test_ranks_get_disjoint_rows_that_cover_whole_steps():
    lengths = list(range(1, 101))
    per_rank = shards(lengths, 2, batch_size=4, batches_per_rank=12, seed=1, epoch=0, group_by_length=False)
    rows = [i for rank in per_rank for batch in rank for i in batch]
    assert len(rows) == len(set(rows)) == 96  # 100 rows, 8 per global batch: the 4 left over wait for next epoch
    assert all(len(batch) == 4 for rank in per_rank for batch in rank)


def test_same_seed_and_epoch_give_the_same_order_other_epochs_differ():
    kw = dict(batch_size=4, world_size=1, rank=0, batches_per_rank=10, seed=5, group_by_length=True)
    lengths = list(np.random.default_rng(0).integers(1, 300, 40))
    assert epoch_batches(lengths, epoch=2, **kw) == epoch_batches(lengths, epoch=2, **kw)
    assert epoch_batches(lengths, epoch=2, **kw) != epoch_batches(lengths, epoch=3, **kw)


def test_one_worker_with_batch_4_sees_the_same_global_batches_as_two_with_batch_2():
    lengths = list(range(50))
    kw = dict(batches_per_rank=6, seed=9, epoch=1, group_by_length=True)
    single = epoch_batches(lengths, batch_size=4, world_size=1, rank=0, **kw)
    pair = shards(lengths, 2, batch_size=2, **kw)
    assert [sorted(a + b) for a, b in zip(*pair)] == [sorted(batch) for batch in single]


def test_length_grouping_cuts_padding():
    lengths = list(np.random.default_rng(1).integers(10, 500, 800))
    kw = dict(batch_size=8, world_size=1, rank=0, batches_per_rank=100, seed=0, epoch=0)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = padding(epoch_batches(lengths, group_by_length=True, **kw))
    plain = padding(epoch_batches(lengths, group_by_length=False, **kw))
    assert grouped < plain / 5


def test_fewer_rows_than_a_step_needs_are_cycled():
    batches = epoch_batches([3, 4, 5], batch_size=4, world_size=1, rank=0, batches_per_rank=1, seed=0, epoch=0,
                            group_by_length=False)
    assert len(batches[0]) == 4 and set(batches[0]) <= {0, 1, 2}


def test_eval_batches_cover_every_row_once_across_ranks():
    lengths = list(range(23))
    seen = [i for r in range(3) for b in eval_batches(lengths, batch_size=4, world_size=3, rank=r) for i in b]
    assert sorted(seen) == list(range(23))
