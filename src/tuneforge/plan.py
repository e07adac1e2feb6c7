"""Steps, epochs, warm-up and validation/checkpoint events, computed before anything trains.

The formulae are LLMForge's:
- steps_per_epoch = n_train // (train_batch_size_per_device × num_devices × gradient_accumulation_steps), at least 1;
- without num_epochs: num_epochs = ceil(min_update_steps / steps_per_epoch);
- validation + checkpoint every `checkpoint_every_n_epochs`, or else `max_num_checkpoints` events spread evenly
  over all steps. The last step is always an event, so the final weights are always scored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import TrainConfig


@dataclass(frozen=True)
class TrainingPlan:
    train_rows: int
    global_batch_size: int  # rows per optimizer step, all workers and accumulation included
    steps_per_epoch: int
    num_epochs: int
    total_steps: int
    warmup_steps: int
    event_steps: tuple[int, ...]  # optimizer steps after which validation + checkpoint run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def event_epochs(self) -> list[float]:
        return [round(step / self.steps_per_epoch, 2) for step in self.event_steps]


def make_plan(config: TrainConfig, train_rows: int) -> TrainingPlan:
    global_batch = config.train_batch_size_per_device * config.num_devices * config.gradient_accumulation_steps
    steps_per_epoch = max(1, train_rows // global_batch)
    if config.max_steps:  # as in HF: the step count wins over epochs; the last epoch may be cut short
        total_steps = config.max_steps
        num_epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        num_epochs = config.num_epochs or math.ceil(config.min_update_steps / steps_per_epoch)
        total_steps = steps_per_epoch * num_epochs
    return TrainingPlan(
        train_rows=train_rows,
        global_batch_size=global_batch,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
        total_steps=total_steps,
        warmup_steps=min(config.num_warmup_steps, total_steps),
        event_steps=event_steps(config, steps_per_epoch, total_steps),
    )


def event_steps(config: TrainConfig, steps_per_epoch: int, total: int) -> tuple[int, ...]:
    if config.checkpoint_every_n_epochs:
        every = config.checkpoint_every_n_epochs * steps_per_epoch
        steps = set(range(every, total + 1, every))
    else:
        count = min(config.max_num_checkpoints, total)
        steps = {math.ceil(total * i / count) for i in range(1, count + 1)}
    steps.add(total)
    return tuple(sorted(steps))


def learning_rates(config: TrainConfig, plan: TrainingPlan) -> list[float]:
    """The learning rate at every optimizer step, from the same scheduler the loop uses."""
    import torch

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config.learning_rate)
    scheduler = make_scheduler(optimizer, config, plan)
    rates = []
    for _ in range(plan.total_steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def make_scheduler(optimizer: Any, config: TrainConfig, plan: TrainingPlan) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if config.lr_scheduler_type == "constant" else config.lr_scheduler_type
    return get_scheduler(
        name, optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps
    )


def plot_learning_rates(config: TrainConfig, plan: TrainingPlan, path: Path) -> Path:
    """A PNG of the schedule with the validation/checkpoint events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = learning_rates(config, plan)
    figure, axes = plt.subplots(figsize=(7, 3.2), dpi=110)
    axes.plot(range(1, len(rates) + 1), rates, color="tab:blue", linewidth=1.6)
    for step in plan.event_steps:
        axes.axvline(step, color="tab:orange", alpha=0.35, linewidth=1)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("learning rate")
    axes.set_title(
        f"{config.lr_scheduler_type}, warm-up {plan.warmup_steps}, {plan.total_steps} steps "
        f"({len(plan.event_steps)} checkpoint events)",
        fontsize=9,
    )
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from tuneforge.atomic import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
