"""Generation metrics against hand-computed cases (tuneforge.scoring)."""

from __future__ import annotations

import pytest

from tuneforge.metrics import default_objective, metric_mode
from tuneforge.scoring import field_pairs, load_user_metric, run_user_metrics, score_answers


def score(predictions, references, stopped=None, **options):
    return score_answers(predictions, references, stopped or [True] * len(predictions), **options)


def test_nested_json_key_order_and_spacing_do_not_matter():
    reference = '{"person": "Aiko", "meta": {"tags": ["a", "b"], "n": 3}}'
    answer = '{"meta":{"n":3,"tags":["a","b"]},"person":"Aiko"}'
    result = score([answer], [reference])
    assert result.is_json
    assert result.metrics["json_valid"] == 1.0 and result.metrics["json_exact"] == 1.0
    assert result.metrics["exact_match"] == 0.0  # the text differs; parsed equality is what json_exact measures
    assert result.metrics["field_f1"] == 1.0


def test_number_as_string_is_a_wrong_field_not_a_missing_one():
    reference = '{"count": 5, "city": "Oslo"}'
    result = score(['{"count": "5", "city": "Oslo"}'], [reference])
    assert result.metrics["json_valid"] == 1.0 and result.metrics["json_exact"] == 0.0
    assert result.metrics["field_precision"] == pytest.approx(0.5)
    assert result.metrics["field_recall"] == pytest.approx(0.5)
    assert result.answers[0].field_errors == {"count": "wrong"}


def test_booleans_are_not_numbers():
    assert score(['{"a": true}'], ['{"a": 1}']).metrics["json_exact"] == 0.0
    assert score(['{"a": 1.0}'], ['{"a": 1}']).metrics["json_exact"] == 1.0


def test_run_on_text_after_the_json_value():
    reference = '{"city": "Oslo", "date": "May 2"}'
    answers = ['{"city": "Oslo", "date": "May 2"} Let me know if you need anything else!',
               '{"city": "Oslo", "date": "May 2"}',
               'Sure! {"city": "Oslo"}']
    result = score(answers, [reference] * 3, [False, True, True])
    metrics = result.metrics
    assert metrics["run_on"] == pytest.approx(1 / 3)  # only the first starts with JSON and goes on
    assert metrics["json_valid"] == pytest.approx(1 / 3)  # a run-on answer is not valid JSON as a whole
    assert metrics["json_exact"] == pytest.approx(1 / 3)
    assert metrics["stop_rate"] == pytest.approx(2 / 3)
    # Fields: the run-on answer's leading value counts (2 right); the prose answer has no JSON value (0 of 2).
    assert metrics["field_precision"] == pytest.approx(4 / 4)
    assert metrics["field_recall"] == pytest.approx(4 / 6)
    assert metrics["field_f1"] == pytest.approx(2 * 1 * (4 / 6) / (1 + 4 / 6))
    assert result.answers[2].field_errors == {"city": "missing", "date": "missing"}


def test_lists_spurious_and_missing_fields_are_counted_per_path():
    reference = '{"items": [{"owner": "Lena", "due": "May 3"}]}'
    answer = '{"items": [{"owner": "Lena", "due": "May 4"}, {"owner": "Kofi"}]}'
    result = score([answer], [reference])
    assert result.answers[0].field_errors == {"items[0].due": "wrong", "items[1].owner": "spurious"}
    assert result.metrics["field_precision"] == pytest.approx(1 / 3)
    assert result.metrics["field_recall"] == pytest.approx(1 / 2)
    counts = result.field_error_counts()
    assert counts["items[0].due"]["wrong"] == 1


def test_empty_object_is_not_a_perfect_answer():
    assert field_pairs({}) == {"$": {}}
    result = score(["{}"], ['{"a": 1}'])
    assert result.metrics["field_recall"] == 0.0 and result.metrics["json_exact"] == 0.0


def test_text_targets_get_whitespace_normalised_exact_match_only():
    result = score(["Paris  is\nthe capital.", "Lyon"], ["Paris is the capital.", "Paris"])
    assert not result.is_json
    assert result.metrics == {"stop_rate": 1.0, "exact_match": 0.5}


def test_target_format_forces_json_scoring():
    result = score(["not json"], ["also not json"], target_format="json")
    assert result.metrics["json_valid"] == 0.0 and result.metrics["json_exact"] == 0.0


def test_run_on_is_minimised_and_counts_against_the_default_objective():
    assert metric_mode("eval_run_on") == "min" and metric_mode("eval_json_exact") == "max"
    metrics = {"eval_loss": 0.5, "eval_json_exact": 0.75, "eval_run_on": 0.25, "eval_generate_seconds": 9.0}
    assert default_objective(metrics) == pytest.approx(0.5)


def test_user_metric_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "def longest(predictions, references):\n    return max(len(p) for p in predictions) / 10\n"
        "def broken(predictions, references):\n    return 'high'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_user_metrics(["my_metrics:longest"], ["abcde", "ab"], ["x", "y"]) == {"longest": 0.5}
    with pytest.raises(ValueError, match="my_metrics:broken.*'high'.*finite number"):
        run_user_metrics(["my_metrics:broken"], ["a"], ["b"])
    with pytest.raises(ValueError, match="has no function 'missing'"):
        load_user_metric("my_metrics:missing")
    with pytest.raises(ValueError, match="must be 'module:function'"):
        load_user_metric("my_metrics.longest")
