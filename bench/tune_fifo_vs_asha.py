"""Benchmark: a 6-trial learning-rate grid on the bundled MiniLM classifier and the demo data, run with the FIFO
scheduler and then with ASHA, in one invocation. Printed for each: total trial-epochs trained, wall time, and the
best objective found (HF's default: accuracy + precision + recall + F1 on validation, higher is better).

    .venv/bin/python bench/tune_fifo_vs_asha.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = [1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]
EPOCHS = 4


def run(scheduler: str, out: Path) -> dict:
    from tuneforge.config import load_config
    from tuneforge.tune import search

    overrides = [f"output_dir={out}", f"num_epochs={EPOCHS}", "checkpoint_every_n_epochs=1",
                 f"search_space={{learning_rate: {{grid: {GRID}}}}}",
                 f"tune={{scheduler: {scheduler}, grace_period: 1, reduction_factor: 2, experiment_name: {scheduler}}}"]
    config = load_config(ROOT / "configs" / "classify.yaml", overrides)
    started = time.time()
    result = search(config)
    return {
        "wall_seconds": time.time() - started,
        "trial_epochs": sum(trial["iterations"] for trial in result.trials),
        "best_objective": result.best["objective"],
        "best_learning_rate": result.best["hyperparameters"]["learning_rate"],
        "stopped_early": sum(trial["status"] == "stopped early" for trial in result.trials),
    }


def main() -> None:
    from tuneforge.cluster import ensure_ray

    ensure_ray(dashboard=True)
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        results = {scheduler: run(scheduler, Path(tmp)) for scheduler in ("fifo", "asha")}
    print(f"\n6-trial grid, MiniLM on the demo data, {EPOCHS} epochs per trial")
    print(f"{'scheduler':10}{'trial-epochs':>14}{'wall s':>9}{'best objective':>16}{'best lr':>10}{'stopped early':>15}")
    for name, row in results.items():
        print(f"{name:10}{row['trial_epochs']:>14}{row['wall_seconds']:>9.0f}{row['best_objective']:>16.4f}"
              f"{row['best_learning_rate']:>10.0e}{row['stopped_early']:>15}")
    fifo, asha = results["fifo"], results["asha"]
    print(f"ASHA vs FIFO: {asha['trial_epochs'] / fifo['trial_epochs']:.2f}x trial-epochs, "
          f"{asha['wall_seconds'] / fifo['wall_seconds']:.2f}x wall time, best objective "
          f"{asha['best_objective'] - fifo['best_objective']:+.4f}")
    saved = Path(__file__).parent / "results" / "tune_fifo_vs_asha.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
