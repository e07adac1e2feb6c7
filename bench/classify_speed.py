"""Benchmark: the bundled MiniLM classifier, bf16 autocast vs fp32, on the demo data and on 760 training rows.

Each configuration is a full `tuneforge train` through the library (Ray Train, one worker), 3 epochs, batch 32.
Printed per run: wall time (start-up included), training time, real tokens/s, peak RSS of the worker, and the
best weighted F1 on the validation split; then the bf16/fp32 ratios. Target: 760 rows x 3 epochs <= 3 minutes.

    .venv/bin/python bench/classify_speed.py
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generated_rows(count: int) -> list[dict[str, str]]:
    """`count` rows from the demo data generator (fresh seeds, so not copies of the demo file)."""
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "scripts" / "make_classification_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows, seed = [], 1
    while len(rows) < count:
        rows.extend(module.make_rows(random.Random(seed)))
        seed += 1
    return rows[:count]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["title", "description", "tag"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(train_path: Path, precision: str, out: Path, name: str) -> dict:
    from tuneforge.config import load_config
    from tuneforge.rundir import RunDir
    from tuneforge.train import train

    config = load_config(ROOT / "configs" / "classify.yaml", [
        f"train_path={train_path}", f"precision={precision}", "num_epochs=3", "max_num_checkpoints=3",
        f"output_dir={out}", f"run_name={name}",
    ])
    started = time.time()
    result = train(config)
    wall = time.time() - started
    history = RunDir(result.run_dir).metrics()
    steps = [row for row in history if row["type"] == "step"]
    evals = [row for row in history if row["type"] == "eval"]
    train_seconds = sum(row["step_seconds"] for row in steps) + sum(row["eval_seconds"] for row in evals)
    return {
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "tokens_per_second": sum(r["tokens"] for r in steps) / sum(r["step_seconds"] for r in steps),
        "peak_rss_mb": max(row["peak_rss_mb"] for row in evals),
        "best_f1": max(row["eval_f1"] for row in evals),
    }


def main() -> None:
    from tuneforge.cluster import ensure_ray

    ensure_ray()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        out = Path(tmp)
        datasets = {"demo (370 rows)": ROOT / "data" / "demo" / "projects.csv",
                    "760 rows": write_csv(out / "rows760.csv", generated_rows(760))}
        for label, path in datasets.items():
            for precision in ("fp32", "bf16"):
                results[f"{label}, {precision}"] = run(path, precision, out, f"{precision}-{len(results)}")
    print(f"\n{'run':26}{'wall s':>8}{'train s':>9}{'tok/s':>9}{'peak RSS MB':>13}{'best F1':>9}")
    for name, row in results.items():
        print(f"{name:26}{row['wall_seconds']:>8.1f}{row['train_seconds']:>9.1f}{row['tokens_per_second']:>9.0f}"
              f"{row['peak_rss_mb']:>13.0f}{row['best_f1']:>9.3f}")
    for label in ("demo (370 rows)", "760 rows"):
        fp32, bf16 = results[f"{label}, fp32"], results[f"{label}, bf16"]
        print(f"{label}: bf16 vs fp32 tokens/s {bf16['tokens_per_second'] / fp32['tokens_per_second']:.2f}x, "
              f"wall {bf16['wall_seconds'] / fp32['wall_seconds']:.2f}x")
    big = results["760 rows, bf16"]
    print(f"target (760 rows x 3 epochs <= 180 s wall): {'met' if big['wall_seconds'] <= 180 else 'NOT met'} "
          f"({big['wall_seconds']:.0f} s)")
    saved = Path(__file__).parent / "results" / "classify_speed.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
