"""Benchmark: what MLflow tracking costs training — tokens/s with `trackers: [tensorboard]` and with
`trackers: [tensorboard, mlflow]`, in one invocation.

Each run is `tuneforge train CONFIG` (the bundled demo by default) as a user starts it, in its own process, into a
temporary output_dir (MLflow: its default SQLite store there). The two settings alternate for `--rounds` rounds so
drift on a noisy machine hits both alike; every run trains the same steps (`--steps`, default: the config's own
schedule). Printed per run: real tokens/s over the logged steps after the first (as results.json counts them, less
the warm-up step) and the wall time of the command; then the means and their ratio against the target of issue 32:
MLflow on costs <= 2 % tokens/s.

    .venv/bin/python bench/mlflow_cost.py [--config configs/demo.yaml] [--steps N] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuneforge.metrics import mean_throughput
from tuneforge.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"tensorboard": "[tensorboard]", "tensorboard + mlflow": "[tensorboard, mlflow]"}
TARGET_COST = 0.02


def train_once(config: Path, trackers: str, steps: int | None, out: Path, name: str) -> dict:
    overrides = [f"trackers={trackers}", f"output_dir={out}"] + ([f"max_steps={steps}"] if steps else [])
    command = [sys.executable, "-m", "tuneforge.cli", "train", str(config), "--name", name]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"tuneforge train exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    steps_logged = [row for row in RunDir(out / name).metrics() if row["type"] == "step"]
    return {"tokens_per_second": mean_throughput(steps_logged[1:] or steps_logged), "steps": len(steps_logged),
            "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the config's)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="tuneforge-mlflow-cost-") as tmp:
        for round_ in range(args.rounds):
            order = list(SETTINGS.items()) if round_ % 2 == 0 else list(reversed(SETTINGS.items()))
            for name, trackers in order:
                result = train_once(args.config.resolve(), trackers, args.steps, Path(tmp),
                                    f"{name.replace(' + ', '-')}-{round_}")
                results[name].append(result)
                print(f"round {round_ + 1} {name:20}: {result['tokens_per_second']:7.1f} tokens/s over "
                      f"{result['steps']} steps, {result['wall_s']:6.1f} s wall", flush=True)
    mean = {name: statistics.mean(r["tokens_per_second"] for r in rows) for name, rows in results.items()}
    base, tracked = mean["tensorboard"], mean["tensorboard + mlflow"]
    cost = 1 - tracked / base
    print(f"tokens/s, means of {args.rounds} runs each: tensorboard {base:.1f}, tensorboard + mlflow {tracked:.1f}; "
          f"ratio {tracked / base:.3f}, MLflow costs {100 * cost:+.1f} % (target <= {100 * TARGET_COST:.0f} %): "
          f"{'met' if cost <= TARGET_COST else 'NOT met'}")


if __name__ == "__main__":
    main()
