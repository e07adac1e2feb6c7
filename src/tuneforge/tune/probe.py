"""The probe `tune --auto` plans on: a few real optimizer steps and one batch of validation generation with the run's
own model, data and precision, in this process before Ray starts, and what a trial therefore costs (`Speed`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

from tuneforge.config import TrainConfig

TRIAL_STARTUP_S = 20.0  # per trial: Ray Train's worker group, model load, data payload (bench/startup.py: ~17 s)
PROBE_STEPS = 3  # timed optimizer steps after one warm-up step


@dataclass
class Speed:
    """What the probe measured on this machine, and what a trial therefore costs."""

    seconds_per_step: float
    event_seconds: float  # one validation event: loss over the validation rows and answering the generation rows
    steps_per_epoch: int
    device: str
    threads: int
    model_parameters: int = 0
    memory_bytes: int = 0  # of the device trials run on: RAM, or the GPU's memory

    def trial_seconds(self, steps: int, events: int) -> float:
        return TRIAL_STARTUP_S + steps * self.seconds_per_step + events * self.event_seconds

    def first_event_seconds(self) -> float:
        return self.trial_seconds(self.steps_per_epoch, 1)


def measure_speed(config: TrainConfig, prepared: Any, threads: int | None = None) -> Speed:
    """Seconds per optimizer step and per validation event, measured with the run's own model, data, precision
    and objective in this process (before Ray starts): one warm-up step, then PROBE_STEPS timed ones; then one batch
    of validation generation, scaled to the event's rows."""
    import os

    import torch

    from tuneforge.hardware import autocast_context, best_device, resolve_precision
    from tuneforge.models.sources import quiet_progress_bars
    from tuneforge.models.training import load_model_for_training
    from tuneforge.tasks import get_task
    from tuneforge.train.loop import build_optimizer

    threads = threads or max(1, os.cpu_count() or 1)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    task = get_task(config.task)
    device = best_device()
    precision = resolve_precision(config.precision, device)
    data, plan = prepared.data, prepared.plan
    try:
        with quiet_progress_bars():
            model = load_model_for_training(config, prepared.model_source, prepared.tokenizer, labels=data.labels,
                                            device=device, precision=precision)
        objective = task.objective(model, prepared.meta, config).to(device)
        optimizer = build_optimizer(model, config)
        batch_rows = config.train_batch_size_per_device
        examples = list(data.train)
        times = []

        def collate(rows: list[Any]) -> dict[str, Any]:
            return task.collate(rows, prepared.tokenizer.pad_token_id or 0,
                                padding="free" if prepared.config.padding_free else config.padding,
                                context_length=data.context_length, multiple_of=config.pad_to_multiple_of)

        for step in range(PROBE_STEPS + 1):
            batch = [examples[(step * batch_rows + i) % len(examples)] for i in range(batch_rows)]
            started = time.perf_counter()
            if getattr(objective, "needs_reference", False):  # a run computes these once; untimed, as there
                batch = with_reference(objective, [copy.copy(row) for row in batch], collate, prepared, precision,
                                       device)
                started = time.perf_counter()
            collated = collate(batch)
            with autocast_context(precision, device):
                loss_sum, count = objective(**{k: v.to(device) for k, v in collated.items() if hasattr(v, "to")})
            (loss_sum / max(1, int(count))).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
        seconds_per_step = sum(times[1:]) / PROBE_STEPS * config.gradient_accumulation_steps
        event = validation_seconds(config, prepared, model, seconds_per_step, precision, device)
    finally:
        torch.set_num_threads(previous_threads)
    return Speed(seconds_per_step=seconds_per_step, event_seconds=event, steps_per_epoch=plan.steps_per_epoch,
                 device=str(device), threads=threads, model_parameters=sum(p.numel() for p in model.parameters()),
                 memory_bytes=device_memory(device))


def with_reference(objective: Any, rows: list[Any], collate: Any, prepared: Any, precision: str,
                   device: Any) -> list[Any]:
    """Rows carrying the reference log-probabilities their loss compares with (preference losses)."""
    import torch

    from tuneforge.hardware import autocast_context

    reference_dir = prepared.start.reference_dir
    with torch.no_grad(), autocast_context(precision, device), objective.reference_model(reference_dir):
        values = objective.reference_logps({k: v.to(device) for k, v in collate(rows).items() if hasattr(v, "to")})
    for row, (first, second) in zip(rows, values.tolist(), strict=True):
        row.set_reference(first, second)
    return rows


def device_memory(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(psutil.virtual_memory().total)


def validation_seconds(config: TrainConfig, prepared: Any, model: Any, seconds_per_step: float, precision: str,
                       device: Any) -> float:
    """A validation event: the loss over every validation row (a forward pass, ~1/3 of a step per batch), and
    generation at validation, timed on one batch here (an untrained model may run to max_new_tokens: an upper
    bound)."""
    import torch

    from tuneforge.generate import GenerationSettings, Generator
    from tuneforge.hardware import autocast_context
    from tuneforge.train.generation import generation_pairs

    batches = math.ceil(len(prepared.data.valid) / config.eval_batch_size_per_device)
    seconds = batches * seconds_per_step / 3 * config.eval_batch_size_per_device / config.train_batch_size_per_device
    settings = config.eval_generate
    if not settings:
        return seconds
    import copy

    pairs = generation_pairs(prepared.data.valid_rows, settings.max_rows)
    batch = [prompt for prompt, _ in pairs[: settings.batch_size]]
    if not batch:
        return seconds
    tokenizer = copy.deepcopy(prepared.tokenizer)
    generator = Generator(model, tokenizer, prepared.meta)
    model.eval()
    started = time.perf_counter()
    with torch.no_grad(), autocast_context(precision, device):
        generator.complete(batch, GenerationSettings(max_new_tokens=settings.max_new_tokens,
                                                     batch_size=settings.batch_size))
    generation = time.perf_counter() - started
    return seconds + generation * math.ceil(len(pairs) / len(batch))
