"""Reading back what is under an output directory: runs (run.json, results.json) and searches (best_run.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError


@dataclass
class RunEntry:
    name: str
    kind: str  # run | search
    status: str
    task: str
    best: str
    path: Path


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def describe_run(path: Path) -> RunEntry:
    status = read_json(path / "run.json").get("status", "unknown")
    results = read_json(path / "results.json")
    config_task = "classification" if "task: classification" in (path / "config.yaml").read_text() else "causal_lm"
    best = ""
    if results:
        metric = results.get("best_metric", "eval_loss")
        value = (results.get("best_metrics") or {}).get(metric)
        best = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else ""
    return RunEntry(path.name, "run", status, results.get("task", config_task), best, path)


def describe_search(path: Path) -> RunEntry:
    best = read_json(path / "best_run.json")
    trials = sum(1 for child in path.iterdir() if (child / "config.yaml").is_file())
    shown = f"{best['metric']} {best['objective']:.4f} ({best['run_id']})" if best else ""
    status = f"done, {trials} trials" if best else f"incomplete, {trials} trials"
    return RunEntry(path.name, "search", status, "", shown, path)


def list_runs(directory: str | Path) -> list[RunEntry]:
    directory = Path(directory)
    if not directory.is_dir():
        raise TuneforgeError(f"{directory}: no such directory")
    entries = []
    for child in sorted(directory.iterdir()):
        if (child / "tune_config.yaml").is_file():
            entries.append(describe_search(child))
        elif (child / "config.yaml").is_file() and (child / "run.json").is_file():
            entries.append(describe_run(child))
    return entries
