"""Benchmark: runs that meet a fault vs the same run uninterrupted, in one invocation.

Every run is a `tuneforge train CONFIG` process (the bundled demo config by default). The faults, each once its
run's first checkpoint is registered and `--steps-after` more steps are logged:

- `kill`: the driver gets SIGKILL (no clean-up: what a lost machine or `kill -9` does), then `--resume`;
- `sigterm`: the driver gets SIGTERM (a scheduler's preemption): the workers checkpoint the step they reached and
  the run exits 143, then `--resume` (target: no step trained twice);
- `node-loss`: the run has `num_devices: 1..2`, one CPU worker on each node of a two-node Ray cluster on this
  machine (`ray.cluster_utils.Cluster`, joined with --address); the worker node is removed and Ray Train goes on
  with one worker and twice the gradient accumulation. Its baseline is the uninterrupted two-worker run.

Printed per case: final eval loss and the best metric against the baseline's, their difference (target: 1e-4 under
fp32, 1e-3 under bf16/fp16), steps trained twice, and the seconds lost (the faulty run's wall time, resume
included, minus the baseline's; for node-loss also the seconds from the loss to the restarted workers' start).

    .venv/bin/python bench/fault_resume.py [--case kill,sigterm,node-loss] [--config configs/demo.yaml]
        [--steps-after 5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tuneforge.rundir import RunDir, read_snapshot

ROOT = Path(__file__).resolve().parents[1]
CASES = ("kill", "sigterm", "node-loss")
TWO_WORKERS = ["worker_resources.CPU=1"]  # one CPU each: one worker per node of the two-node cluster


def tuneforge(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuneforge.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen, expected: int = 0) -> None:
    _, errors = process.communicate()
    if process.returncode != expected:
        raise SystemExit(f"tuneforge exited with {process.returncode}: {errors.strip()[-2000:]}")


def logged_steps(run: Path) -> list[int]:
    return [row["step"] for row in RunDir(run).metrics() if row["type"] == "step"] if (
        run / "metrics.jsonl").is_file() else []


def after_first_checkpoint(process: subprocess.Popen, run: Path, steps_after: int) -> int:
    """Wait until a checkpoint is registered and `steps_after` more steps are logged; the latest logged step."""
    while process.poll() is None:
        _, latest = read_snapshot(run / "checkpoints")
        steps = logged_steps(run)
        if latest and steps and max(steps) >= int(latest.rsplit("-", 1)[1]) + steps_after:
            return max(steps)
        time.sleep(0.05)
    raise SystemExit("the run ended before the fault: lower --steps-after")


def summary(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    final = results["final_metrics"]
    precision = json.loads((run / "best" / "tuneforge.json").read_text()).get("precision")
    return {"eval_loss": final["eval_loss"], "best_metric": results["best_metric"],
            "best": results["best_metrics"].get(results["best_metric"]), "steps": final["step"], "precision": precision}


class Bench:
    def __init__(self, config: str, steps_after: int, overrides: list[str], folder: str):
        self.config, self.steps_after, self.folder = config, steps_after, Path(folder)
        self.overrides = [*overrides, f"output_dir={folder}"]

    def args(self, extra: list[str] = ()) -> list[str]:
        return [arg for item in [*self.overrides, *extra] for arg in ("--set", item)]

    def whole(self, name: str, extra: list[str] = ()) -> float:
        started = time.perf_counter()
        finish(tuneforge("train", self.config, "--name", name, *self.args(extra)))
        return time.perf_counter() - started

    def interrupted(self, name: str, sig: signal.Signals, exit_code: int) -> dict:
        """A run stopped by `sig` after its first checkpoint, then resumed."""
        run = self.folder / name
        started = time.perf_counter()
        process = tuneforge("train", self.config, "--name", name, *self.args())
        at = after_first_checkpoint(process, run, self.steps_after)
        process.send_signal(sig)
        if sig == signal.SIGKILL:
            process.wait()
        else:
            finish(process, exit_code)
        trained = max(logged_steps(run))  # before --resume drops the steps after its checkpoint
        finish(tuneforge("train", "--resume", str(run)))
        resumed_from = json.loads((run / "run.json").read_text())["resumed_from_step"]
        return {"run": run, "seconds": time.perf_counter() - started, "twice": trained - resumed_from,
                "label": f"{sig.name} at step {at} (last step trained {trained}), resumed from {resumed_from}"}

    def node_loss(self, name: str) -> dict:
        from ray.cluster_utils import Cluster

        run = self.folder / name
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            worker_node = cluster.add_node(num_cpus=1)
            started = time.perf_counter()
            process = tuneforge("train", self.config, "--name", name, "--address", cluster.address,
                                *self.args([*TWO_WORKERS, "num_devices=1..2"]))
            at = after_first_checkpoint(process, run, self.steps_after)
            lost = datetime.now()
            cluster.remove_node(worker_node)
            finish(process)
            seconds = time.perf_counter() - started
        finally:
            cluster.shutdown()
        attempts = json.loads((run / "run.json").read_text())["attempts"]
        restart = datetime.fromisoformat(attempts[-1]["time"])
        sizes = " → ".join(f"{a['workers']}×accumulation {a['gradient_accumulation']}" for a in attempts)
        return {"run": run, "seconds": seconds, "twice": at - attempts[-1]["step"],
                "label": f"node lost at step {at}, restarted from {attempts[-1]['step']} "
                         f"{(restart - lost).total_seconds():.0f} s later ({sizes})"}


def row(label: str, result: dict, seconds: float) -> str:
    return (f"| {label} | {result['precision']} | {result['eval_loss']:.6f} | {result['best']} | {result['steps']} "
            f"| {seconds:.1f} |")


def compare(baseline: dict, faulty: dict, fault: dict, baseline_seconds: float) -> str:
    difference = abs(baseline["eval_loss"] - faulty["eval_loss"])
    target = 1e-4 if baseline["precision"] == "fp32" else 1e-3
    return (f"final eval_loss difference {difference:.2e} (target {target:g} under {baseline['precision']}: "
            f"{'met' if difference <= target else 'NOT met'}); steps trained twice: {fault['twice']}; "
            f"seconds lost: {fault['seconds'] - baseline_seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--steps-after", type=int, default=5, help="steps logged after the first checkpoint")
    parser.add_argument("--set", action="append", default=[], help="config override, as for tuneforge train")
    args = parser.parse_args()
    cases = [case.strip() for case in args.case.split(",")]
    if unknown := [case for case in cases if case not in CASES]:
        raise SystemExit(f"--case: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    lines, notes = [], []
    with tempfile.TemporaryDirectory(prefix="tf-fault-bench-") as tmp:
        bench = Bench(args.config, args.steps_after, args.set, tmp)
        if {"kill", "sigterm"} & set(cases):
            seconds = bench.whole("whole")
            baseline = summary(Path(tmp) / "whole")
            lines.append(row("uninterrupted", baseline, seconds))
            for case, sig, code in (("kill", signal.SIGKILL, None), ("sigterm", signal.SIGTERM, 143)):
                if case in cases:
                    fault = bench.interrupted(case, sig, code)
                    result = summary(fault["run"])
                    lines.append(row(fault["label"], result, fault["seconds"]))
                    notes.append(f"{case}: {compare(baseline, result, fault, seconds)}")
        if "node-loss" in cases:
            seconds = bench.whole("two-workers", [*TWO_WORKERS, "num_devices=2"])
            baseline = summary(Path(tmp) / "two-workers")
            lines.append(row("two workers, uninterrupted", baseline, seconds))
            fault = bench.node_loss("node-loss")
            result = summary(fault["run"])
            lines.append(row(fault["label"], result, fault["seconds"]))
            notes.append(f"node-loss: {compare(baseline, result, fault, seconds)}")

    print("| run | precision | final eval_loss | best metric | optimizer steps | wall seconds |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))
    print("\n".join(notes))


if __name__ == "__main__":
    main()
