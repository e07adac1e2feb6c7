"""Rules about metrics, in one place: perplexity, which way a metric is better, the default search objective, and
the classification summary. A leaf module: training, evaluation and search import it; it imports nothing of
tuneforge's, so no import cycle can go through it."""

from __future__ import annotations

import math
from typing import Any, Literal

Mode = Literal["min", "max"]

# Validation bookkeeping, never something to optimise.
NOT_QUALITY = frozenset({"step", "epoch", "train_loss", "eval_loss", "eval_seconds", "peak_rss_mb", "eval_perplexity",
                         "eval_generate_seconds"})
LOWER_IS_BETTER = ("loss", "perplexity", "run_on", "_seconds")  # run_on: answers with text after their JSON value


def perplexity(loss: float) -> float:
    """exp(loss), capped so that a diverged run reports a large number instead of overflowing."""
    return math.exp(min(loss, 50.0))


def metric_mode(metric: str) -> Mode:
    """Losses, perplexities, run-on rates and times are minimised; every other metric (accuracy, F1, exact match, the
    summed objective) maximised."""
    return "min" if any(part in metric for part in LOWER_IS_BETTER) else "max"


def quality_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The validation metrics that measure quality (accuracy, F1, ...), without the loss and bookkeeping."""
    return {key: float(value) for key, value in metrics.items()
            if key.startswith("eval_") and key not in NOT_QUALITY and isinstance(value, (int, float))}


def default_objective(metrics: dict[str, Any]) -> float:
    """HF's `default_compute_objective`: eval_loss if it is the only quality metric, else the sum of the others
    (a lower-is-better one, the run-on rate, counts negatively)."""
    others = quality_metrics(metrics)
    if not others:
        return float(metrics["eval_loss"])
    return float(sum(-value if metric_mode(key) == "min" else value for key, value in others.items()))


def default_objective_mode(task_metrics: tuple[str, ...]) -> Mode:
    """Which way `default_objective` is better for a task reporting `task_metrics`: the sum of quality metrics is
    maximised; a lone loss minimised."""
    return "max" if quality_metrics(dict.fromkeys(task_metrics, 0.0)) else "min"


def objective_value(metrics: dict[str, Any], metric: str) -> float | None:
    """`metric` from one validation event ('objective': the default objective), or None if it was not reported."""
    if metric == "objective":
        return default_objective(metrics) if "eval_loss" in metrics else None
    value = metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def better(mode: Mode) -> Any:
    """min or max, to pick the best of scored items."""
    return min if mode == "min" else max


def classification_summary(y_true: list[Any], y_pred: list[Any], prefix: str = "") -> dict[str, float]:
    """Accuracy and support-weighted precision, recall and F1."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return {f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)), f"{prefix}precision": float(precision),
            f"{prefix}recall": float(recall), f"{prefix}f1": float(f1)}


def mean_throughput(steps: list[dict[str, Any]]) -> float | None:
    """Tokens per second over logged training steps (total tokens / total step time)."""
    tokens = sum(row.get("tokens", 0.0) for row in steps)
    seconds = sum(row.get("step_seconds", 0.0) for row in steps)
    return round(tokens / seconds, 1) if seconds else None
