"""Sequence classification: data checks (unit), then a real MiniLM run used by eval / predict / check."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.helpers import config_for, rows, write_csv
from tests.test_card import check_card
from tests.test_cli import tuneforge_here
from tuneforge.config import load_config
from tuneforge.data.classification import balanced_class_weights, prepare_classification, stratified_split
from tuneforge.errors import DataError
from tuneforge.rundir import RunDir

MINILM_ROWS = [("Sentiment of tweets", "BERT on tweets", "nlp"), ("Detecting cats", "CNN on photos", "vision")]


def test_labels_are_learned_sorted_and_split_is_stratified(tmp_path, minilm_tokenizer):
    path = write_csv(tmp_path / "t.csv", rows({"zeta": 8, "alpha": 20, "mid": 4}))
    data = prepare_classification(config_for(path), minilm_tokenizer, 512)
    assert data.labels == ["alpha", "mid", "zeta"]
    valid_counts = {label: sum(e.label == i for e in data.valid) for i, label in enumerate(data.labels)}
    assert valid_counts == {"alpha": 5, "mid": 1, "zeta": 2}
    assert all(str(e.source).startswith(str(path)) for e in data.train)


def test_missing_text_column_names_it_and_the_columns_found(tmp_path, minilm_tokenizer):
    path = write_csv(tmp_path / "t.csv", [{"title": "x", "tag": "a"}, {"title": "y", "tag": "b"}])
    with pytest.raises(DataError, match=r"t\.csv:2: missing column 'body' \(columns found: title, tag\)"):
        prepare_classification(config_for(path), minilm_tokenizer, 512)


def test_missing_label_column_is_named(tmp_path, minilm_tokenizer):
    path = tmp_path / "t.jsonl"
    path.write_text('{"title": "x", "body": "y", "label": "a"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:1: missing label column 'tag' \(columns found: title, body, label\)"):
        prepare_classification(config_for(path), minilm_tokenizer, 512)


def test_empty_label_names_the_line(tmp_path, minilm_tokenizer):
    path = write_csv(tmp_path / "t.csv", rows({"a": 3, "b": 3}) + [{"title": "t", "body": "b", "tag": " "}])
    with pytest.raises(DataError, match=r"t\.csv:8: empty label in column 'tag'"):
        prepare_classification(config_for(path), minilm_tokenizer, 512)


def test_broken_quote_names_the_line_where_it_opened(tmp_path, minilm_tokenizer):
    path = tmp_path / "t.csv"
    path.write_text('title,body,tag\nok,fine,a\n"unclosed,body,b\nmore,rows,a\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.csv:3: "):
        prepare_classification(config_for(path), minilm_tokenizer, 512)


def test_validation_labels_never_seen_in_training_are_refused_with_counts(tmp_path, minilm_tokenizer):
    train = write_csv(tmp_path / "t.csv", rows({"a": 4, "b": 4}))
    valid = write_csv(tmp_path / "v.csv", rows({"a": 1, "c": 2}))
    with pytest.raises(DataError, match=r"v\.csv: validation label\(s\) 'c' \(2 rows\) never appear"):
        prepare_classification(config_for(train, valid_path=str(valid)), minilm_tokenizer, 512)


def test_non_utf8_csv(tmp_path, minilm_tokenizer):
    path = tmp_path / "t.csv"
    path.write_bytes(b"title,body,tag\nok,fine,a\nbad,caf\xe9,b\n")
    with pytest.raises(DataError, match=r"t\.csv:3: not valid UTF-8"):
        prepare_classification(config_for(path), minilm_tokenizer, 512)


def test_a_typo_in_a_check_spec_suggests_the_spec_keys(tmp_path):
    from tuneforge.check import load_spec
    from tuneforge.errors import ConfigError

    spec = tmp_path / "spec.yaml"
    spec.write_text("invariants:\n  - inputs: [a, b]\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml:1: unknown key 'invariants' \(did you mean 'invariance'\?\)$"):
        load_spec(spec, ["nlp", "vision"])
    spec.write_text("directional:\n  - input: a\n    expectd: nlp\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml:3: unknown key 'directional\.0\.expectd' \(did you mean 'expected'"):
        load_spec(spec, ["nlp", "vision"])


def test_a_check_case_without_expected_names_its_line(tmp_path):
    from tuneforge.check import load_spec
    from tuneforge.errors import ConfigError

    spec = tmp_path / "spec.yaml"
    spec.write_text("directional:\n  - input: a\n    expected: nlp\n  - input: b\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml:4: directional\[1\] needs 'expected' \(the label it should get\)$"):
        load_spec(spec, ["nlp", "vision"])


def test_balanced_class_weights_up_weight_rare_classes():
    labels = [0] * 6 + [1] * 3 + [2]
    assert balanced_class_weights(labels, 3) == pytest.approx([10 / 18, 10 / 9, 10 / 3])


def test_single_member_classes_stay_in_training():
    train, valid = stratified_split(["a", "a", "a", "a", "b"], 0.5, seed=0)
    assert 4 in train and len(valid) == 2


def test_a_large_split_never_takes_a_whole_class_out_of_training():
    labels = ["a"] * 8 + ["b", "b"]
    train, valid = stratified_split(labels, 0.9, seed=0)
    assert {labels[i] for i in train} == {"a", "b"} and len(valid) == 7 + 1


def test_merged_lora_classifier_matches_the_adapter_on_validation_texts(tiny_classifier_run):
    import torch

    from tuneforge.data.classification import row_text
    from tuneforge.export import export_model
    from tuneforge.predict import Predictor

    run = tiny_classifier_run
    held_out = RunDir(run).validation_samples()
    assert len(held_out) == 6  # the held-out half of the run's own split, as training wrote it
    fidelity = export_model(run, "merged").report["fidelity"]
    assert fidelity["texts"] == 6  # read back from the run: its validation rows
    assert fidelity["max_abs_logit_diff"] <= 1e-4 and fidelity["label_agreement"] == 1.0
    assert (run / "export" / "merged" / "model.safetensors").is_file()
    check_card(run / "export" / "merged", RunDir(run), library="transformers", tags=("classification", "lora"))
    # The trained adapter and head move the logits far beyond that bound: a merge that lost them would fail above.
    merged, trained = Predictor.from_path(run / "export" / "merged"), Predictor.from_path(run)
    batch = merged.tokenizer([row_text(row, merged.text_fields) for row in held_out], padding=True, return_tensors="pt")
    with torch.no_grad():
        merged_logits = merged.model(**batch).logits
        with trained.model.disable_adapter():
            base_logits = trained.model(**batch).logits
    assert float((merged_logits - base_logits).abs().max()) > 1e-2


def test_eval_of_a_run_given_by_name_writes_under_runs(tiny_classifier_run, tmp_path, monkeypatch):
    root = tiny_classifier_run.parent.parent
    monkeypatch.chdir(root)
    data = write_csv(tmp_path / "holdout.csv", rows({"nlp": 2, "vision": 2}))
    result = tuneforge_here("eval", "tiny", "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert json.loads((tiny_classifier_run / "eval" / "holdout" / "results.json").read_text())["rows"] == 4
    assert not (root / "tiny").exists()


def test_eval_counts_unseen_labels_as_wrong_and_fails_unless_allowed(tiny_classifier_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_classifier_run.parent.parent)
    data = write_csv(tmp_path / "holdout.csv", rows({"nlp": 2, "vision": 2, "quantum": 3}))
    refused = tuneforge_here("eval", "tiny", "--data", str(data))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    error = refused.stderr.splitlines()[-1]  # after the weight-loading bar, which shows in this process only
    assert error.startswith("error: ") and error.endswith("; fix those labels or pass --allow-unseen-labels")
    assert "holdout.csv: 3 row(s) with label(s) 'quantum' (3) never seen in training, scored as wrong" in error
    results = json.loads((tiny_classifier_run / "eval" / "holdout" / "results.json").read_text())
    assert results["rows"] == 7 and results["unseen_rows"] == 3 and results["unseen_labels"] == {"quantum": 3}
    assert results["per_class"]["quantum"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    matrix = results["confusion_matrix"]["matrix"]  # rows: true nlp, vision, quantum; columns: predicted
    assert results["confusion_matrix"]["labels"] == ["nlp", "vision", "quantum"] and sum(matrix[2]) == 3
    assert [row[2] for row in matrix] == [0, 0, 0]  # nothing is ever predicted as a label training never saw
    assert results["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 7)
    allowed = tuneforge_here("eval", "tiny", "--data", str(data), "--allow-unseen-labels")
    assert allowed.returncode == 0, allowed.stderr
    assert "3 row(s) with label(s) 'quantum' (3) never appear in training" in " ".join(allowed.stdout.split())


# --------------------------------------------------------------------------------------------------------------
# A real run on the bundled MiniLM and the demo data
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, ray_session):
    from tuneforge.train import train

    out = tmp_path_factory.mktemp("classify")
    config = load_config("configs/classify.yaml", [f"output_dir={out}", "run_name=demo", "num_epochs=2",
                                                   "max_num_checkpoints=2"])
    return train(config)


@pytest.mark.e2e
def test_minilm_learns_the_demo_tags(classifier_run):
    best = classifier_run.best_metrics
    assert best["eval_f1"] > 0.8 and best["eval_accuracy"] > 0.8
    meta = json.loads((classifier_run.run_dir / "best" / "tuneforge.json").read_text())
    assert meta["labels"] == ["computer-vision", "mlops", "natural-language-processing", "other"]
    assert meta["text_fields"] == ["title", "description"] and len(meta["class_weights"]) == 4


@pytest.mark.e2e
def test_eval_writes_per_class_metrics_confusion_matrix_and_scores_unseen_labels_as_wrong(classifier_run, tmp_path):
    from tuneforge.evaluate import evaluate_classifier

    holdout = list(csv.DictReader(open("data/demo/projects_holdout.csv", encoding="utf-8")))
    extra = [{"id": "x", "title": "Quantum annealing for portfolios", "description": "qubits", "tag": "quantum"}] * 3
    data = write_csv(tmp_path / "eval.csv", holdout + extra)
    report = evaluate_classifier(classifier_run.run_dir, data, name="holdout")
    results = json.loads((report.output_dir / "results.json").read_text())
    assert report.output_dir == classifier_run.run_dir / "eval" / "holdout"
    assert (report.output_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert results["rows"] == len(holdout) + 3
    assert results["unseen_labels"] == {"quantum": 3}
    assert results["per_class"]["quantum"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert results["f1"] > 0.75
    assert sum(map(sum, results["confusion_matrix"]["matrix"])) == results["rows"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_predict_gives_probabilities_and_threshold_fallback(classifier_run, tmp_path):
    out = tmp_path / "pred.jsonl"
    result = run_cli("predict", str(classifier_run.run_dir), "--text", "Object detection with YOLO on drone footage",
                     "--input", "data/demo/projects_holdout.csv", "--output", str(out),
                     "--threshold", "0.99", "--fallback", "unsure")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1 + len(open("data/demo/projects_holdout.csv").read().splitlines()) - 1
    first = lines[0]
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert any(row["label"] == "unsure" and row["below_threshold"] in first["probabilities"] for row in lines)
    assert all(row["label"] == "unsure" or row["confidence"] >= 0.99 for row in lines)


@pytest.mark.e2e
def test_check_passes_and_fails_with_exit_codes(classifier_run, tmp_path):
    passing = run_cli("check", str(classifier_run.run_dir), "data/demo/projects_checks.yaml")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text("minimum_functionality:\n  - input: Image classification with CNNs\n    expected: mlops\n")
    failing = run_cli("check", str(classifier_run.run_dir), str(spec))
    assert failing.returncode == 1 and "FAIL" in failing.stdout
    spec.write_text("minimum_functionality:\n  - input: x\n    expected: astronomy\n")
    bad = run_cli("check", str(classifier_run.run_dir), str(spec))
    assert bad.returncode == 2 and "not a label of this model" in bad.stderr
