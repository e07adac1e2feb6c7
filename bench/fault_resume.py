"""Benchmark: a run killed with SIGKILL and resumed vs the same run uninterrupted, in one invocation.

Both runs are `tuneforge train CONFIG` processes (the bundled demo config by default). The second is killed with
SIGKILL (no clean-up: what a lost machine or `kill -9` does) once its first checkpoint is registered and
`--steps-after` more steps are logged, then continued with `tuneforge train --resume`. Printed: final eval loss
and the config's best metric of both with their precision, their difference (target: within 1e-4 under fp32,
1e-3 under bf16/fp16), optimizer steps of both, steps trained twice, and the time lost to the kill (killed +
resumed wall time minus the uninterrupted run's).

    .venv/bin/python bench/fault_resume.py [--config configs/demo.yaml] [--steps-after 5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuneforge.rundir import RunDir, read_snapshot

ROOT = Path(__file__).resolve().parents[1]


def tuneforge(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuneforge.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"tuneforge exited with {process.returncode}: {errors.strip()[-2000:]}")


def logged_steps(run: Path) -> list[int]:
    return [row["step"] for row in RunDir(run).metrics() if row["type"] == "step"] if (
        run / "metrics.jsonl").is_file() else []


def kill_after_first_checkpoint(process: subprocess.Popen, run: Path, steps_after: int) -> int:
    """SIGKILL once a checkpoint is registered and `steps_after` more steps are logged; the latest logged step."""
    while process.poll() is None:
        _, latest = read_snapshot(run / "checkpoints")
        steps = logged_steps(run)
        if latest and steps and max(steps) >= int(latest.rsplit("-", 1)[1]) + steps_after:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return max(steps)
        time.sleep(0.05)
    raise SystemExit("the run ended before it could be killed: lower --steps-after")


def summary(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    final = results["final_metrics"]
    precision = json.loads((run / "best" / "tuneforge.json").read_text()).get("precision")
    return {"eval_loss": final["eval_loss"], "best_metric": results["best_metric"],
            "best": results["best_metrics"].get(results["best_metric"]), "steps": final["step"], "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--steps-after", type=int, default=5, help="steps logged after the first checkpoint")
    parser.add_argument("--set", action="append", default=[], help="config override, as for tuneforge train")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-fault-bench-") as tmp:
        overrides = [arg for item in [*args.set, f"output_dir={tmp}"] for arg in ("--set", item)]
        started = time.perf_counter()
        finish(tuneforge("train", args.config, "--name", "whole", *overrides))
        whole_seconds = time.perf_counter() - started

        run = Path(tmp) / "killed"
        started = time.perf_counter()
        killed_at = kill_after_first_checkpoint(tuneforge("train", args.config, "--name", "killed", *overrides),
                                                run, args.steps_after)
        resumed = tuneforge("train", "--resume", str(run))
        finish(resumed)
        killed_seconds = time.perf_counter() - started
        resumed_from = json.loads((run / "run.json").read_text())["resumed_from_step"]
        whole, killed = summary(Path(tmp) / "whole"), summary(run)

    print("| run | precision | final eval_loss | best " + whole["best_metric"] + " | optimizer steps | wall seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| uninterrupted | {whole['precision']} | {whole['eval_loss']:.6f} | {whole['best']} | {whole['steps']} "
          f"| {whole_seconds:.1f} |")
    print(f"| killed at step {killed_at}, resumed from {resumed_from} | {killed['precision']} | "
          f"{killed['eval_loss']:.6f} | {killed['best']} | {killed['steps']} | {killed_seconds:.1f} |")
    difference = abs(whole["eval_loss"] - killed["eval_loss"])
    target = 1e-4 if whole["precision"] == "fp32" else 1e-3
    print(f"final eval_loss difference {difference:.2e} (target {target:g} under {whole['precision']}: "
          f"{'met' if difference <= target else 'NOT met'}); steps trained twice: {killed_at - resumed_from}; "
          f"time lost to the kill: {killed_seconds - whole_seconds:.1f} s")


if __name__ == "__main__":
    main()
