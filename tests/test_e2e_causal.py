"""End to end on the bundled SmolLM2-135M: a short LoRA run on the demo data, then generation from the run."""

from __future__ import annotations

import json

import pytest

from tests.helpers import write_jsonl
from tuneforge.config import load_config
from tuneforge.generate import GenerationSettings, Generator, read_prompt_rows
from tuneforge.train import train

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("ray_session")]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, smol_dir):
    """Ten LoRA steps on 80 demo rows: enough for the model to answer with one JSON object and stop."""
    folder = tmp_path_factory.mktemp("demo")
    rows = open("data/demo/meetings_train.jsonl", encoding="utf-8").read().splitlines()[:80]
    train_path = write_jsonl(folder / "train.jsonl", rows)
    config = load_config("configs/demo.yaml", [
        f"train_path={train_path}", "valid_path=data/demo/meetings_valid.jsonl", "num_epochs=1",
        "max_num_checkpoints=1", f"output_dir={folder}", "run_name=demo", "eval_batch_size_per_device=24",
        "learning_rate=6e-4", "num_warmup_steps=2", "eval_generate.max_rows=8",
    ])
    return train(config)


def test_fine_tuned_model_answers_in_the_trained_format_and_stops_by_itself(demo_run):
    generator = Generator.from_path(demo_run.run_dir)
    pairs = read_prompt_rows("data/demo/meetings_valid.jsonl")[:4]
    settings = GenerationSettings(max_new_tokens=60, batch_size=4)
    tuned = generator.complete([prompt for prompt, _ in pairs], settings)
    base = generator.complete([prompt for prompt, _ in pairs], settings, use_base=True)
    assert all(c.finish_reason == "stop" for c in tuned), [c.text for c in tuned]
    for completion, (_, row) in zip(tuned, pairs):
        answer = json.loads(completion.text)
        assert set(answer) == {"person", "city", "date", "topic"}
        assert answer["person"] == json.loads(row["reference"])["person"]
    # The same prompts through the base model (adapter off) ramble on instead.
    assert not all(c.finish_reason == "stop" and c.text.startswith("{") for c in base)


def test_validation_loss_fell_and_the_run_recorded_it(demo_run):
    evals = [json.loads(line) for line in (demo_run.run_dir / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    steps = [json.loads(line) for line in (demo_run.run_dir / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line and '"type": "step"' in line]
    assert evals[-1]["eval_loss"] < 0.5 * steps[0]["loss"]
    assert demo_run.results["tokens_per_second"] > 0
    # The demo config also has the model answer validation requests at the event: the bundled model, ten steps in,
    # already answers in JSON and stops; each answer is kept with its verdicts.
    assert evals[-1]["eval_stop_rate"] >= 0.75 and evals[-1]["eval_json_valid"] >= 0.75
    samples = (demo_run.run_dir / "eval_samples.jsonl").read_text().splitlines()
    assert len(samples) == 8 and all(json.loads(line)["step"] == evals[-1]["step"] for line in samples)
    assert demo_run.best_metrics["eval_json_exact"] == evals[-1]["eval_json_exact"]
