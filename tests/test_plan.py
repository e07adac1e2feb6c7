from __future__ import annotations

import pytest

from tuneforge.config import TrainConfig
from tuneforge.plan import learning_rates, make_plan, plot_learning_rates


def config(**overrides) -> TrainConfig:
    return TrainConfig(model_id="m", train_path="t.jsonl", **overrides)


def test_seed_example_24_steps_per_epoch_and_100_min_steps_gives_5_epochs():
    plan = make_plan(config(train_batch_size_per_device=4, num_devices=2), train_rows=24 * 8 + 5)
    assert plan.steps_per_epoch == 24
    assert plan.num_epochs == 5
    assert plan.total_steps == 120


def test_gradient_accumulation_and_devices_divide_the_rows():
    plan = make_plan(config(train_batch_size_per_device=2, num_devices=2, gradient_accumulation_steps=3, num_epochs=2), 100)
    assert plan.global_batch_size == 12
    assert plan.steps_per_epoch == 8  # 100 // 12
    assert plan.total_steps == 16


def test_tiny_dataset_still_gets_one_step_per_epoch():
    plan = make_plan(config(train_batch_size_per_device=16, num_epochs=3), train_rows=5)
    assert plan.steps_per_epoch == 1 and plan.total_steps == 3


def test_max_num_checkpoints_spreads_events_evenly_and_ends_at_the_last_step():
    plan = make_plan(config(num_epochs=4, max_num_checkpoints=5, train_batch_size_per_device=1), train_rows=25)
    assert plan.total_steps == 100
    assert plan.event_steps == (20, 40, 60, 80, 100)


def test_checkpoint_every_n_epochs_wins_and_final_step_is_always_an_event():
    plan = make_plan(config(num_epochs=5, checkpoint_every_n_epochs=2, train_batch_size_per_device=1), train_rows=10)
    assert plan.event_steps == (20, 40, 50)
    assert plan.event_epochs() == [2.0, 4.0, 5.0]


def test_more_events_than_steps_means_one_per_step():
    plan = make_plan(config(num_epochs=1, max_num_checkpoints=10, train_batch_size_per_device=1), train_rows=3)
    assert plan.event_steps == (1, 2, 3)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_warms_up_then_decays(kind):
    cfg = config(num_epochs=1, train_batch_size_per_device=1, num_warmup_steps=10, learning_rate=1e-3,
                 lr_scheduler_type=kind)
    plan = make_plan(cfg, train_rows=100)
    rates = learning_rates(cfg, plan)
    assert len(rates) == 100
    assert rates[0] == 0.0 and rates[10] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(rates[:10], rates[1:11]))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] < 1e-4


def test_schedule_plot_is_a_png(tmp_path):
    cfg = config(num_epochs=2, train_batch_size_per_device=1)
    path = plot_learning_rates(cfg, make_plan(cfg, 30), tmp_path / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
