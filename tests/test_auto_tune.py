"""tune --auto: the search it builds per task, the budget it keeps, and its refusals; schema inference and
generation constrained to the inferred schema."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import chat_row, write_config, write_jsonl
from tuneforge.config import load_config
from tuneforge.data.schema import infer_answer_schema
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.tune.auto import Speed, parse_duration, plan_auto_search

CITIES = ["Oslo", "Lima", "Pune", "Kyiv", "Accra", "Quito", "Hanoi", "Dakar"]


def json_rows(count: int) -> list[dict]:
    rows = []
    for i in range(count):
        city = CITIES[i % len(CITIES)]
        answer = {"city": city, "people": i % 5 + 2}
        rows.append(chat_row(f"Meet in {city} with {i % 5 + 2} people.", json.dumps(answer), system="Extract JSON."))
    return rows


def auto_config(tmp_path: Path, model_dir: Path, extra: str = "", *, rows: list[dict] | None = None):
    rows = rows or json_rows(32)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[:8])
    text = (f"model_id: {model_dir}\ntrain_path: {train}\nvalid_path: {valid}\ntrain_batch_size_per_device: 8\n"
            f"num_epochs: 3\nlearning_rate: 2.0e-4\nprecision: fp32\nseed: 1\nlora_config: {{r: 8, lora_alpha: 16}}\n"
            f"output_dir: {tmp_path / 'runs'}\n" + extra)
    return write_config(tmp_path / "auto.yaml", text)


FAST = Speed(seconds_per_step=0.5, event_seconds=5.0, steps_per_epoch=50, device="cpu", threads=2,
             model_parameters=135_000_000, memory_bytes=24 * 2**30)


def prepared_for(config):
    from tuneforge.train import prepare_run

    return prepare_run(config)


# --------------------------------------------------------------------------------------------------------------
# The search it builds
# --------------------------------------------------------------------------------------------------------------


def test_json_targets_are_searched_on_json_exact_with_generation_on(tmp_path, tiny_llama_dir):
    config = load_config(auto_config(tmp_path, tiny_llama_dir))
    plan = plan_auto_search(config, 1800, prepared_for(config), speed=FAST)
    searched = plan.config
    assert plan.metric == "eval_json_exact"
    assert searched.tune.metric == "eval_json_exact" and searched.tune.mode == "max"
    assert searched.best_metric == "eval_json_exact"
    assert searched.eval_generate is not None and searched.eval_generate.max_rows == 64
    space = searched.search_space
    assert space["learning_rate"] == {"loguniform": [1.0e-4, 3.0e-3]}
    assert space["lora_config.r"] == {"choice": [8, 16, 32]}
    low, high = space["num_epochs"]["randint"]
    assert 1 <= low < high - 1  # a range, at least 100 steps at its low end: 50 steps per epoch -> 2
    assert low == 2
    assert searched.tune.search_alg == "optuna" and searched.tune.scheduler == "asha"
    assert searched.tune.grace_period >= 1 and searched.tune.lora_alpha_ratio == 2.0
    assert searched.tune.points_to_evaluate == [{"learning_rate": 1.0e-3, "lora_config.r": 16,
                                                 "num_epochs": high - 1}]
    shown = {row[0]: row for row in plan.rows()}
    assert "log-uniform" in shown["learning_rate"][1] and shown["learning_rate"][2]  # every range says why
    assert "s/step" in shown["probe"][1] and "full trials" in shown["budget"][1]


def test_lora_against_full_fine_tuning_is_searched_where_the_budget_and_memory_allow(tmp_path, tiny_llama_dir):
    from tuneforge.tune.space import trial_params

    config = load_config(auto_config(tmp_path, tiny_llama_dir))
    prepared = prepared_for(config)
    small = plan_auto_search(config, 1800, prepared, speed=FAST)
    assert "fine_tuning" not in small.config.search_space
    assert any("not searched, the budget holds" in note for note in small.notes)
    large = plan_auto_search(config, 6 * 3600, prepared, speed=FAST)
    assert large.config.search_space["fine_tuning"] == {"choice": ["lora", "full"]}
    assert large.config.tune.full_learning_rate_ratio == 0.1
    assert large.config.tune.points_to_evaluate[0]["fine_tuning"] == "lora"
    tight = Speed(**{**vars(FAST), "memory_bytes": 2 * 2**30})
    assert any("needs ~4.0 GiB and the device has 2.0" in note
               for note in plan_auto_search(config, 6 * 3600, prepared, speed=tight).notes)
    # What a trial's config becomes: full drops the adapter and takes a tenth of the rate; LoRA ties alpha to r.
    rules = {"lora_alpha_ratio": 2.0, "full_learning_rate_ratio": 0.1}
    assert trial_params({"fine_tuning": "full", "learning_rate": 1e-3, "lora_config.r": 16}, **rules) == {
        "learning_rate": 1e-4, "lora_config": None}
    assert trial_params({"fine_tuning": "lora", "learning_rate": 1e-3, "lora_config.r": 16}, **rules) == {
        "learning_rate": 1e-3, "lora_config.r": 16, "lora_config.lora_alpha": 32}


def test_full_fine_tuning_gets_its_own_learning_rates(tmp_path, tiny_llama_dir):
    path = auto_config(tmp_path, tiny_llama_dir)
    config = load_config(path, ["lora_config=null"])
    plan = plan_auto_search(config, 1800, prepared_for(config), speed=FAST)
    assert plan.config.search_space["learning_rate"] == {"loguniform": [5.0e-6, 2.0e-4]}
    assert "lora_config.r" not in plan.config.search_space


def test_text_targets_are_searched_on_exact_match(tmp_path, tiny_llama_dir):
    rows = [chat_row(f"Say {w}.", w) for w in ["red", "green", "blue", "cyan"]] * 8
    config = load_config(auto_config(tmp_path, tiny_llama_dir, rows=rows))
    plan = plan_auto_search(config, 1800, prepared_for(config), speed=FAST)
    assert plan.metric == "eval_exact_match"


def test_classification_is_searched_on_weighted_f1_and_full_fine_tuning_on_its_rates(tmp_path):
    from tests.helpers import config_for, rows, write_csv

    path = write_csv(tmp_path / "train.csv", rows({"nlp": 12, "vision": 12}))
    config = config_for(path, num_epochs=2)
    plan = plan_auto_search(config, 1800, prepared_for(config), speed=FAST)
    assert plan.metric == "eval_f1" and "weighted" in plan.metric_reason
    assert plan.config.eval_generate is None
    assert plan.config.search_space["learning_rate"] == {"loguniform": [5.0e-6, 2.0e-4]}


def test_tagging_is_searched_on_entity_f1(tmp_path):
    from tests.test_token_task import SENTENCE, config_for

    train = write_jsonl(tmp_path / "t.jsonl", [SENTENCE] * 16)
    valid = write_jsonl(tmp_path / "v.jsonl", [SENTENCE] * 2)
    config = config_for(train, valid)  # full fine-tuning, as configs/entities.yaml
    plan = plan_auto_search(config, 1800, prepared_for(config), speed=FAST)
    assert plan.metric == "eval_f1" and "entities" in plan.metric_reason
    assert plan.config.search_space["learning_rate"] == {"loguniform": [5.0e-6, 2.0e-4]}
    assert any("the config fine-tunes fully" in note for note in plan.notes)


def test_user_space_is_kept_and_set_keys_stay_fixed(tmp_path, tiny_llama_dir):
    path = auto_config(tmp_path, tiny_llama_dir, "search_space:\n  lora_config.lora_dropout: {choice: [0.0, 0.1]}\n"
                                                 "  learning_rate: {loguniform: [1.0e-4, 1.0e-3]}\n")
    config = load_config(path, ["num_epochs=2"])
    plan = plan_auto_search(config, 1800, prepared_for(config), speed=FAST)
    space = plan.config.search_space
    assert space["learning_rate"] == {"loguniform": [1.0e-4, 1.0e-3]}  # the user's range, not --auto's
    assert space["lora_config.lora_dropout"] == {"choice": [0.0, 0.1]}
    assert "lora_config.r" in space  # completed with what the user did not give
    assert "num_epochs" not in space and plan.config.num_epochs == 2  # --set fixes it
    assert any("num_epochs fixed at 2" in note for note in plan.notes)


def test_budget_too_small_for_one_validation_event_is_one_line(tmp_path, tiny_llama_dir):
    config = load_config(auto_config(tmp_path, tiny_llama_dir))
    slow = Speed(seconds_per_step=10.0, event_seconds=30.0, steps_per_epoch=50, device="cpu", threads=2)
    with pytest.raises(ConfigError, match=r"--budget 5 min 00 s is too small: one trial needs ~550 s .*--budget 28m"):
        plan_auto_search(config, 300, prepared_for(config), speed=slow)


def test_plain_text_rows_have_no_quality_metric(tmp_path, tiny_llama_dir):
    rows = [{"text": f"line {i}"} for i in range(16)]
    config = load_config(auto_config(tmp_path, tiny_llama_dir, rows=rows))
    with pytest.raises(ConfigError, match="no answers to compare with"):
        plan_auto_search(config, 1800, prepared_for(config), speed=FAST)


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("600", 600)])
def test_budget_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_budget_is_refused():
    with pytest.raises(ConfigError, match="expected a duration such as 30m"):
        parse_duration("half an hour")


def test_cli_refusals_are_one_line_before_ray(tmp_path, tiny_llama_dir):
    import ray

    from tests.test_cli import assert_one_clear_line, tuneforge_here

    path = auto_config(tmp_path, tiny_llama_dir)
    assert_one_clear_line(tuneforge_here("tune", "--resume", str(tmp_path), "--auto"), "drop --auto")
    assert_one_clear_line(tuneforge_here("tune", str(path), "--budget", "10m"), "add --auto")
    assert_one_clear_line(tuneforge_here("tune", str(path), "--auto", "--budget", "1s"), "too small",
                          "to reach its first validation event")
    assert not ray.is_initialized()


# --------------------------------------------------------------------------------------------------------------
# A real search within a budget
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~50 s (a real search); make test keeps the plan checks above and the grid search in test_tune
def test_a_tiny_auto_search_keeps_its_budget(tmp_path, tiny_llama_dir, ray_session):
    from tuneforge.generate import Generator
    from tuneforge.rundir import RunDir
    from tuneforge.tune import search

    class Display:
        def __init__(self):
            self.plan, self.started = None, []

        def auto_plan(self, plan):
            self.plan = plan

        def note(self, message):
            pass

        def expect(self, trials):
            pass

        def trial_result(self, trial_id, result):
            if result.get("training_iteration") == 1:
                self.started.append(time.time())

        def trial_done(self, trial_id, status):
            pass

    config = load_config(auto_config(tmp_path, tiny_llama_dir, rows=json_rows(64)))
    display = Display()
    budget = 60
    started = time.time()
    result = search(config, display=display, auto=True, budget_s=budget)
    elapsed = time.time() - started
    plan = display.plan
    gap = plan.speed.steps_per_epoch * plan.speed.seconds_per_step + plan.speed.event_seconds
    assert elapsed <= budget + gap + 30, f"search took {elapsed:.0f} s for a {budget} s budget"
    assert len(result.trials) >= 2
    search_info = json.loads((result.experiment_dir / "search.json").read_text())
    assert search_info["auto"]["budget_s"] == budget and search_info["metric"] == "eval_json_exact"
    best = RunDir(result.experiment_dir / result.best["run_id"])
    assert best.best_dir.is_dir(), "the best trial is a run with best/"
    generator = Generator.from_path(best.path)
    assert generator.meta.answer_schema["required"] == ["city", "people"]
    deadline = started + budget
    for trial in result.trials:
        run = RunDir(trial["run_dir"])
        saved = load_config(run.config_file)
        assert saved.lora_config["lora_alpha"] == 2 * saved.lora_config["r"]  # lora_alpha = 2r in every trial
        assert datetime.fromisoformat(run.state().created).timestamp() < deadline, f"{run.name} started late"
    from tuneforge.report import write_report

    page = write_report([result.experiment_dir]).read_text(encoding="utf-8")
    assert "The search --auto built" in page and "log-uniform" in page


# --------------------------------------------------------------------------------------------------------------
# The answer schema
# --------------------------------------------------------------------------------------------------------------


def test_schema_of_nested_objects_arrays_and_optional_keys():
    targets = [json.dumps({"meetings": [{"city": "Oslo", "day": 3}], "note": "x"}),
               json.dumps({"meetings": [{"city": "Lima", "day": 4, "room": "A"}, {"city": "Pune", "day": 1}]}),
               json.dumps({"meetings": []})]
    inferred = infer_answer_schema(targets)
    schema = inferred.schema
    assert schema["type"] == "object" and schema["required"] == ["meetings"]
    assert schema["additionalProperties"] is False
    items = schema["properties"]["meetings"]["items"]
    assert items["required"] == ["city", "day"] and items["properties"]["day"] == {"type": "integer"}
    assert any("note missing from some targets" in note for note in inferred.notes)
    assert any("meetings[].room" in note for note in inferred.notes)
    jsonschema = pytest.importorskip("jsonschema")
    for target in targets:
        jsonschema.validate(json.loads(target), schema)


def test_mixed_types_are_loosened_and_said():
    inferred = infer_answer_schema([json.dumps({"n": 3}), json.dumps({"n": "three"}), json.dumps({"n": None}),
                                    json.dumps({"n": 2.5})])
    n = inferred.schema["properties"]["n"]
    assert n == {"anyOf": [{"type": ["string", "number"]}, {"type": "null"}]}
    assert any("n mixes string, number" in note for note in inferred.notes)


def test_enums_only_for_keys_with_few_repeated_values():
    targets = [json.dumps({"unit": ["kg", "g"][i % 2], "name": f"item{i}"}) for i in range(12)]
    properties = infer_answer_schema(targets).schema["properties"]
    assert properties["unit"] == {"type": "string", "enum": ["g", "kg"]}
    assert properties["name"] == {"type": "string"}


def test_targets_not_all_objects_give_no_schema_and_say_why():
    inferred = infer_answer_schema([json.dumps({"a": 1}), "plain words", json.dumps([1, 2])])
    assert inferred.schema is None
    assert "2 of 3 training targets are not JSON objects" in inferred.notes[0]
    assert "target 2, is not JSON" in inferred.notes[0]
    assert infer_answer_schema(["free text", "more text"]).notes == []  # text answers: nothing to say


def test_constrain_schema_needs_a_schema():
    from tuneforge.constrain import constraint_for

    with pytest.raises(TuneforgeError, match="runs/x has no answer schema"):
        constraint_for(run_schema=True, answer_schema=None, source="runs/x")
    with pytest.raises(TuneforgeError, match="not both --json and --constrain schema"):
        constraint_for(any_json=True, run_schema=True, answer_schema={"type": "object"})


def test_validation_constrained_to_a_schema_the_targets_do_not_give_is_refused(tmp_path, tiny_llama_dir):
    rows = [chat_row(f"Say {w}.", w) for w in ["red", "green", "blue", "cyan"]] * 4
    path = auto_config(tmp_path, tiny_llama_dir, "eval_generate: {max_rows: 4, constrain: schema}\n", rows=rows)
    with pytest.raises(ConfigError, match=r"auto\.yaml:\d+: eval_generate: .* has no answer schema"):
        prepared_for(load_config(path))


def test_generation_constrained_to_the_inferred_schema_validates(tmp_path, tiny_llama_dir, ray_session):
    """A barely trained tiny model, constrained to the schema its targets gave: every answer validates."""
    jsonschema = pytest.importorskip("jsonschema")
    from tests.helpers import train_tiny_causal
    from tuneforge.constrain import constraint_for
    from tuneforge.generate import GenerationSettings, Generator

    rows = json_rows(32)  # 8 cities, 4 times each: an enum
    data = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "valid": write_jsonl(tmp_path / "valid.jsonl", rows[:4])}
    result = train_tiny_causal(tiny_llama_dir, data, tmp_path / "run", num_epochs=2, learning_rate=1e-2,
                               max_num_checkpoints=1, lora_config={"r": 4, "lora_alpha": 8})
    generator = Generator.from_path(result.run_dir)
    schema = generator.meta.answer_schema
    assert schema["properties"]["people"] == {"type": "integer"}
    assert schema["properties"]["city"] == {"type": "string", "enum": sorted(CITIES)}
    constraint = constraint_for(run_schema=True, answer_schema=schema)
    prompts = [row["messages"][:-1] for row in rows[:6]]
    completions = generator.complete(prompts, GenerationSettings(max_new_tokens=48), constraint=constraint)
    for completion in completions:
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), schema)

    # The same schema by name through the OpenAI API, as the official client sends it.
    openai = pytest.importorskip("openai")
    from tests.helpers import LoopbackServer
    from tuneforge.serve import Limits, build_app, load_engines

    with LoopbackServer(build_app(load_engines([result.run_dir]), limits=Limits(max_tokens=64))) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=result.run_dir.name, messages=prompts[0], max_tokens=48,
            response_format={"type": "json_schema", "json_schema": {"name": "answer_schema"}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
