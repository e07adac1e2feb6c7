"""The one training loop, run by every Ray Train worker, for every task and any number of workers.

Read it top to bottom: `setup()` builds the model, optimizer, schedule and data; `train()` steps through the plan;
at each planned event it validates, saves a checkpoint and reports both to Ray Train, which keeps the best
`num_checkpoints_to_keep` (plus the latest, for resuming). Rank 0 also streams progress events to the driver.

Supports: LoRA / QLoRA / full fine-tuning; bf16 or fp16 autocast (fp32 master weights); gradient accumulation with
every target token weighted equally across micro-batches and workers; gradient checkpointing; DDP over gloo (CPU)
or nccl (GPU); exact resume (optimizer, schedule, RNG and position in the epoch).
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from tuneforge.config import TrainConfig
from tuneforge.data.collate import count_real_tokens
from tuneforge.errors import TuneforgeError
from tuneforge.hardware import autocast_context, make_grad_scaler, resolve_precision
from tuneforge.models.training import trainable_counts
from tuneforge.observe.training import TrainingMetrics
from tuneforge.plan import TrainingPlan, make_scheduler
from tuneforge.rundir import REFERENCE_FILE, CheckpointMeta, checkpoint_name
from tuneforge.tasks import Task, register
from tuneforge.train import checkpoints
from tuneforge.train.batching import accumulation_for, epoch_batches, eval_batches
from tuneforge.train.liveness import Process
from tuneforge.train.reference import prepare_reference
from tuneforge.train.stopping import StopWatch
from tuneforge.train.worker import (
    all_reduce_sum,
    capture_rng,
    gather_lists,
    gather_objects,
    peak_rss_mb,
    ray_node_id,
    restore_rng,
    seed_everything,
)


@dataclass
class WorkerInputs:
    """What the driver hands every worker."""

    config: dict[str, Any]  # TrainConfig as JSON (validated again in the worker)
    plan: dict[str, Any]  # TrainingPlan
    model_source: str  # where the base weights load from
    meta: CheckpointMeta  # the run's part of every checkpoint's metadata
    payload: Any  # Ray object ref of {"data": PreparedData, "tokenizer": ...}: put once, shared by the workers
    events: Any = None  # Ray queue to the driver's tracker and display (rank 0 writes)
    checkpoint_root: str | None = None  # where Ray persists checkpoints (the driver is told each path)
    init_checkpoint: str | None = None  # start from this checkpoint's weights and state (a PBT donor)
    threads: float = 1.0  # CPUs Ray gave each worker
    import_paths: list[str] | None = None  # where the driver finds the user's eval_metrics modules
    task: Task | None = None  # the run's task binding: a task registered only in the driver still trains
    driver: Process | None = None  # the process that started the run: workers on its node stop once it is gone
    metric_tags: tuple[str, str] = ("", "")  # (run, trial) on this run's Ray metrics
    init_adapter: str | None = None  # init_from: a trained LoRA adapter the run continues
    reference_adapter: str | None = None  # reference: a LoRA adapter loaded for the one reference pass
    stop_request: str | None = None  # the name of the Ray actor the driver creates on SIGTERM (checkpoint, then stop)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point."""
    TrainingLoop(loop_config["inputs"]).run()


class TrainingLoop:
    def __init__(self, inputs: WorkerInputs):
        import ray
        import ray.train

        self.startup = [("worker group start", time.time())]  # phases that ended, as tuneforge.train.startup reads
        assert inputs.task is not None
        self.task = register(inputs.task)  # before the config is validated against the known tasks
        self.config = TrainConfig.model_validate(inputs.config)
        self.plan = TrainingPlan(**inputs.plan)
        self.model_source = inputs.model_source
        self.checkpoint_root = inputs.checkpoint_root
        self.init_checkpoint = inputs.init_checkpoint
        self.meta = inputs.meta
        self.events = inputs.events
        self.import_paths = inputs.import_paths or []
        self.driver = inputs.driver
        self.init_adapter, self.reference_adapter = inputs.init_adapter, inputs.reference_adapter
        payload = ray.get(inputs.payload)
        self.data, self.tokenizer = payload["data"], payload["tokenizer"]
        self.offered_reference, self.reference_key = payload.get("reference"), payload.get("reference_key")
        self.reference = None
        self.startup.append(("data payload fetch", time.time()))
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        # An elastic run going on with fewer workers than planned keeps the global batch with more micro-batches.
        self.accumulation = accumulation_for(self.plan.global_batch_size, self.config.train_batch_size_per_device,
                                             self.world_size)
        self.metrics = TrainingMetrics(*inputs.metric_tags, rank=self.rank)
        self.stop_watch = StopWatch(inputs.stop_request if self.rank == 0 else None)  # the all-reduce tells the rest
        # A Tune trial keeps 0.01 CPU for itself, so its workers get e.g. 1.99: that is still two threads.
        torch.set_num_threads(max(1, int(float(inputs.threads or 1) + 0.05)))

    # ----------------------------------------------------------------------------------------------------------
    # setup
    # ----------------------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        self.train()

    def setup(self) -> None:
        import ray.train
        import ray.train.torch

        seed_everything(self.config.seed + self.rank)
        self.device = ray.train.torch.get_device()
        self.precision = resolve_precision(self.config.precision, self.device)
        # Our own latest checkpoint (a resumed run) wins; else a starting point handed in (a PBT donor's).
        resume_from = ray.train.get_checkpoint()
        if resume_from is None and self.init_checkpoint:
            resume_from = ray.train.Checkpoint(self.init_checkpoint)
        self.start_step = 0
        state = None
        with contextlib.ExitStack() as stack:
            resume_dir = Path(stack.enter_context(resume_from.as_directory())) if resume_from else None
            self.model = self.build_model(resume_dir)
            self.startup.append(("model load", time.time()))
            self.objective = self.build_objective()
            self.prepared = ray.train.torch.prepare_model(self.objective, parallel_strategy_kwargs=self.ddp_kwargs())
            self.optimizer = build_optimizer(self.model, self.config)
            self.scheduler = make_scheduler(self.optimizer, self.config, self.plan)
            if resume_dir:
                state = checkpoints.load_training_state(resume_dir)
            self.scaler = make_grad_scaler(self.precision, self.device)
            if state:
                self.restore(state)
            self.padding_free = self.config.padding_free and not self.checkpointing()
            self.reference = prepare_reference(self, resume_dir, self.offered_reference, self.reference_key)
        self.train_lengths = [len(example) for example in self.data.train]
        self.valid_lengths = [len(example) for example in self.data.valid]
        self.generation = self.build_generation()
        self.startup.append(("optimizer, DDP, state", time.time()))

    def build_generation(self) -> Any:
        if not (self.config.eval_generate and self.data.valid):
            return None
        import sys

        from tuneforge.train.generation import ValidationGeneration

        sys.path.extend(path for path in self.import_paths if path not in sys.path)
        return ValidationGeneration(self.config, self.data.valid_rows, self.tokenizer, self.meta)

    def build_model(self, resume_dir: Path | None) -> torch.nn.Module:
        from tuneforge.models import load_model_for_training

        return load_model_for_training(
            self.config,
            self.model_source,
            self.tokenizer,
            labels=self.data.labels,
            device=self.device,
            precision=self.precision,
            resume_dir=resume_dir,
            init_adapter=Path(self.init_adapter) if self.init_adapter else None,
        )

    def build_objective(self) -> torch.nn.Module:
        return self.task.objective(self.model, self.meta, self.config)

    def ddp_kwargs(self) -> dict[str, Any]:
        # Only trainable parameters are registered with DDP; a static graph lets it skip re-checking which of them
        # got gradients, but re-entrant recomputation (gradient checkpointing) breaks that assumption.
        return {"find_unused_parameters": False, "static_graph": not self.checkpointing()}

    def checkpointing(self) -> bool:
        """Gradient checkpointing is on. Its recomputation runs during backward, after the objective's forward has
        switched padding-free attention back off, so padding-free batches train only without it."""
        from tuneforge.hardware import gradient_checkpointing_wanted

        return gradient_checkpointing_wanted(self.config.no_gradient_checkpoint, self.device)

    def restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        retarget_learning_rate(self.scheduler, self.config.learning_rate)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_step = int(state["step"])
        rng = state.get("rng", {}).get(self.rank)
        if rng:
            restore_rng(rng)

    # ----------------------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------------------

    def train(self) -> None:
        plan = self.plan
        self.emit({"type": "start", "step": self.start_step, "total_steps": plan.total_steps, "precision": self.precision,
                   "world_size": self.world_size, "gradient_accumulation": self.accumulation,
                   "device": str(self.device), "trainable": trainable_counts(self.model),
                   "startup": self.startup, "pid": os.getpid(), "node": platform.node(),
                   "pid_started": psutil.Process().create_time(),
                   "ray_nodes": gather_objects(ray_node_id())})
        self.metrics.start(plan.total_steps, self.start_step)
        window = Window()
        batches = self.batch_source()
        self.prepared.train()
        for step in range(self.start_step, plan.total_steps):
            if self.driver is not None and not self.driver.running():
                raise TuneforgeError(f"the driver (pid {self.driver.pid}) is gone: stopping before step {step + 1}")
            if self.stop_requested():
                self.stop_at(step, window)
                return
            epoch, step_in_epoch = divmod(step, plan.steps_per_epoch)
            micro_batches = batches.take(epoch, step_in_epoch * self.accumulation, self.accumulation)
            started = time.perf_counter()
            loss_sum, targets, real_tokens, grad_norm = self.optimizer_step(micro_batches)
            window.add(loss_sum, targets, real_tokens, time.perf_counter() - started)
            done = step + 1
            if done % self.config.logging_steps == 0 or done in plan.event_steps:
                self.emit(window.event(done, plan, self.scheduler.get_last_lr()[0], grad_norm))
            if done in plan.event_steps:
                self.checkpoint_event(done, window.take_event_loss())

    def stop_requested(self) -> bool:
        """Whether the driver asked to stop (preemption), agreed by every worker so that all stop at the same step."""
        asked = float(self.stop_watch.stop_asked())
        return (all_reduce_sum([asked], self.device)[0] if self.world_size > 1 else asked) > 0

    def stop_at(self, step: int, window: Window) -> None:
        """A graceful stop before `step`: the steps done so far are checkpointed (unless the last one already was),
        so that --resume continues from exactly here."""
        if step > self.start_step and step not in self.plan.event_steps:
            self.checkpoint_event(step, window.take_event_loss())
        self.emit({"type": "stopped", "step": step})

    def batch_source(self) -> InMemoryBatches | Any:
        """Where each step's micro-batches of rows come from: the rows in memory, or this worker's shard of the
        streamed dataset."""
        if self.data.stream is not None:
            import ray.train

            from tuneforge.data.streaming import StreamedBatches

            return StreamedBatches(ray.train.get_dataset_shard("train"), self.config.train_batch_size_per_device,
                                   self.config.seed)
        return InMemoryBatches(self)

    def optimizer_step(self, micro_batches: list[list[Any]]) -> tuple[float, float, float, float]:
        batches = [self.collate(rows) for rows in micro_batches]
        local_targets = sum(self.objective.target_count(batch) for batch in batches)
        step_targets = all_reduce_sum([local_targets], self.device)[0]
        # DDP averages gradients over workers; scaling by world_size turns that average into a sum over all
        # target tokens of the step, which is then divided by their count.
        scale = self.world_size / max(step_targets, 1.0)
        loss_total, real_tokens = 0.0, 0
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            sync = contextlib.nullcontext() if last or self.world_size == 1 else self.prepared.no_sync()
            with sync:
                with autocast_context(self.precision, self.device):
                    loss_sum, _ = self.prepared(**self.to_device(batch))
                scaled = loss_sum * scale
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_total += float(loss_sum.detach())
            real_tokens += count_real_tokens(batch)
        grad_norm = self.clip_and_step()
        loss_total, real_total = all_reduce_sum([loss_total, float(real_tokens)], self.device)
        return loss_total, step_targets, real_total, grad_norm

    def clip_and_step(self) -> float:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.max_grad_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm)) if parameters else 0.0
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def collate(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        return self.task.collate(
            rows,
            self.tokenizer.pad_token_id,
            padding="free" if self.padding_free else self.config.padding,
            context_length=self.data.context_length,
            multiple_of=self.config.pad_to_multiple_of,
        )

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    # ----------------------------------------------------------------------------------------------------------
    # validation and checkpoints
    # ----------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics over all workers' shares. Runs the unwrapped objective: DDP's forward would sync
        buffers, and ranks may have different numbers of validation batches."""
        if not self.data.valid:
            return {}
        objective = self.objective
        objective.eval()
        loss_sum, count = 0.0, 0.0
        extra: dict[str, list[int]] = {"y_true": [], "y_pred": []}
        sums: dict[str, float] = {}
        for indices in eval_batches(self.valid_lengths, batch_size=self.config.eval_batch_size_per_device,
                                    world_size=self.world_size, rank=self.rank):
            batch = self.to_device(self.collate([self.data.valid[i] for i in indices]))
            with autocast_context(self.precision, self.device):
                batch_loss, batch_count, predictions = objective.eval_batch(batch)
            if isinstance(predictions, dict):  # sums the objective summarizes (preference: rewards, accuracy)
                for key, value in predictions.items():
                    sums[key] = sums.get(key, 0.0) + value
            elif predictions is not None:
                extra["y_pred"].extend(predictions.tolist())
                extra["y_true"].extend(batch["labels"].tolist())
            loss_sum += float(batch_loss)
            count += float(batch_count)
        objective.train()
        loss_sum, count = all_reduce_sum([loss_sum, count], self.device)
        if self.task.spec.gathers_predictions:
            extra = gather_lists(extra)
        names = sorted(set().union(*gather_objects(sorted(sums))))  # a rank with no batch has no keys
        if names:
            extra["sums"] = dict(zip(names, all_reduce_sum([sums.get(name, 0.0) for name in names], self.device),
                                     strict=True))
        return objective.summarize(loss_sum, count, extra)

    def checkpoint_event(self, step: int, train_loss: float | None) -> None:
        import ray.train

        metrics = {"step": step, "epoch": round(step / self.plan.steps_per_epoch, 4)}
        if train_loss is not None:
            metrics["train_loss"] = train_loss
        started = time.perf_counter()
        metrics.update(self.evaluate())
        if self.generation is not None:
            generated, samples = self.generation.run(self.model, rank=self.rank, world_size=self.world_size,
                                                     device=self.device, precision=self.precision, gather=gather_objects)
            metrics.update(generated)
            self.emit({"type": "samples", "step": step, "rows": samples})
        metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
        metrics["peak_rss_mb"] = peak_rss_mb()
        state = self.training_state(step)
        with tempfile.TemporaryDirectory(prefix="tuneforge-ckpt-") as tmp:
            checkpoint = None
            if self.rank == 0:
                meta = self.meta.model_copy(update={"step": step, "epoch": metrics["epoch"], "metrics": metrics,
                                                    "precision": self.precision})
                if self.reference is not None:  # a restarted worker continues with the reference it started with
                    self.reference.save(Path(tmp) / REFERENCE_FILE)
                checkpoints.save_checkpoint(Path(tmp), self.model, self.tokenizer, meta, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            self.emit({"type": "eval", **metrics})
            name = checkpoint_name(step)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if self.checkpoint_root:  # persisted now: tell the driver (a Tune trial reports it onwards)
            self.emit({"type": "checkpoint", "path": f"{self.checkpoint_root}/{name}", **metrics})

    def training_state(self, step: int) -> dict[str, Any]:
        rng_states = gather_objects(capture_rng())
        return {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": dict(enumerate(rng_states)),
        }

    def emit(self, event: dict[str, Any]) -> None:
        self.metrics.record(event)
        if self.rank == 0 and self.events is not None:
            self.events.put({**event, "time": time.time()})


class InMemoryBatches:
    """Micro-batches of rows held in memory, from the (seed, epoch) order of train/batching.py."""

    def __init__(self, loop: TrainingLoop):
        self.loop = loop
        self.epoch: int | None = None
        self.indices: list[list[int]] = []

    def take(self, epoch: int, position: int, count: int) -> list[list[Any]]:
        if epoch != self.epoch:
            loop = self.loop
            steps = epoch_batches(
                loop.train_lengths,
                global_batch=loop.plan.global_batch_size,
                batch_size=loop.config.train_batch_size_per_device,
                world_size=loop.world_size,
                rank=loop.rank,
                steps=loop.plan.steps_per_epoch,
                seed=loop.config.seed,
                epoch=epoch,
                group_by_length=loop.config.group_by_length,
            )
            self.epoch, self.indices = epoch, [batch for step in steps for batch in step]
        return [[self.loop.data.train[i] for i in batch] for batch in self.indices[position : position + count]]


class Window:
    """Running sums between log lines, and the train loss since the last checkpoint event."""

    def __init__(self) -> None:
        self.loss = self.targets = self.tokens = self.seconds = 0.0
        self.epoch_loss = self.epoch_targets = 0.0

    def add(self, loss_sum: float, targets: float, tokens: float, seconds: float) -> None:
        self.loss += loss_sum
        self.targets += targets
        self.tokens += tokens
        self.seconds += seconds
        self.epoch_loss += loss_sum
        self.epoch_targets += targets

    def event(self, step: int, plan: TrainingPlan, lr: float, grad_norm: float) -> dict[str, Any]:
        event = {
            "type": "step",
            "step": step,
            "epoch": round(step / plan.steps_per_epoch, 4),
            "loss": self.loss / max(self.targets, 1.0),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_second": self.tokens / max(self.seconds, 1e-9),
            "tokens": self.tokens,
            "step_seconds": self.seconds,
        }
        self.loss = self.targets = self.tokens = self.seconds = 0.0
        return event

    def take_event_loss(self) -> float | None:
        loss = self.epoch_loss / self.epoch_targets if self.epoch_targets else None
        self.epoch_loss = self.epoch_targets = 0.0
        return loss


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D tensors) are exempt from weight decay. The fused implementation (one
    kernel over all parameters, what HF Trainer uses by default) where every parameter is a float tensor on a
    device that has it: on CPU the per-tensor loop was a quarter of a MiniLM full fine-tune step (0.51 vs 0.39 s)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    trainable = decay + no_decay
    fused = bool(trainable) and all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in trainable)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate, fused=fused)


def retarget_learning_rate(scheduler: Any, learning_rate: float) -> None:
    """A restored schedule carries the peak learning rate it was saved with. When the config asks for another
    (a PBT mutation, an edited config on resume) the schedule continues its shape at the new peak."""
    if all(abs(base - learning_rate) <= 1e-12 * max(learning_rate, 1e-30) for base in scheduler.base_lrs):
        return
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    # The same step again: LambdaLR's rate is base_lr * lambda(step), so this sets each param group's lr and
    # get_last_lr() at the new peak, with no optimizer step in between.
    scheduler.last_epoch -= 1
    scheduler.step()
