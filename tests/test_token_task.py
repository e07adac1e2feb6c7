"""Token classification as a task: preparation (windows, labels on first subwords), the objective's entity scores,
then a real MiniLM run on the demo data, scored on the held-out phrasings through the Tagger."""

from __future__ import annotations

import json

import pytest

from tests.helpers import write_jsonl
from tuneforge.config import TrainConfig, load_config
from tuneforge.data.tagging import prepare_token_classification
from tuneforge.data.tokens import IGNORE, read_tagged, tags_to_entities
from tuneforge.errors import DataError


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from tuneforge.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("minilm-l6"))


def config_for(train, valid=None, **overrides) -> TrainConfig:
    settings = dict(task="token_classification", model_id="minilm-l6", train_path=str(train),
                    valid_path=str(valid) if valid else None, valid_split=0.0 if valid is None else 0.1)
    settings.update(overrides)
    return TrainConfig(**settings)


SENTENCE = {"tokens": ["Meet", "Oluwaseun", "in", "Kraków", "on", "June", "2"],
            "tags": ["O", "B-PERSON", "O", "B-CITY", "O", "B-DATE", "I-DATE"]}


def test_labels_sit_on_first_subwords_and_the_label_set_holds_every_form(tmp_path, minilm_tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [SENTENCE])
    data = prepare_token_classification(config_for(path), minilm_tokenizer, 512)
    assert data.labels == ["O", "B-CITY", "B-DATE", "B-PERSON", "I-CITY", "I-DATE", "I-PERSON"]
    (example,) = data.train
    encoding = minilm_tokenizer(SENTENCE["tokens"], is_split_into_words=True)
    firsts = [i for i, word in enumerate(encoding.word_ids())
              if word is not None and (i == 0 or encoding.word_ids()[i - 1] != word)]
    labelled = [i for i, label in enumerate(example.labels) if label != IGNORE]
    assert labelled == firsts and len(firsts) == 7 < len(example)  # Oluwaseun and Kraków have several subwords
    assert [data.labels[example.labels[i]] for i in labelled] == SENTENCE["tags"]
    everything = prepare_token_classification(config_for(path, label_all_tokens=True), minilm_tokenizer, 512)
    assert all(label != IGNORE for label in everything.train[0].labels[1:-1])  # all but [CLS] and [SEP]


def test_a_long_sentence_is_windowed_and_each_word_scored_once(tmp_path, minilm_tokenizer):
    words = [w for i in range(30) for w in (f"Person{i}", "met", "in", "Oslo")]
    tags = [t for _ in range(30) for t in ("B-PERSON", "O", "O", "B-CITY")]
    train = write_jsonl(tmp_path / "t.jsonl", [{"tokens": words, "tags": tags}])
    valid = write_jsonl(tmp_path / "v.jsonl", [{"tokens": words, "tags": tags}])
    data = prepare_token_classification(config_for(train, valid, context_length=32, window_overlap=8),
                                        minilm_tokenizer, 512)
    assert len(data.train) > 3 and all(len(example) <= 32 for example in data.train + data.valid)
    assert data.stats["valid"].truncated == 1 and any("windows" in note for note in data.notes)
    scored = sum(int((example.labels != IGNORE).sum()) for example in data.valid)
    assert scored == len(words)  # overlapping windows: every word scored exactly once
    trained = sum(int((example.labels != IGNORE).sum()) for example in data.train)
    assert trained > len(words)  # training sees the overlap twice


def test_refusing_long_sentences_and_unknown_validation_tags(tmp_path, minilm_tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", [SENTENCE])
    with pytest.raises(DataError, match=r"t\.jsonl:1: sentence is longer than context_length 6"):
        prepare_token_classification(config_for(train, context_length=6, truncation="refuse"), minilm_tokenizer, 512)
    valid = write_jsonl(tmp_path / "v.jsonl", [{"tokens": ["Acme"], "tags": ["B-ORG"]}])
    with pytest.raises(DataError, match=r"v\.jsonl:1: tag\(s\) B-ORG never appear in the training data"):
        prepare_token_classification(config_for(train, valid), minilm_tokenizer, 512)


def test_the_objective_scores_entities_strictly_from_token_predictions():
    from tuneforge.models.objectives import TokenClassificationObjective

    labels = ["O", "B-CITY", "B-PERSON", "I-CITY", "I-PERSON"]
    objective = TokenClassificationObjective(None, labels, "IOB2")
    truth = [[IGNORE, 2, IGNORE, 0, 1, 3, IGNORE], [IGNORE, 2, 4, IGNORE]]
    guess = [[0, 2, 4, 0, 1, 0, 0], [0, 2, 0, 0]]  # CITY cut short, PERSON cut short: 1 of 3 entities right
    metrics = objective.summarize(3.0, 6.0, {"y_true": truth, "y_pred": guess})
    assert metrics["eval_loss"] == 0.5
    assert metrics["eval_precision"] == pytest.approx(1 / 3) and metrics["eval_recall"] == pytest.approx(1 / 3)
    assert metrics["eval_accuracy"] == pytest.approx(4 / 6)


# --------------------------------------------------------------------------------------------------------------
# A real run on the bundled MiniLM and the demo data
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entity_run(tmp_path_factory, ray_session):
    from tuneforge.train import train

    out = tmp_path_factory.mktemp("entities")
    return train(load_config("configs/entities.yaml", [f"output_dir={out}", "run_name=entities", "num_epochs=3",
                                                       "max_num_checkpoints=2"]))


@pytest.mark.e2e
def test_minilm_tags_held_out_phrasings_with_entity_f1_over_0_9(entity_run):
    from tuneforge.predict_tokens import Tagger

    assert entity_run.best_metrics["eval_f1"] >= 0.9
    meta = json.loads((entity_run.run_dir / "best" / "tuneforge.json").read_text())
    assert meta["task"] == "token_classification" and meta["tag_scheme"] == "IOB2"
    sentences, _ = read_tagged("data/demo/entities_heldout.jsonl")
    tagger = Tagger.from_path(entity_run.run_dir)
    predicted = tagger.predict([sentence.text for sentence in sentences])
    true_tags, pred_tags = [], []
    for sentence, entities in zip(sentences, predicted, strict=True):
        expected = {(sentence.text[sentence.word_spans[a][0]:sentence.word_spans[b - 1][1]], kind)
                    for kind, a, b in tags_to_entities(sentence.tags, "IOB2")}
        found = {(entity.text, entity.label) for entity in entities}
        true_tags.append(sorted(expected))
        pred_tags.append(sorted(found))
        for entity in entities:  # offsets point back into the text
            assert sentence.text[entity.start:entity.end] == entity.text and 0 < entity.score <= 1
    hits = sum(len(set(t) & set(p)) for t, p in zip(true_tags, pred_tags, strict=True))
    precision = hits / max(1, sum(map(len, pred_tags)))
    recall = hits / max(1, sum(map(len, true_tags)))
    assert 2 * precision * recall / max(precision + recall, 1e-9) >= 0.9



@pytest.mark.e2e
def test_cli_eval_and_predict_on_a_tagger(entity_run, tmp_path):
    from tests.test_cli import assert_one_clear_line, tuneforge_here

    evaluated = tuneforge_here("eval", str(entity_run.run_dir), "--data", "data/demo/entities_heldout.jsonl",
                               "--output", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["per_type"]) == {"CITY", "DATE", "PERSON", "TOPIC"} and results["f1"] >= 0.9
    assert results["confusion_matrix"]["labels"][-1] == "none" and (tmp_path / "eval" / "confusion_matrix.png").is_file()
    assert "micro" in evaluated.stdout
    text = "Can Aiko meet in Oslo on June 2 about the roadmap?"
    predicted = tuneforge_here("predict", str(entity_run.run_dir), "--text", text, "--aggregation", "average")
    assert predicted.returncode == 0, predicted.stderr
    entities = json.loads(predicted.stdout.strip().splitlines()[-1])["entities"]
    assert {(e["text"], e["label"]) for e in entities} >= {("Aiko", "PERSON"), ("Oslo", "CITY"), ("June 2", "DATE")}
    assert all(text[e["start"]:e["end"]] == e["text"] for e in entities)
    refused = tuneforge_here("predict", str(entity_run.run_dir), "--text", text, "--threshold", "0.5",
                             "--fallback", "O")
    assert_one_clear_line(refused, "--threshold/--fallback apply to classification runs")
