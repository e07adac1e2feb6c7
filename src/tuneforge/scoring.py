"""Scoring generated answers against reference answers: did the model stop, is the answer right, and for JSON
answers, is it valid, exact, and how many of its fields are right.

Validation (every checkpoint event), causal `eval` and the benchmarks score with these functions, so a number means
the same wherever it is printed. A leaf module: it imports nothing of tuneforge's.

JSON rules, chosen to be strict and predictable:
- an answer is *valid* JSON when the whole answer (surrounding whitespace aside) is one JSON value;
- it *runs on* when it starts with a JSON value and more text follows that value;
- *JSON exact* is parsed equality with the reference (key order and spacing do not matter; the number 5 and the
  string "5" differ), and needs a valid answer;
- fields are the (key path, value) pairs of the leaves, e.g. ("items[0].owner", "Priya"); precision and recall
  count pairs over all scored answers (micro average), taking the answer's leading JSON value when text runs on.
"""

from __future__ import annotations

import importlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The names every generation metric is reported under at validation (with the eval_ prefix) and in `eval`.
TEXT_METRICS = ("stop_rate", "exact_match")
JSON_METRICS = ("json_valid", "json_exact", "field_precision", "field_recall", "field_f1", "run_on")
GENERATION_METRICS = TEXT_METRICS + JSON_METRICS
LOWER_IS_BETTER = frozenset({"run_on"})  # a share of answers with text after the JSON value

JSON_DETECT_SHARE = 0.9  # target_format auto: JSON when at least this share of references parse as an object/array
NO_VALUE = object()


@dataclass
class ScoredAnswer:
    """One answer's verdicts (what the samples file and the mistakes table show)."""

    stopped: bool
    exact: bool
    json_valid: bool | None = None  # None: not a JSON target
    json_exact: bool | None = None
    run_on: bool | None = None
    field_errors: dict[str, str] = field(default_factory=dict)  # key path -> "missing" | "wrong" | "spurious"


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def leading_json(text: str) -> tuple[Any, str]:
    """(the JSON value the text starts with, the text after it); (NO_VALUE, text) when it starts with none."""
    stripped = text.strip()
    try:
        value, end = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError:
        return NO_VALUE, stripped
    return value, stripped[end:].strip()


def is_json_target(reference: str) -> bool:
    value, rest = leading_json(reference)
    return isinstance(value, (dict, list)) and not rest


def detect_json(references: Sequence[str]) -> bool:
    """Whether references are JSON answers (target_format: auto)."""
    if not references:
        return False
    return sum(is_json_target(r) for r in references) >= JSON_DETECT_SHARE * len(references)


def field_pairs(value: Any, path: str = "") -> dict[str, Any]:
    """Leaves of a JSON value by key path: {"a": {"b": [1, 2]}} -> {"a.b[0]": 1, "a.b[1]": 2}. An empty object or
    list is a leaf of its own, so that `{}` against `{"a": 1}` is not a perfect answer."""
    if isinstance(value, dict) and value:
        pairs: dict[str, Any] = {}
        for key, child in value.items():
            pairs.update(field_pairs(child, f"{path}.{key}" if path else str(key)))
        return pairs
    if isinstance(value, list) and value:
        pairs = {}
        for index, child in enumerate(value):
            pairs.update(field_pairs(child, f"{path}[{index}]"))
        return pairs
    return {path or "$": value}


def same_json(a: Any, b: Any) -> bool:
    """Parsed equality, with types kept apart: True is not 1, "5" is not 5 (Python's == would equate the first)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def field_errors(predicted: Any, reference: Any) -> tuple[int, dict[str, str]]:
    """(number of reference fields the prediction got right, what went wrong per key path)."""
    want = field_pairs(reference)
    got = field_pairs(predicted) if predicted is not NO_VALUE else {}
    errors: dict[str, str] = {}
    right = 0
    for path, value in want.items():
        if path not in got:
            errors[path] = "missing"
        elif same_json(got[path], value):
            right += 1
        else:
            errors[path] = "wrong"
    errors.update({path: "spurious" for path in got if path not in want})
    return right, errors


@dataclass
class GenerationScore:
    """Metrics over a set of answers (names without the eval_ prefix) and each answer's verdicts."""

    metrics: dict[str, float]
    answers: list[ScoredAnswer]
    is_json: bool

    def field_error_counts(self) -> dict[str, Counter]:
        """Per key path, how often it was missing, wrong or spurious."""
        counts: dict[str, Counter] = {}
        for answer in self.answers:
            for path, kind in answer.field_errors.items():
                counts.setdefault(path, Counter())[kind] += 1
        return dict(sorted(counts.items(), key=lambda item: -sum(item[1].values())))


def score_answers(predictions: Sequence[str], references: Sequence[str], stopped: Sequence[bool], *,
                  target_format: str = "auto") -> GenerationScore:
    """Score generated answers. `target_format`: "json", "text", or "auto" (JSON when the references are)."""
    if not (len(predictions) == len(references) == len(stopped)):
        raise ValueError("predictions, references and stop flags must have the same length")
    is_json = target_format == "json" or (target_format == "auto" and detect_json(references))
    answers = []
    predicted_fields = reference_fields = right_fields = 0
    for prediction, reference, ended in zip(predictions, references, stopped, strict=True):
        answer = ScoredAnswer(stopped=bool(ended),
                              exact=normalise_whitespace(prediction) == normalise_whitespace(reference))
        if is_json:
            value, rest = leading_json(prediction)
            wanted, _ = leading_json(reference)
            answer.json_valid = value is not NO_VALUE and not rest
            answer.run_on = value is not NO_VALUE and bool(rest)
            answer.json_exact = answer.json_valid and wanted is not NO_VALUE and same_json(value, wanted)
            right, answer.field_errors = field_errors(value, wanted)
            right_fields += right
            reference_fields += len(field_pairs(wanted)) if wanted is not NO_VALUE else 0
            predicted_fields += len(field_pairs(value)) if value is not NO_VALUE else 0
        answers.append(answer)
    metrics = {"stop_rate": share(a.stopped for a in answers), "exact_match": share(a.exact for a in answers)}
    if is_json:
        precision = right_fields / predicted_fields if predicted_fields else 0.0
        recall = right_fields / reference_fields if reference_fields else 0.0
        metrics.update({
            "json_valid": share(a.json_valid for a in answers), "json_exact": share(a.json_exact for a in answers),
            "field_precision": precision, "field_recall": recall,
            "field_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "run_on": share(a.run_on for a in answers),
        })
    return GenerationScore(metrics, answers, is_json)


def share(flags: Any) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else 0.0


# ------------------------------------------------------------------------------------------------------------
# User metrics: eval_metrics: ["module:function"]
# ------------------------------------------------------------------------------------------------------------

UserMetric = Callable[[list[str], list[str]], Any]


def load_user_metric(spec: str) -> UserMetric:
    """The function named by "module:function" (the module importable from the working directory or the path)."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name.isidentifier():
        raise ValueError(f"metric '{spec}' must be 'module:function', e.g. 'my_metrics:bleu'")
    import sys

    if "" not in sys.path:  # `python -m`-style: a module beside the config is importable
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"metric '{spec}': cannot import module '{module_name}' ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"metric '{spec}': module '{module_name}' has no function '{function_name}'")
    return function


def user_metric_name(spec: str) -> str:
    """The metric a "module:function" entry reports when it returns a single number."""
    return spec.partition(":")[2]


def run_user_metrics(specs: Sequence[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    """Call each user metric with (predictions, references); it returns one number, reported under the function's
    name (so that best_metric and tune.metric can name it before training starts)."""
    results: dict[str, float] = {}
    for spec in specs:
        value = load_user_metric(spec)(list(predictions), list(references))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ValueError(f"metric '{spec}' returned {value!r}: a metric must be one finite number")
        results[user_metric_name(spec)] = float(value)
    return results
