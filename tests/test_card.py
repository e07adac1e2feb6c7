"""Model cards: best/README.md written when training ends and again by each `tuneforge eval`, and a card in every
export folder (tests/test_export.py, tests/test_classification.py use `check_card` on theirs). Each card is checked
field by field against the run that wrote it: it loads with huggingface_hub, its metadata round-trips, its
model-index parses into the run's own scores, its hashes are the training files', its usage code runs, and no
template placeholder is left."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import chat_row, write_csv, write_jsonl
from tuneforge.card import cell
from tuneforge.rundir import RunDir, card_file

# What template cards (PEFT's, huggingface_hub's) leave behind.
PLACEHOLDERS = ("More Information Needed", "[optional]", "TODO", "{{", "}}", "<!--", "Model ID")
DEFAULT_KEYS = ("weight_decay", "lr_scheduler_type", "gradient_accumulation_steps")  # left at their defaults


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copied_run(run: Path, target: Path) -> RunDir:
    """A copy of a session run without evaluations and exports (other tests add theirs to the original)."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("eval", "export"))
    return RunDir(target)


def check_card(folder: Path, run: RunDir, *, library: str, tags: tuple[str, ...], changed: tuple[str, ...] = ()):
    """The card in `folder` against `run`: metadata, model-index, hashes, config keys, no placeholders."""
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from tuneforge.taskspec import get_spec

    card = ModelCard.load(card_file(folder))  # parses model-index into EvalResults, or raises
    data = card.data.to_dict()
    assert ModelCardData(**data).to_dict() == data
    config, results = run.config(), run.results()
    assert data["base_model"] == config["model_id"]
    assert data["pipeline_tag"] == get_spec(config["task"]).pipeline_tag
    assert data["library_name"] == library and {"tuneforge", *tags} <= set(data["tags"])
    assert "license" not in data  # the tiny test models state none
    splits = [(split, config[key]) for split, key in (("train", "train_path"), ("valid", "valid_path")) if config[key]]
    assert data["training_files"] == [{"split": split, "name": Path(path).name, "bytes": Path(path).stat().st_size,
                                       "sha256": sha256(path)} for split, path in splits]

    name, parsed = model_index_to_eval_results(data["model-index"])
    assert name == run.name and len(card.data.eval_results) == len(parsed)
    validation = {(None, key.removeprefix("eval_")): value for key, value in results["best_metrics"].items()
                  if key.startswith("eval_") and not key.endswith("_seconds")}
    evaluations = {(evaluation.name, key.removeprefix("eval_")): value for evaluation in run.evals()
                   for key, value in evaluation.results().items()
                   if isinstance(value, float) and not key.endswith("_seconds")}
    assert {(r.dataset_config, r.metric_type): r.metric_value for r in parsed} == {**validation, **evaluations}

    for key in changed:
        assert f"| `{key}` | {cell(config[key])} |" in card.text
    assert not [key for key in DEFAULT_KEYS if f"`{key}`" in card.text]
    assert not [text for text in PLACEHOLDERS if text in str(card)]
    return card


def python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)\n```", text, re.DOTALL).group(1)


def printed_by(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})  # noqa: S102 - the card's own usage example
    return out.getvalue().strip()


def test_a_lora_runs_card_is_written_by_training_and_refreshed_by_eval(tiny_lora_run, tmp_path):
    from tuneforge.evaluate import evaluate_causal
    from tuneforge.generate import GenerationSettings, Generator
    from tuneforge.models.loading import load_checkpoint

    run = copied_run(tiny_lora_run, tmp_path / "lora")
    assert "No `tuneforge eval` has run on this model yet" in card_file(run.best_dir).read_text()
    assert not list(run.checkpoints_dir.glob("*/README.md"))  # PEFT's template card is not kept
    # Every reference is wrong, so the card has mistakes to show.
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [chat_row("Say apple.", "pear"), chat_row("Say river.", "lake")])
    report = evaluate_causal(run.path, heldout, name="heldout", compare_base=True, max_generate=2, max_new_tokens=8)

    card = check_card(run.best_dir, run, library="peft", tags=("causal_lm", "lora"),
                      changed=("learning_rate", "lora_config", "num_epochs", "seed", "precision"))
    tuned, base = report.results, report.results["base"]
    for metric in ("exact_match", "stop_rate"):
        assert f"| {metric} | {cell(base[metric])} | {cell(tuned[metric])} |" in card.text
    first = tuned["mistakes"][0]
    assert f"| Say apple. | pear | {cell(first['answer'])} | {first['finish_reason']} |" in card.text
    assert f"tuneforge generate {run.path} --prompt 'Say apple.'" in card.text
    # The transformers + peft example answers the first validation prompt as tuneforge does (unfolded adapter).
    loaded = load_checkpoint(run.path, needs="generates")
    generator = Generator(loaded.model, loaded.tokenizer, loaded.meta, fold_adapter=False)
    expected = generator.complete([[{"role": "user", "content": "Say apple."}]], GenerationSettings(max_new_tokens=128))
    assert printed_by(python_block(card.text)) == expected[0].text


def test_a_classifiers_card_names_its_labels_mistakes_and_predicts_as_tuneforge(tiny_classifier_run, tmp_path):
    from tuneforge.evaluate import evaluate_classifier
    from tuneforge.predict import Predictor

    run = copied_run(tiny_classifier_run, tmp_path / "tiny")
    # Labels swapped: whatever the model predicts, some rows are mistakes.
    swapped = [{"title": f"{tag} item {i}", "body": f"about {tag}", "tag": other}
               for tag, other in (("nlp", "vision"), ("vision", "nlp")) for i in range(2)]
    report = evaluate_classifier(run.path, write_csv(tmp_path / "swapped.csv", swapped), name="swapped")

    card = check_card(run.best_dir, run, library="peft", tags=("classification", "lora"),
                      changed=("task", "lora_config", "learning_rate", "valid_split", "text_fields", "label_field"))
    assert "2 labels (`nlp`, `vision`)" in card.text and "column `tag`" in card.text
    first = report.results["mistakes"][0]
    assert (f"| {first['source']} | {first['label']} | {first['predicted']} | {cell(first['confidence'])} |"
            in card.text)
    label, probability = printed_by(python_block(card.text)).split()
    sample = run.validation_samples()[0]
    prediction = Predictor.from_path(run.path).predict([f"{sample['title']} {sample['body']}"])[0]
    assert label == prediction.label and float(probability) == pytest.approx(prediction.confidence, abs=1e-5)


def test_the_bundled_models_name_their_hub_repository_and_license():
    from tuneforge.models.sources import hub_id, model_license, resolve_model

    assert hub_id("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("/models/mine") == "/models/mine"
    assert model_license("minilm-l6", resolve_model("minilm-l6")) == "apache-2.0"  # its README's front matter
    assert model_license("smollm2-135m-instruct", None) == "apache-2.0"  # the bundled GGUF's general.license
