"""Faults during training: a worker killed mid-run (Ray Train restarts the workers from the last checkpoint), and
the driver killed with SIGKILL (`--resume` continues exactly where the run would have gone)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import save_config, tuneforge_cli
from tests.test_train import tiny_config
from tuneforge.rundir import CheckpointMeta, RunDir, read_snapshot
from tuneforge.train import train
from tuneforge.train.liveness import Process, wait_until_gone

# The runs take 1-2 minutes each (make test-slow); make test keeps the unit checks at the end.

KILL_DEADLINE_S = 240


def steps_of(run: Path) -> dict[int, float]:
    """Step -> train loss, from metrics.jsonl; a step logged twice fails the test."""
    rows = [row for row in RunDir(run).metrics() if row["type"] == "step"]
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {steps}"
    return {row["step"]: row["loss"] for row in rows}


def final_eval_loss(run: Path) -> float:
    return [row for row in RunDir(run).metrics() if row["type"] == "eval"][-1]["eval_loss"]


def wait_for_checkpoint_then_steps(run: Path, beyond: int = 2) -> int:
    """Wait until Ray has registered a checkpoint and training has logged `beyond` steps past it; its step."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while time.monotonic() < deadline:
        _, latest = read_snapshot(run / "checkpoints")
        if latest:
            step = int(latest.rsplit("-", 1)[1])
            logged = [row["step"] for row in RunDir(run).metrics() if row["type"] == "step"] if (
                run / "metrics.jsonl").is_file() else []
            if logged and max(logged) >= step + beyond:
                return step
        time.sleep(0.02)
    raise AssertionError(f"{run}: no checkpoint followed by {beyond} steps within {KILL_DEADLINE_S} s")


def long_config(tmp_path, model_dir, **overrides):
    # 16 epochs of 6 steps: checkpoints at 24, 48, 72, 96, and time between them to kill something.
    return tiny_config(tmp_path, model_dir, num_epochs=16, **overrides)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama_dir, ray_session) -> Path:
    return train(long_config(tmp_path_factory.mktemp("whole"), tiny_llama_dir)).run_dir


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_killed_worker_is_restarted_from_the_last_checkpoint_and_the_run_ends_as_if_nothing_happened(
        tmp_path, tiny_llama_dir, uninterrupted):
    config = long_config(tmp_path, tiny_llama_dir, max_failures=1)
    run = Path(config.output_dir) / config.run_name
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(config)), daemon=True)
    thread.start()
    killed_after = wait_for_checkpoint_then_steps(run)
    pid = json.loads((run / "run.json").read_text())["attempts"][0]["worker_pid"]
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=KILL_DEADLINE_S)
    assert "result" in outcome, "training did not finish after the worker was killed"

    attempts = json.loads((run / "run.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["worker_pid"] != pid
    assert attempts[1]["step"] >= killed_after  # the restart continued from a registered checkpoint
    expected, got = steps_of(uninterrupted), steps_of(run)
    assert sorted(got) == sorted(expected) == list(range(1, 97))  # every planned step, once
    for step, loss in expected.items():  # the same batches in the same order, the same weights
        assert got[step] == pytest.approx(loss, abs=1e-5), step
    assert final_eval_loss(run) == pytest.approx(final_eval_loss(uninterrupted), abs=1e-4)
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 96 and results["final_metrics"]["step"] == 96


def leave_a_checkpoint_write_cut_short(run: Path, latest_step: int) -> None:
    """What a kill in the middle of writing the next checkpoint leaves behind: Ray's checkpoint record rewritten
    halfway, and the next checkpoint's directory with its weights cut short (its metadata claims the later step)."""
    folder = run / "checkpoints"
    snapshot = folder / "checkpoint_manager_snapshot.json"
    text = snapshot.read_text(encoding="utf-8")
    snapshot.write_text(text[: len(text) // 2], encoding="utf-8")
    source, partial = folder / f"step-{latest_step:06d}", folder / f"step-{latest_step + 24:06d}"
    shutil.rmtree(partial, ignore_errors=True)  # the killed worker's own unregistered copy, if it got that far
    shutil.copytree(source, partial)
    weights = partial / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    meta = json.loads((partial / "tuneforge.json").read_text())
    (partial / "tuneforge.json").write_text(json.dumps({**meta, "step": latest_step + 24}))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("moment", ["between checkpoints", "during a checkpoint write"])
def test_a_driver_killed_with_sigkill_resumes_to_the_same_final_loss_and_data_order(
        moment, tmp_path, tiny_llama_dir, uninterrupted):
    config = long_config(tmp_path, tiny_llama_dir)
    run = Path(config.output_dir) / config.run_name
    driver = tuneforge_cli("train", str(save_config(config, tmp_path / "config.yaml")))
    killed_after = wait_for_checkpoint_then_steps(run)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    _, latest_at_kill = read_snapshot(run / "checkpoints")
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "running"  # nobody lived to say otherwise
    workers = [Process(a["node"], a["worker_pid"]) for a in state["attempts"]]
    assert not wait_until_gone(workers, 60)  # a worker stops at its next step once its driver is gone
    # Ray registers a reported checkpoint a moment later, so the one in flight at the kill may still appear; a
    # worker that kept going (as Ray's own clean-up allows for seconds) would add more.
    latest_step = int(read_snapshot(run / "checkpoints")[1].rsplit("-", 1)[1])
    assert latest_step <= int(latest_at_kill.rsplit("-", 1)[1]) + 24
    if moment == "during a checkpoint write":
        leave_a_checkpoint_write_cut_short(run, latest_step)

    resumed = tuneforge_cli("train", "--resume", str(run))
    output, _ = resumed.communicate(timeout=KILL_DEADLINE_S)
    assert resumed.returncode == 0, output
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "completed" and state["resumed_from_step"] == latest_step >= killed_after
    if moment == "during a checkpoint write":
        assert "cut short" in output and f"step-{state['resumed_from_step']:06d}" in output
        assert list((run / "checkpoints").glob("checkpoint_manager_snapshot.json.damaged-*"))
    expected, got = steps_of(uninterrupted), steps_of(run)
    assert sorted(got) == list(range(1, 97))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step
    assert final_eval_loss(run) == pytest.approx(final_eval_loss(uninterrupted), abs=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_sigterm_checkpoints_the_step_reached_and_resume_trains_no_step_twice(tmp_path, tiny_llama_dir,
                                                                            uninterrupted):
    """A scheduler's preemption: SIGTERM to the driver. The workers finish their step, checkpoint it (between the
    planned checkpoints) and stop; run.json says where; --resume continues from exactly there."""
    config = long_config(tmp_path, tiny_llama_dir)
    run = Path(config.output_dir) / config.run_name
    driver = tuneforge_cli("train", str(save_config(config, tmp_path / "config.yaml")))
    wait_for_checkpoint_then_steps(run, beyond=3)
    driver.send_signal(signal.SIGTERM)
    output, _ = driver.communicate(timeout=60)  # well within stop_grace_s (30 s) plus Ray's shutdown
    assert driver.returncode == 143, output
    state = json.loads((run / "run.json").read_text())
    stopped = state["stopped_at_step"]
    # the step the workers reached when the driver's handler ran (tiny steps take milliseconds: it may be a
    # planned checkpoint's step, or one between them, which then gets a checkpoint of its own)
    assert state["status"] == "interrupted" and state["stopped_by"] == "SIGTERM" and 24 < stopped < 96, output
    assert f"stopped at step {stopped} of 96 on SIGTERM" in output and "--resume" in output
    assert int(read_snapshot(run / "checkpoints")[1].rsplit("-", 1)[1]) == stopped  # the step reached, whole
    assert max(steps_of(run)) == stopped

    resumed = tuneforge_cli("train", "--resume", str(run))
    output, _ = resumed.communicate(timeout=KILL_DEADLINE_S)
    assert resumed.returncode == 0, output
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "completed" and state["resumed_from_step"] == stopped
    expected, got = steps_of(uninterrupted), steps_of(run)  # each step once
    assert sorted(got) == list(range(1, 97))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step
    assert final_eval_loss(run) == pytest.approx(final_eval_loss(uninterrupted), abs=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_failed_search_trial_is_started_again_and_resumes_its_run(tmp_path, tiny_llama_dir):
    from tests.test_tune import experiment_config
    from tuneforge.tune import search

    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {grid: [1.0e-2, 3.0e-3]}\n"
                               "tune:\n  max_concurrent_trials: 1\n  max_failures: 1\n  experiment_name: retry\n",
                               epochs=16)
    experiment = tmp_path / "runs" / "retry"
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=search(config)), daemon=True)
    thread.start()
    deadline = time.monotonic() + KILL_DEADLINE_S
    while not (runs := sorted(experiment.glob("trial_*/run.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    run = runs[0].parent
    killed_after = wait_for_checkpoint_then_steps(run)
    os.kill(json.loads((run / "run.json").read_text())["attempts"][0]["worker_pid"], signal.SIGKILL)
    thread.join(timeout=2 * KILL_DEADLINE_S)
    assert "result" in outcome, "the search did not finish after a trial's worker was killed"

    assert [trial["status"] for trial in outcome["result"].trials] == ["done", "done"]
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "completed" and state["resumed_from_step"] >= killed_after  # resumed, not restarted
    assert sorted(steps_of(run)) == list(range(1, 97))


@pytest.mark.slow
def test_sigterm_stops_a_search_as_ctrl_c_does_and_tune_resume_finishes_it(tmp_path, tiny_llama_dir):
    from tests.test_tune import experiment_config

    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {grid: [1.0e-2, 3.0e-3]}\n"
                               "tune:\n  max_concurrent_trials: 1\n  experiment_name: preempted\n", epochs=16)
    experiment = tmp_path / "runs" / "preempted"
    search = tuneforge_cli("tune", str(save_config(config, tmp_path / "search.yaml")))
    deadline = time.monotonic() + KILL_DEADLINE_S
    while not (runs := sorted(experiment.glob("trial_*/run.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    wait_for_checkpoint_then_steps(runs[0].parent)
    search.send_signal(signal.SIGTERM)
    output, _ = search.communicate(timeout=KILL_DEADLINE_S)
    assert search.returncode == 143 and "tune --resume" in output and "Traceback" not in output, output
    resumed = tuneforge_cli("tune", "--resume", str(experiment))
    output, _ = resumed.communicate(timeout=2 * KILL_DEADLINE_S)
    assert resumed.returncode == 0, output
    import csv

    with open(experiment / "trials.csv", encoding="utf-8") as trials:
        assert [row["status"] for row in csv.DictReader(trials)] == ["done", "done"]
    for trial in experiment.glob("trial_*"):
        assert sorted(steps_of(trial)) == list(range(1, 97))  # every step once, the interrupted trial's too


# ----------------------------------------------------------------------------------------------------------------
# unit checks (make test)
# ----------------------------------------------------------------------------------------------------------------


def test_a_checkpoint_copy_cut_short_is_not_a_checkpoint(tmp_path):
    from tuneforge.rundir import CheckpointMeta, is_whole_checkpoint
    from tuneforge.train.checkpoints import save_checkpoint

    class Weights:
        def save_pretrained(self, directory, **_):
            (Path(directory) / "model.safetensors").write_bytes(b"w" * 1000)

    class Tokenizer:
        def save_pretrained(self, directory):
            (Path(directory) / "tokenizer.json").write_text("{}")

    whole = tmp_path / "step-000012"
    whole.mkdir()
    save_checkpoint(whole, Weights(), Tokenizer(), CheckpointMeta(model_id="m", step=12), {"step": 12})
    assert set(CheckpointMeta.read(whole).files) == {"model.safetensors", "tokenizer.json", "training_state.pt"}
    assert is_whole_checkpoint(whole)
    cut = tmp_path / "step-000024"
    shutil.copytree(whole, cut)
    (cut / "model.safetensors").write_bytes(b"w" * 500)
    assert not is_whole_checkpoint(cut)
    (cut / "model.safetensors").unlink()
    assert not is_whole_checkpoint(cut)
    legacy = tmp_path / "exported"  # written before the file list existed, or an export: taken as it is
    legacy.mkdir()
    CheckpointMeta(model_id="m").write(legacy)
    assert is_whole_checkpoint(legacy)


def test_a_snapshot_cut_short_is_set_aside_and_the_latest_whole_checkpoint_continues(tmp_path):
    from tuneforge.rundir import CheckpointMeta
    from tuneforge.train.driver import set_aside_damaged_snapshot
    from tuneforge.train.preflight import SilentReporter

    run = RunDir(tmp_path / "run")
    for step, files in ((12, {}), (24, {"model.safetensors": 10})):  # 24: its weights never arrived
        folder = run.checkpoints_dir / f"step-{step:06d}"
        folder.mkdir(parents=True)
        CheckpointMeta(model_id="m", step=step, files=files).write(folder)
    snapshot = run.checkpoints_dir / "checkpoint_manager_snapshot.json"
    snapshot.write_text('{"checkpoint_results": [{"checkpoint_dir_name": "step-0000')
    reporter = SilentReporter()
    reporter.notes = []
    reporter.note = reporter.notes.append
    assert set_aside_damaged_snapshot(run, reporter) == run.checkpoints_dir / "step-000012"
    assert not snapshot.exists() and list(run.checkpoints_dir.glob("checkpoint_manager_snapshot.json.damaged-*"))
    assert run.latest_step() == 12 and "step-000012" in reporter.notes[0]
    assert set_aside_damaged_snapshot(run, reporter) is None  # nothing left to set aside


def test_restarted_workers_rewind_the_metrics_to_their_checkpoint(tmp_path):
    from tuneforge.train.tracking import Tracker

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    tracker = Tracker(run)
    step = {"type": "step", "loss": 1.0, "lr": 0.1, "grad_norm": 1.0, "tokens_per_second": 10.0}
    tracker.record({"type": "start", "step": 0})
    for n in range(1, 8):
        tracker.record({**step, "step": n})
    tracker.record({"type": "eval", "step": 4, "eval_loss": 0.5})
    tracker.record({"type": "start", "step": 4})  # a restart from the checkpoint of step 4
    for n in range(5, 9):
        tracker.record({**step, "step": n, "loss": 0.5})
    tracker.close()
    rows = run.metrics()
    assert [r["step"] for r in rows if r["type"] == "step"] == list(range(1, 9))  # each step once
    assert [r["loss"] for r in rows if r["type"] == "step"][4:] == [0.5] * 4  # the retrained ones kept



def test_a_process_is_gone_once_killed_reaped_or_its_pid_reused():
    import subprocess
    import sys

    from tuneforge.train.liveness import Process

    assert Process.current().running()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    import psutil

    alive = Process(Process.current().node, child.pid, psutil.Process(child.pid).create_time())
    assert alive.running()
    assert not Process(alive.node, child.pid, alive.started - 1000).running()  # the same pid, another process
    assert Process("another-machine", child.pid).running()  # cannot be checked from here: assumed alive
    child.kill()
    time.sleep(0.2)
    assert not alive.running()  # killed and not yet reaped: a zombie is gone
    child.wait()
    assert not alive.running() and not wait_until_gone([alive], 1)


def test_resume_refuses_a_run_whose_driver_is_still_alive(tmp_path):
    from dataclasses import asdict

    from tuneforge.errors import TuneforgeError
    from tuneforge.train.driver import wait_for_earlier_processes
    from tuneforge.train.preflight import SilentReporter

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.update_state(status="running", driver=asdict(Process.current()))
    with pytest.raises(TuneforgeError, match=rf"still being trained by process {os.getpid()}.*before --resume"):
        wait_for_earlier_processes(run, SilentReporter())
    run.update_state(status="failed")  # a driver that ended on its own: nothing to wait for
    wait_for_earlier_processes(run, SilentReporter())


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MB tmpfs (root can mount one in this container; skipped where it cannot)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Take all of the filesystem's free space but `leave` bytes (at once: fallocate, not writes)."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(folder).free - leave)
    return filler


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_full_disk_stops_the_run_in_one_line_and_resume_continues_once_there_is_room(
        small_disk, tmp_path, tiny_llama_dir, uninterrupted):
    config = long_config(tmp_path, tiny_llama_dir, output_dir=str(small_disk / "runs"))
    run = Path(config.output_dir) / config.run_name
    driver = tuneforge_cli("train", str(save_config(config, tmp_path / "config.yaml")))
    kept = wait_for_checkpoint_then_steps(run, beyond=1)
    filler = fill(small_disk, leave=64 * 1024)  # the next checkpoint cannot be written
    output, _ = driver.communicate(timeout=KILL_DEADLINE_S)
    assert driver.returncode == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no space left: the next checkpoint could not be written" in errors[0], output
    assert "MB free" in errors[0] and "free space and `tuneforge train --resume" in errors[0]
    assert "Traceback" not in output
    latest = RunDir(run).latest_checkpoint()  # whole, and the one the line names
    assert latest is not None and latest.name in errors[0] and CheckpointMeta.read(latest).step >= kept

    filler.unlink()
    resumed = tuneforge_cli("train", "--resume", str(run))
    output, _ = resumed.communicate(timeout=KILL_DEADLINE_S)
    assert resumed.returncode == 0, output
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    expected, got = steps_of(uninterrupted), steps_of(run)
    assert sorted(got) == list(range(1, 97))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step
    assert final_eval_loss(run) == pytest.approx(final_eval_loss(uninterrupted), abs=1e-4)


@pytest.mark.usefixtures("ray_session")
def test_the_stop_request_reaches_a_worker_through_ray_without_a_shared_file_or_a_blocking_step():
    """The driver's request is a named actor on its node, so workers on nodes that do not share the run folder see
    it; a worker's check never waits, and nothing runs for it until a stop is asked."""
    import ray

    from tuneforge.train.driver import on_this_node
    from tuneforge.train.stopping import StopWatch, ask_to_stop, end_stop_request, new_stop_name

    name = new_stop_name()
    watch, elsewhere = StopWatch(name), StopWatch(None)  # rank 0 watches; the others learn it from the all-reduce
    started, checks = time.monotonic(), 0
    while time.monotonic() - started < 1.0:
        checks += 1
        assert not watch.stop_asked()
    assert checks > 1000  # the checks themselves do not wait on Ray
    ask_to_stop(name, "SIGTERM", on_this_node())
    deadline = time.monotonic() + 10
    while not watch.stop_asked():
        assert time.monotonic() < deadline, "the stop request did not arrive"
    assert watch.stop_asked() and not elsewhere.stop_asked()
    assert ray.get(ray.get_actor(name).reason_given.remote()) == "SIGTERM"
    end_stop_request(name)
    end_stop_request(new_stop_name())  # a run never asked to stop has nothing to end
    deadline = time.monotonic() + 10
    while True:
        try:
            ray.get_actor(name)
        except ValueError:
            break
        assert time.monotonic() < deadline, "the stop request outlived its run"
        time.sleep(0.1)


@pytest.mark.parametrize(("step", "checkpointed"), [(27, True), (48, False), (24, False)])
def test_a_stop_checkpoints_the_steps_done_unless_their_checkpoint_exists(step, checkpointed):
    """At the top of step `step`, `step` steps are done: between planned checkpoints they get one of their own;
    at a planned checkpoint's step, or right after resuming from 24, there is one already."""
    from types import SimpleNamespace

    from tuneforge.train.loop import TrainingLoop

    calls, events = [], []
    loop = SimpleNamespace(start_step=24, plan=SimpleNamespace(event_steps=[24, 48, 72, 96]),
                           checkpoint_event=lambda done, loss: calls.append(done), emit=events.append)
    TrainingLoop.stop_at(loop, step, SimpleNamespace(take_event_loss=lambda: 0.5))
    assert calls == ([step] if checkpointed else []) and events == [{"type": "stopped", "step": step}]
