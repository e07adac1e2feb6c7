"""Preference tuning in the one training loop: each answer's log-probability, the reference computed once from the
model the run starts from and cached, the validation metrics, and the config's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import SAY_WORDS, write_config, write_jsonl
from tuneforge.config import load_config
from tuneforge.errors import ConfigError


def pair_row(word: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": f"Say {word}."}], "chosen": word, "rejected": rejected}


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory) -> dict:
    """Say X. -> chosen "X" (and stop), rejected: X followed by more words (a model that does not stop)."""
    folder = tmp_path_factory.mktemp("pairs")
    rows = [pair_row(word, f"{word} {word} and {SAY_WORDS[(i + 1) % 4]}") for i, word in enumerate(SAY_WORDS)]
    return {"train": write_jsonl(folder / "train.jsonl", rows * 4), "valid": write_jsonl(folder / "valid.jsonl", rows)}


def preference_config(tmp_path, model_dir, data, **keys):
    from tuneforge.config import TrainConfig

    settings = dict(task="preference", model_id=str(model_dir), train_path=str(data["train"]),
                    valid_path=str(data["valid"]), train_batch_size_per_device=4, eval_batch_size_per_device=4,
                    num_warmup_steps=0, precision="fp32", seed=1, output_dir=str(tmp_path / "runs"),
                    lora_config={"r": 4, "lora_alpha": 8}, learning_rate=1e-2, max_num_checkpoints=2)
    settings.update(keys)
    return TrainConfig(**settings)


# --- each answer's log-probability --------------------------------------------------------------------------------


def test_answer_logps_are_the_same_padded_and_end_to_end_and_equal_the_logits(tiny_llama_dir, smol_tokenizer,
                                                                               pair_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.models.preference import PreferenceObjective
    from tuneforge.models.preference_losses import PreferenceLossSettings
    from tuneforge.tasks import get_task
    from tuneforge.train.preflight import prepare_run

    prepared = prepare_run(preference_config(tmp_path, tiny_llama_dir, pair_data))
    pairs = prepared.data.train[:3]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    objective = PreferenceObjective(model, PreferenceLossSettings())
    task = get_task("preference")
    padded = task.collate(pairs, smol_tokenizer.pad_token_id, padding="longest", context_length=256, multiple_of=None)
    free = task.collate(pairs, smol_tokenizer.pad_token_id, padding="free", context_length=256, multiple_of=None)
    with torch.no_grad():
        from_padded = objective.reference_logps(padded)
        from_free = objective.reference_logps(free)
        for row, pair in enumerate(pairs):
            for column, answer in enumerate((pair.chosen, pair.rejected)):
                ids = torch.tensor(answer.input_ids)[None]
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                targets = torch.tensor(answer.input_ids[1:])
                wanted = torch.tensor(answer.target_mask[1:], dtype=torch.bool)
                expected = logprobs[torch.arange(len(targets)), targets][wanted].sum()
                assert from_padded[row, column] == pytest.approx(float(expected), abs=1e-4)
    assert torch.allclose(from_padded, from_free, atol=1e-4)
    assert objective.target_count(padded) == objective.target_count(free) == 3


# --- training from an SFT run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_run(ray_session, tiny_llama_dir, tiny_lora_run, pair_data, tmp_path_factory):
    from tuneforge.train import train

    folder = tmp_path_factory.mktemp("dpo")
    events = []

    class Recorder:
        def phase(self, message):
            pass

        def note(self, message):
            events.append({"type": "note", "message": message})

        def event(self, event):
            events.append(event)

    config = preference_config(folder, tiny_llama_dir, pair_data, init_from=str(tiny_lora_run), num_epochs=3,
                               run_name="dpo", beta=0.5)
    result = train(config, run_dir=folder / "runs" / "dpo", reporter=Recorder())
    return result, events, config, Recorder


def test_dpo_from_an_sft_run_learns_the_preference(dpo_run):
    from tuneforge.rundir import RunDir

    result, events, _, _ = dpo_run
    evals = [row for row in RunDir(result.run_dir).metrics() if row.get("type") == "eval"]
    last = evals[-1]
    assert last["eval_rewards_accuracy"] > 0.5
    assert last["eval_rewards_margin"] > 0
    assert last["eval_rewards_chosen"] > last["eval_rewards_rejected"]
    for key in ("eval_loss", "eval_logps_chosen", "eval_logps_rejected"):
        assert math.isfinite(last[key])
    assert last["eval_loss"] < math.log(2)  # below the loss of a policy equal to its reference
    assert [event["source"] for event in events if event.get("type") == "reference"] == ["computed"]
    assert RunDir(result.run_dir).state().reference_logps["source"] == "computed"


def test_the_reference_is_the_sft_run_it_started_from(dpo_run, tiny_lora_run, smol_tokenizer):
    """init_from an SFT run: the cached reference log-probs are that run's model's, not the raw base's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.models.preference import PreferenceObjective
    from tuneforge.models.preference_losses import PreferenceLossSettings
    from tuneforge.rundir import CheckpointMeta, RunDir, resolve_checkpoint
    from tuneforge.tasks import get_task
    from tuneforge.train.preflight import prepare_run
    from tuneforge.train.reference import ReferenceTable

    result, _, config, _ = dpo_run
    table = ReferenceTable.load(RunDir(result.run_dir).reference_file)
    assert table is not None and table.train.shape == (16, 2)
    best = RunDir(result.run_dir).best_dir
    assert ReferenceTable.load(best / "reference_logps.safetensors").key == table.key  # checkpoints carry it too
    sft = resolve_checkpoint(tiny_lora_run)
    base = AutoModelForCausalLM.from_pretrained(CheckpointMeta.read(sft).model_source, dtype=torch.float32)
    sft_model = PeftModel.from_pretrained(base, str(sft))
    valid = prepare_run(config).data.valid
    batch = get_task("preference").collate(valid, smol_tokenizer.pad_token_id, padding="longest",
                                            context_length=256, multiple_of=None)
    objective = PreferenceObjective(sft_model, PreferenceLossSettings())
    expected = objective.reference_logps(batch)
    assert torch.allclose(torch.from_numpy(table.valid), expected, atol=1e-4)
    with sft_model.disable_adapter():
        raw_base = objective.reference_logps(batch)
    assert not torch.allclose(raw_base, expected, atol=1e-2)


def test_the_reference_is_reused_by_the_next_run_and_changes_with_the_adapter(dpo_run, tiny_lora_run, tmp_path):
    import shutil

    from tuneforge.rundir import resolve_checkpoint
    from tuneforge.train import train
    from tuneforge.train.preflight import prepare_run
    from tuneforge.train.reference import reference_key

    result, _, config, recorder_class = dpo_run
    events = []
    recorder = recorder_class()
    recorder.event = events.append
    recorder.note = lambda message: events.append({"type": "note", "message": message})
    again = config.model_copy(update={"max_steps": 1, "run_name": "again", "output_dir": str(tmp_path)})
    train(again, run_dir=tmp_path / "again", reporter=recorder)
    assert [event["source"] for event in events if event.get("type") == "reference"] == ["reused from the cache"]

    changed = tmp_path / "changed-sft"
    shutil.copytree(resolve_checkpoint(tiny_lora_run), changed)
    adapter = changed / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes())  # same weights, rewritten: the key follows the file
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter)
    save_file({name: tensor * 1.5 for name, tensor in weights.items()}, adapter)
    key_before = reference_key(prepare_run(config))
    key_after = reference_key(prepare_run(config.model_copy(update={"init_from": str(changed)})))
    assert key_before != key_after


# --- the config's checks, one line each ---------------------------------------------------------------------------


def load(tmp_path, text: str):
    return load_config(write_config(tmp_path / "run.yaml", "model_id: m\ntrain_path: t.jsonl\n" + text))


def test_preference_keys_belong_to_the_preference_task(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml:3: beta: a setting of preference tuning; add task: preference"):
        load(tmp_path, "beta: 0.2\n")


def test_reference_free_losses_refuse_a_reference(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml:5: reference: orpo needs no reference model"):
        load(tmp_path, "task: preference\nloss_type: orpo\nreference: base\n")


def test_unknown_loss_type_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml:4: .*loss_type"):
        load(tmp_path, "task: preference\nloss_type: dpoo\n")


def test_a_key_the_loss_does_not_take_is_one_line_naming_it(tmp_path, tiny_llama_dir, pair_data):
    from tuneforge.train.preflight import prepare_run

    with pytest.raises(ConfigError, match=r"label_smoothing applies to dpo and simpo only, not loss_type 'ipo'"):
        prepare_run(preference_config(tmp_path, tiny_llama_dir, pair_data, loss_type="ipo", label_smoothing=0.1))


def test_init_from_must_be_a_run_of_the_same_base(tmp_path, tiny_llama_dir, tiny_lora_run, pair_data):
    from tuneforge.train.preflight import prepare_run

    with pytest.raises(ConfigError, match=r"init_from: .*not a tuneforge"):
        prepare_run(preference_config(tmp_path, tiny_llama_dir, pair_data, init_from=str(tmp_path)))
    other = tmp_path / "other-base"
    import shutil

    shutil.copytree(tiny_llama_dir, other)
    with pytest.raises(ConfigError, match=r"init_from: .* holds an adapter of .*set model_id"):
        prepare_run(preference_config(tmp_path, other, pair_data, init_from=str(tiny_lora_run)))
    with pytest.raises(ConfigError, match=r"init_from: .* holds a LoRA adapter; add lora_config"):
        prepare_run(preference_config(tmp_path, tiny_llama_dir, pair_data, init_from=str(tiny_lora_run),
                                      lora_config=None))


def test_resolved_config_spells_out_the_loss_defaults(tmp_path, tiny_llama_dir, pair_data):
    from tuneforge.train.preflight import prepare_run

    config = prepare_run(preference_config(tmp_path, tiny_llama_dir, pair_data)).config
    assert (config.loss_type, config.beta, config.reference) == ("dpo", 0.1, "init")
    orpo = prepare_run(preference_config(tmp_path, tiny_llama_dir, pair_data, loss_type="orpo")).config
    assert orpo.reference is None


def test_the_reference_key_follows_the_data(tmp_path, tiny_llama_dir, pair_data):
    from tuneforge.train.preflight import prepare_run
    from tuneforge.train.reference import reference_key

    config = preference_config(tmp_path, tiny_llama_dir, pair_data)
    rows = [pair_row(word, f"{word}, {word}!") for word in SAY_WORDS]
    other = write_jsonl(tmp_path / "other.jsonl", rows)
    assert reference_key(prepare_run(config)) != reference_key(prepare_run(config.model_copy(
        update={"valid_path": str(other)})))
    assert reference_key(prepare_run(config.model_copy(update={"loss_type": "simpo"}))) is None  # needs no reference


# --- the other losses, in the same loop -------------------------------------------------------------------------


@pytest.mark.slow  # ~40 s; make test keeps DPO end to end and every loss's equality with TRL
@pytest.mark.parametrize("loss_type", ["orpo", "kto"])
def test_other_losses_train_in_the_same_loop(loss_type, ray_session, tiny_llama_dir, pair_data, tmp_path):
    from tuneforge.rundir import RunDir
    from tuneforge.train import train

    config = preference_config(tmp_path, tiny_llama_dir, pair_data, loss_type=loss_type, num_epochs=3, beta=0.5,
                               run_name=loss_type)
    result = train(config, run_dir=tmp_path / loss_type)
    run = RunDir(result.run_dir)
    steps = [row for row in run.metrics() if row.get("type") == "step"]
    evals = [row for row in run.metrics() if row.get("type") == "eval"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert all(math.isfinite(row[key]) for row in evals for key in ("eval_loss", "eval_rewards_margin"))
    assert evals[-1]["eval_rewards_accuracy"] > 0.5
    assert run.reference_file.is_file() == (loss_type == "kto")  # orpo compares with no reference model


@pytest.mark.slow  # ~90 s
def test_a_search_over_beta_needs_no_preference_code_and_computes_the_reference_once(ray_session, tiny_llama_dir,
                                                                                    pair_data, tmp_path):
    from tuneforge.config import TuneSettings
    from tuneforge.rundir import RunDir
    from tuneforge.tune import search

    config = preference_config(tmp_path, tiny_llama_dir, pair_data, num_epochs=2, best_metric="eval_rewards_accuracy",
                               search_space={"beta": {"grid": [0.1, 1.0]}},
                               tune=TuneSettings(experiment_name="betas", max_concurrent_trials=1))
    result = search(config)
    trials = sorted((path for path in result.experiment_dir.iterdir() if RunDir(path).is_run()),
                    key=lambda path: RunDir(path).state().started)
    assert len(trials) == 2
    states = [RunDir(path).state().reference_logps for path in trials]
    assert len({state["key"] for state in states}) == 1  # one reference for every beta
    assert states[1]["source"] == "reused from the cache"  # the second trial starts without the reference pass
    assert sorted(load_config(RunDir(path).config_file).beta for path in trials) == [0.1, 1.0]


@pytest.mark.slow  # ~60 s
def test_two_workers_share_the_reference_pass_and_match_one_worker(ray_session, tiny_llama_dir, pair_data, tmp_path,
                                                                   monkeypatch):
    """Each worker computes the reference for its share of the rows; the gathered table equals one worker's, and the
    two runs (same global batch of pairs) train alike."""
    from tuneforge.rundir import RunDir
    from tuneforge.train import train
    from tuneforge.train.reference import ReferenceTable

    common = dict(num_epochs=2, loss_type="dpo", beta=0.5)
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home-one"))  # a cache each: both runs compute their table
    one = train(preference_config(tmp_path / "one", tiny_llama_dir, pair_data, run_name="one", **common),
                run_dir=tmp_path / "one" / "runs" / "one")
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home-two"))
    two = train(preference_config(tmp_path / "two", tiny_llama_dir, pair_data, run_name="two", num_devices=2,
                                  train_batch_size_per_device=2, worker_resources={"CPU": 1}, **common),
                run_dir=tmp_path / "two" / "runs" / "two")
    tables = [ReferenceTable.load(RunDir(result.run_dir).reference_file) for result in (one, two)]
    assert RunDir(two.run_dir).state().reference_logps["source"] == "computed"
    assert np.allclose(tables[0].train, tables[1].train, atol=1e-4) and np.allclose(tables[0].valid, tables[1].valid,
                                                                                     atol=1e-4)
    assert two.best_metrics["eval_loss"] == pytest.approx(one.best_metrics["eval_loss"], rel=5e-3)


# --- downstream: a preference run is used like an SFT run ---------------------------------------------------------


def test_a_preference_run_generates_and_its_report_shows_the_rewards(dpo_run):
    from tuneforge.generate import GenerationSettings, Generator
    from tuneforge.rundir import RunDir

    result, _, _, _ = dpo_run
    generator = Generator.from_path(result.run_dir)
    answers = generator.complete([[{"role": "user", "content": "Say cloud."}]], GenerationSettings(max_new_tokens=8))
    assert answers[0].finish_reason in ("stop", "length") and answers[0].text
    page = RunDir(result.run_dir).report_file.read_text(encoding="utf-8")
    assert "validation rewards by step" in page and "reward accuracy by step" in page


def test_a_preference_run_is_served_like_an_sft_run(dpo_run):
    from tests.helpers import LoopbackServer, http
    from tuneforge.serve import Limits, build_app, load_engines

    result, _, _, _ = dpo_run
    engines = load_engines([result.run_dir])
    with LoopbackServer(build_app(engines, limits=Limits(max_tokens=16))) as server:
        models = http("GET", f"{server.url}/v1/models").json()
        assert {model["id"] for model in models["data"]} == {result.run_dir.name, "base"}
        reply = http("POST", f"{server.url}/v1/chat/completions", json_body={
            "model": result.run_dir.name, "messages": [{"role": "user", "content": "Say stone."}], "max_tokens": 8})
        assert reply.status_code == 200
        choice = reply.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "length") and choice["message"]["content"]


def test_resume_continues_with_the_reference_the_run_started_with(dpo_run):
    """Last in this file: it trains the shared run further."""
    from tuneforge.rundir import RunDir
    from tuneforge.train import resume
    from tuneforge.train.reference import ReferenceTable

    result, _, _, recorder_class = dpo_run
    before = ReferenceTable.load(RunDir(result.run_dir).reference_file)
    events = []
    recorder = recorder_class()
    recorder.event = events.append
    resume(result.run_dir, overrides=["num_epochs=4"], reporter=recorder)
    # taken from the checkpoint, not recomputed from a model that has trained since
    assert [event["source"] for event in events if event.get("type") == "reference"] == ["reused from the checkpoint"]
    steps = [row["step"] for row in RunDir(result.run_dir).metrics() if row.get("type") == "step"]
    assert steps[-1] == 16 and len(steps) == len(set(steps))
    after = ReferenceTable.load(RunDir(result.run_dir).reference_file)
    assert after.key == before.key and (after.train == before.train).all()


def test_tune_autos_probe_times_a_preference_step(tmp_path, tiny_llama_dir, pair_data):
    """tune --auto plans on a probe of the run's own step: for DPO that step needs reference log-probs, which a run
    computes once before training and the probe computes for its own batches."""
    from tuneforge.train.preflight import prepare_run
    from tuneforge.tune.probe import measure_speed

    config = preference_config(tmp_path, tiny_llama_dir, pair_data)
    prepared = prepare_run(config)
    speed = measure_speed(prepared.config, prepared, threads=1)
    assert speed.seconds_per_step > 0
    assert all(math.isnan(pair.ref_chosen) for pair in prepared.data.train)  # the run's rows are left as they were


def test_plan_shows_the_pairs_the_loss_and_what_the_run_is_compared_with(tmp_path, tiny_llama_dir, tiny_lora_run,
                                                                          pair_data, wide_terminal):
    from tests.helpers import table_rows
    from tests.test_cli import tuneforge_here

    config = write_config(tmp_path / "prefer.yaml", (
        f"task: preference\nmodel_id: {tiny_llama_dir}\ninit_from: {tiny_lora_run}\ntrain_path: {pair_data['train']}\n"
        f"valid_path: {pair_data['valid']}\nlora_config: {{r: 4, lora_alpha: 8}}\noutput_dir: {tmp_path / 'runs'}\n"))
    result = tuneforge_here("plan", str(config))
    assert result.returncode == 0, result.stdout
    rows = table_rows(result.stdout)
    assert rows["train pairs"] == "16" and rows["valid pairs"] == "4"
    assert rows["chosen tokens p50 / p95 / max"] and rows["rejected truncated by context_length"] == "0"
    assert rows["loss"] == "dpo" and rows["beta"] == "0.1"
    assert rows["reference model"] == "the model the run starts from"
    assert rows["starts from"].startswith(str(tiny_lora_run))
