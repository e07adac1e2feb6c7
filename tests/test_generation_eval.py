"""Judging causal runs by what they generate: eval_generate at validation, checkpoints kept by a generation
metric, constrained JSON answers, and causal `eval` with the same metrics."""

from __future__ import annotations

import json

import pytest

from tests.helpers import chat_row, write_jsonl
from tests.test_cli import tuneforge_here
from tuneforge.config import TrainConfig
from tuneforge.errors import TuneforgeError
from tuneforge.rundir import CheckpointMeta, RunDir

FACTS = [("colour of the sky", "blue"), ("opposite of hot", "cold"), ("number after two", "three"),
         ("first letter", "A"), ("capital of France", "Paris"), ("a baby cat", "kitten")]


def answer(value: str) -> str:
    return json.dumps({"answer": value, "id": 1})


def reordered(value: str) -> str:
    """The same JSON as `answer`, keys in the other order: equal when parsed, different as text."""
    return json.dumps({"id": 1, "answer": value})


def key_order_data(folder):
    """Training answers {"answer", "id"}; validation: the same facts with the keys the other way round (the rows
    generation answers), then each prompt with another fact's answer, several times over. As the model grows sure
    of the right answers, its loss on those wrong-answer rows rises: validation loss bottoms out before the model
    answers every fact right."""
    folder.mkdir(parents=True, exist_ok=True)
    wrong = [value for _, value in FACTS[1:]] + [FACTS[0][1]]
    valid = [chat_row(f"Name the {q}.", reordered(a)) for q, a in FACTS]
    valid += [chat_row(f"Name the {q}.", answer(w)) for (q, _), w in zip(FACTS, wrong, strict=True)] * 8
    return (write_jsonl(folder / "train.jsonl", [chat_row(f"Name the {q}.", answer(a)) for q, a in FACTS] * 8),
            write_jsonl(folder / "valid.jsonl", valid))


def key_order_config(tmp_path, model_dir, **overrides) -> TrainConfig:
    train_path, valid_path = key_order_data(tmp_path / "data")
    settings = dict(model_id=str(model_dir), train_path=str(train_path), valid_path=str(valid_path),
                    train_batch_size_per_device=8, eval_batch_size_per_device=8, num_epochs=12, learning_rate=2e-2,
                    lr_scheduler_type="constant", num_warmup_steps=2, max_num_checkpoints=6,
                    num_checkpoints_to_keep=1, precision="fp32", lora_config={"r": 8, "lora_alpha": 16},
                    output_dir=str(tmp_path / "runs"), run_name="json", seed=1,
                    eval_generate={"max_rows": 6, "max_new_tokens": 16}, best_metric="eval_json_exact")
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.slow  # ~30 s (a run with generation at every validation); make test keeps the scoring checks
@pytest.mark.usefixtures("ray_session")
def test_best_checkpoint_follows_json_exact_where_loss_would_keep_another(tmp_path, tiny_llama_dir):
    from tuneforge.train import train

    result = train(key_order_config(tmp_path, tiny_llama_dir))
    run = RunDir(result.run_dir)
    evals = [row for row in run.metrics() if row["type"] == "eval"]
    assert [row["step"] for row in evals] == [12, 24, 36, 48, 60, 72]
    kept = CheckpointMeta.read(run.best_dir)
    by_loss = min(evals, key=lambda row: row["eval_loss"])
    best_exact = max(row["eval_json_exact"] for row in evals)
    assert kept.metrics["eval_json_exact"] == best_exact == 1.0
    assert by_loss["eval_json_exact"] < best_exact  # loss would have kept a checkpoint that gets facts wrong
    assert kept.step != by_loss["step"]
    assert result.best_metrics["eval_json_exact"] == 1.0 and result.best_metrics["step"] == kept.step
    # Parsed equality: right answers with the keys in training's order are JSON-exact but never text-exact.
    assert all(row["eval_exact_match"] == 0.0 for row in evals)
    assert all(row["eval_stop_rate"] <= 1.0 and "eval_field_f1" in row and "eval_run_on" in row for row in evals)
    # Every event's answers are kept, one row each, with their verdicts.
    samples = [json.loads(line) for line in run.generation_samples_file.read_text().splitlines()]
    assert len(samples) == 6 * len(evals)
    last = [s for s in samples if s["step"] == kept.step]
    assert all(s["json_exact"] and not s["exact"] and s["field_errors"] == {} for s in last)
    assert json.loads(last[0]["answer"]) == json.loads(last[0]["reference"])


def test_generation_metrics_need_eval_generate_and_a_generating_task(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="unknown metric 'eval_json_exact'.*need eval_generate"):
        key_order_config(tmp_path, tiny_llama_dir, eval_generate=None)
    with pytest.raises(ValueError, match="eval_metrics: your metrics score generated answers"):
        key_order_config(tmp_path, tiny_llama_dir, eval_generate=None, best_metric="eval_loss",
                         eval_metrics=["m:f"])
    with pytest.raises(ValueError, match="eval_generate: a classification run does not generate text"):
        key_order_config(tmp_path, tiny_llama_dir, task="classification", best_metric="eval_loss")
    from tuneforge.config import validation_metrics

    config = key_order_config(tmp_path, tiny_llama_dir, target_format="text", best_metric="eval_exact_match")
    assert config.best_mode == "max" and "eval_json_exact" not in validation_metrics(config)
    assert {"eval_stop_rate", "eval_exact_match", "eval_loss"} <= set(validation_metrics(config))
    with pytest.raises(ValueError, match="unknown metric 'eval_json_exact'"):
        key_order_config(tmp_path, tiny_llama_dir, target_format="text")


def test_eval_generate_refuses_rows_without_answers_and_json_metrics_on_text_answers(tmp_path, tiny_llama_dir):
    from tuneforge.train import prepare_run

    text_rows = write_jsonl(tmp_path / "text.jsonl", [{"text": f"line {i}"} for i in range(8)])
    with pytest.raises(TuneforgeError, match="text.jsonl: eval_generate needs validation rows with an answer"):
        prepare_run(key_order_config(tmp_path, tiny_llama_dir, train_path=str(text_rows), valid_path=str(text_rows),
                                     best_metric="eval_loss"))
    prose = write_jsonl(tmp_path / "prose.jsonl", [chat_row(f"Name the {q}.", a) for q, a in FACTS])
    with pytest.raises(TuneforgeError, match="best_metric eval_json_exact scores JSON answers.*target_format: json"):
        prepare_run(key_order_config(tmp_path, tiny_llama_dir, train_path=str(prose), valid_path=str(prose)))
    with pytest.raises(TuneforgeError, match="eval_metrics.*cannot import module 'no_such_metrics'"):
        prepare_run(key_order_config(tmp_path, tiny_llama_dir, eval_metrics=["no_such_metrics:score"]))


SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["blue", "cold"]}}, "required": ["answer"],
          "additionalProperties": False}


def test_json_schema_constrains_every_answer_of_generate(tmp_path, tiny_lora_run):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": f"Say {w}."}]}
                                                       for w in ("yes", "no", "maybe")])
    result = tuneforge_here("generate", str(tiny_lora_run), "--input", str(prompts), "--json-schema", str(schema),
                            "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr + result.stdout
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3
    for row in rows:  # an untrained-for format, yet every answer is the schema's and ends by itself
        assert json.loads(row["completion"])["answer"] in ("blue", "cold") and row["finish_reason"] == "stop"


def test_a_bad_schema_is_one_line_before_any_model_loads(tmp_path, tiny_lora_run):
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object",\n "properties": {"a": {"type": "frobnicate"}}}')
    result = tuneforge_here("generate", str(tiny_lora_run), "--prompt", "hi", "--json-schema", str(broken))
    assert result.returncode == 2 and "broken.json" in result.stderr and "schema" in result.stderr
    not_json = tmp_path / "not.json"
    not_json.write_text('{"type": "object",\n oops}')
    result = tuneforge_here("generate", str(tiny_lora_run), "--prompt", "hi", "--json", "--json-schema", str(not_json))
    assert result.returncode == 2 and "not both" in result.stderr
    result = tuneforge_here("generate", str(tiny_lora_run), "--prompt", "hi", "--json-schema", str(not_json))
    assert result.returncode == 2 and "not.json:2: not valid JSON" in result.stderr


def test_causal_eval_reports_generation_metrics_mistakes_and_field_errors(tmp_path, tiny_lora_run, wide_terminal,
                                                                         monkeypatch):
    rows = write_jsonl(tmp_path / "facts.jsonl", [chat_row(f"Name the {q}.", answer(a)) for q, a in FACTS])
    monkeypatch.chdir(tmp_path)  # a user's metric module beside the data, imported from the working directory
    (tmp_path / "answer_metrics.py").write_text(
        "def longest_answer(predictions, references):\n    return max(len(p) for p in predictions)\n")
    result = tuneforge_here("eval", str(tiny_lora_run), "--data", str(rows), "--metric", "answer_metrics:no_such")
    assert result.returncode == 2 and "--metric: metric 'answer_metrics:no_such'" in result.stderr
    result = tuneforge_here("eval", str(tiny_lora_run), "--data", str(rows), "--output", str(tmp_path / "out"),
                            "--compare-base", "--max-new-tokens", "16", "--metric", "answer_metrics:longest_answer")
    assert result.returncode == 0, result.stderr + result.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["target_format"] == "json" and results["generated"] == 6
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert results["longest_answer"] == max(len(s["answer"]) for s in samples) and "longest_answer" in results["base"]
    for key in ("stop_rate", "exact_match", "json_valid", "json_exact", "field_f1", "run_on"):
        assert 0.0 <= results[key] <= 1.0 and key in results["base"]
    assert len(samples) == 6 and (tmp_path / "out" / "base_samples.jsonl").is_file()
    wrong = [s for s in samples if not s["json_exact"]]
    assert len(results["mistakes"]) == len(wrong)  # this tiny run never saw these facts: mostly mistakes
    if wrong:
        assert "first mistakes" in result.stdout and wrong[0]["prompt"] in result.stdout
        assert "JSON fields with errors" in result.stdout
        assert sum(sum(kinds.values()) for kinds in results["field_errors"].values()) >= len(wrong)
    assert "base model" in result.stdout and "fine-tuned" in result.stdout


def test_bitmask_allows_exactly_the_set_bits_and_never_a_forbidden_or_padded_id():
    import llguidance.torch
    import torch

    from tuneforge.constrain import apply_bitmask

    mask = llguidance.torch.allocate_token_bitmask(2, 100)
    mask.zero_()
    for row, ids in {0: [3, 31, 32, 63, 99], 1: [5]}.items():
        for token in ids:  # bit 31 is the int32 sign bit: the case a careless unpacking gets wrong
            word, bit = divmod(token, 32)
            value = (int(mask[row, word]) & 0xFFFFFFFF) | (1 << bit)
            mask[row, word] = value - (1 << 32) if value >= 1 << 31 else value
    masked = apply_bitmask(torch.zeros(2, 104), mask, forbidden=[63])
    assert [torch.nonzero(masked[row] == 0).flatten().tolist() for row in range(2)] == [[3, 31, 32, 99], [5]]


def test_a_search_can_optimise_a_generation_metric(tmp_path, tiny_llama_dir):
    from tuneforge.config import TuneSettings
    from tuneforge.errors import ConfigError
    from tuneforge.tune.space import check_metric
    from tuneforge.tune.tuner import objective_direction

    config = key_order_config(tmp_path, tiny_llama_dir)
    for metric, mode in (("eval_field_f1", "max"), ("eval_run_on", "min"), ("eval_json_exact", "max")):
        settings = TuneSettings(metric=metric)
        check_metric(config, settings)
        assert objective_direction(config, settings) == (metric, mode)
    assert objective_direction(config, TuneSettings()) == ("objective", "max")  # the sum of quality metrics
    with pytest.raises(ConfigError, match="unknown metric 'eval_json_exact'"):
        check_metric(key_order_config(tmp_path, tiny_llama_dir, eval_generate=None, best_metric="eval_loss"),
                     TuneSettings(metric="eval_json_exact"))
