"""Training runs through Ray Train on a tiny Llama with SmolLM2's tokenizer (seconds per run)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import chat_row, write_jsonl
from tuneforge.config import TrainConfig
from tuneforge.rundir import CheckpointMeta, RunDir
from tuneforge.train import resume, train

pytestmark = pytest.mark.usefixtures("ray_session")

FACTS = [("colour of the sky", "blue"), ("opposite of hot", "cold"), ("number after two", "three"),
         ("first letter", "A"), ("capital of France", "Paris"), ("a baby cat", "kitten")]


def dataset(tmp_path, copies=8):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = [chat_row(f"Name the {question}.", answer) for question, answer in FACTS] * copies
    return write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "valid.jsonl", [chat_row(f"Name the {q}.", a) for q, a in FACTS])


def tiny_config(tmp_path, model_dir, **overrides) -> TrainConfig:
    train_path, valid_path = dataset(tmp_path)
    settings = dict(model_id=str(model_dir), train_path=str(train_path), valid_path=str(valid_path),
                    train_batch_size_per_device=8, eval_batch_size_per_device=8, num_epochs=8, learning_rate=1e-2,
                    num_warmup_steps=2, max_num_checkpoints=4, num_checkpoints_to_keep=2, precision="fp32",
                    lora_config={"r": 8, "lora_alpha": 16}, output_dir=str(tmp_path / "runs"), run_name="tiny", seed=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_lora_run_learns_and_leaves_a_complete_run_directory(tmp_path, tiny_llama_dir):
    result = train(tiny_config(tmp_path, tiny_llama_dir))
    run = result.run_dir
    for name in ("config.yaml", "plan.json", "lr_schedule.png", "metrics.jsonl", "results.json", "run.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    history = RunDir(run).metrics()
    evals = [row for row in history if row["type"] == "eval"]
    steps = [row for row in history if row["type"] == "step"]
    assert len(steps) == 48 and [row["step"] for row in evals] == [12, 24, 36, 48]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] * 0.7
    assert steps[-1]["loss"] < steps[0]["loss"]
    # best-k by validation loss, plus the latest for resuming
    kept = RunDir(run).checkpoints()
    assert 2 <= len(kept) <= 3
    best = min(evals, key=lambda row: row["eval_loss"])
    assert CheckpointMeta.read(run / "best").step == best["step"]
    # a LoRA checkpoint holds the adapter, not the base
    assert (run / "best" / "adapter_model.safetensors").is_file() and not (run / "best" / "model.safetensors").exists()
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "completed"
    # where the seconds before the first step went, driver's phases then the worker's, adding up to the total
    phases = state["startup"]
    assert list(phases)[-5:] == ["worker group start", "data payload fetch", "model load", "optimizer, DDP, state",
                                 "total"]
    assert {"config, model files, data", "Ray"} <= phases.keys() and min(phases.values()) >= 0
    assert sum(v for k, v in phases.items() if k != "total") == pytest.approx(phases["total"], abs=0.1)
    saved = (run / "config.yaml").read_text()
    assert "context_length:" in saved and "num_epochs: 8" in saved
    assert "padding_free: true" in saved  # resolved and saved: the tiny Llama trains on rows laid end to end
    assert_run_helpers_ended()


def assert_run_helpers_ended(timeout: float = 10.0) -> None:
    """The run's own actors (the event queue) end with it: each holds a Ray worker process that a library user's later
    runs in the same session would otherwise pile up."""
    import time

    import ray._private.state

    def alive() -> list[str]:
        return [actor["ActorClassName"] for actor in ray._private.state.actors().values()
                if actor["ActorClassName"] in ("StopRequest", "_QueueActor") and actor["State"] != "DEAD"]

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive()


@pytest.mark.slow  # make test covers full FT through conftest's tiny_full_run (test_stages, test_export)
def test_full_fine_tuning_checkpoint_holds_the_whole_model(tmp_path, tiny_llama_dir):
    result = train(tiny_config(tmp_path, tiny_llama_dir, lora_config=None, learning_rate=3e-3, num_epochs=1,
                               max_num_checkpoints=1))
    best = result.run_dir / "best"
    assert (best / "model.safetensors").is_file() and not (best / "adapter_model.safetensors").exists()
    assert CheckpointMeta.read(best).lora is False
    steps = [row for row in RunDir(result.run_dir).metrics() if row["type"] == "step"]
    assert len(steps) == 6 and steps[-1]["loss"] < steps[0]["loss"]  # every weight trains: the loss falls fast
    assert result.best_metrics["eval_loss"] < steps[0]["loss"]


@pytest.mark.slow  # ~50 s (two runs); make test-slow also runs the same comparison across two Ray nodes
def test_two_workers_match_one_worker_with_the_same_global_batch(tmp_path, tiny_llama_dir):
    """Same data split across ranks (rank r takes its slice of every global batch), gradients averaged by DDP
    and normalised by the step's global target count: the two runs must agree closely."""
    common = dict(num_epochs=2, max_num_checkpoints=2, group_by_length=True, lora_config={"r": 8, "lora_dropout": 0.0})
    one = train(tiny_config(tmp_path / "one", tiny_llama_dir, train_batch_size_per_device=8, run_name="one", **common))
    two = train(tiny_config(tmp_path / "two", tiny_llama_dir, train_batch_size_per_device=4, num_devices=2,
                            worker_resources={"CPU": 1}, run_name="two", **common))
    assert two.best_metrics["eval_loss"] == pytest.approx(one.best_metrics["eval_loss"], rel=2e-3)
    steps_one = [r for r in RunDir(one.run_dir).metrics() if r["type"] == "step"]
    steps_two = [r for r in RunDir(two.run_dir).metrics() if r["type"] == "step"]
    assert [r["tokens"] for r in steps_two] == [r["tokens"] for r in steps_one]  # every row seen once per step
    # one writer: a single checkpoint directory per event, with one adapter file in it
    assert all(len(list(p.glob("adapter_model*.safetensors"))) == 1 for p in RunDir(two.run_dir).checkpoints())


@pytest.mark.slow  # make test covers resume through the CLI (test_stages, conftest's resumed_full_run)
def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, tiny_llama_dir):
    from ray.train import UserCallback

    class CrashAfterFirstCheckpoint(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            raise RuntimeError("simulated crash")

    config = tiny_config(tmp_path, tiny_llama_dir)
    with pytest.raises(Exception):
        train(config, callbacks=[CrashAfterFirstCheckpoint()])
    run = tmp_path / "runs" / "tiny"
    assert not (run / "results.json").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    result = resume(run)
    history = RunDir(run).metrics()
    starts = [row["step"] for row in history if row["type"] == "step"]
    assert starts == list(range(1, 49))  # steps after the last checkpoint were dropped and trained again, once
    assert (run / "results.json").is_file()
    assert result.best_metrics["step"] in (12, 24, 36, 48)
    assert json.loads((run / "run.json").read_text())["resumed_from_step"] == 12


def test_qlora_trains_adapters_on_a_4bit_base(tmp_path, tiny_llama_dir):
    pytest.importorskip("bitsandbytes")
    result = train(tiny_config(tmp_path, tiny_llama_dir, load_in_4bit=True, num_epochs=2, max_num_checkpoints=2,
                               precision="bf16"))
    evals = [row for row in RunDir(result.run_dir).metrics() if row["type"] == "eval"]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert (result.run_dir / "best" / "adapter_model.safetensors").is_file()


class NoteRecorder:
    """A reporter that keeps the notes a run shows."""

    def __init__(self):
        self.notes: list[str] = []

    def phase(self, message):
        pass

    def note(self, message):
        self.notes.append(message)

    def event(self, event):
        pass


def test_training_reports_and_records_truncated_and_dropped_rows(tmp_path, tiny_llama_dir):
    rows = [chat_row(f"Name the {q}.", a) for q, a in FACTS] * 8
    rows += [chat_row("word " * 60, "blue"),  # its answer lies beyond context_length: dropped
             chat_row("Name the sky.", "blue " * 60)]  # cut, with answer tokens left: truncated and kept
    long_rows = write_jsonl(tmp_path / "long.jsonl", rows)
    reporter = NoteRecorder()
    result = train(tiny_config(tmp_path, tiny_llama_dir, train_path=str(long_rows), context_length=48, num_epochs=1,
                               max_num_checkpoints=1), reporter=reporter)
    counts = {"rows": 49, "truncated": 2, "dropped": 1, "valid": {"rows": 6, "truncated": 0, "dropped": 0}}
    assert result.results["data"] == counts
    assert json.loads((result.run_dir / "results.json").read_text())["data"] == counts
    assert "train: 2 row(s) truncated to context_length 48" in reporter.notes
    assert any(note.startswith("train: 1 row(s) dropped: no target tokens") for note in reporter.notes), reporter.notes


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_a_restored_schedule_continues_at_a_new_peak_learning_rate(kind, tmp_path):
    """PBT's mutation or an edited config on resume: the restored schedule goes on exactly as one built at the new
    peak would, from the restored step."""
    import warnings

    import torch

    from tuneforge.plan import TrainingPlan, make_scheduler
    from tuneforge.train.loop import retarget_learning_rate

    config = TrainConfig(model_id="m", train_path="t.jsonl", lr_scheduler_type=kind, learning_rate=1e-3)
    plan = TrainingPlan(train_rows=48, global_batch_size=4, steps_per_epoch=12, num_epochs=1, total_steps=12,
                        warmup_steps=3, event_steps=(6, 12))

    def schedule(peak: float, steps: int) -> tuple[torch.optim.Optimizer, object]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=peak)
        scheduler = make_scheduler(optimizer, config, plan)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return optimizer, scheduler

    saved_optimizer, saved_scheduler = schedule(1e-3, 5)
    optimizer, scheduler = schedule(2e-3, 0)
    optimizer.load_state_dict(saved_optimizer.state_dict())
    scheduler.load_state_dict(saved_scheduler.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retarget_learning_rate(scheduler, 2e-3)
    reference_optimizer, reference = schedule(2e-3, 5)
    for _ in range(7):
        assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in reference_optimizer.param_groups]
        assert scheduler.get_last_lr() == reference.get_last_lr() and scheduler.last_epoch == reference.last_epoch
        for opt, sched in ((optimizer, scheduler), (reference_optimizer, reference)):
            opt.step()
            sched.step()
