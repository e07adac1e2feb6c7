"""Across the stages: what `train` leaves behind is what eval, generate, export and `runs` read. Tiny runs trained
by the real entry point (conftest's session runs, or a few steps here), then each later stage, mostly through the
command line, checked against what training itself recorded."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import SAY_WORDS, table_lines, table_rows, write_config
from tests.test_cli import tuneforge_here
from tuneforge.rundir import CheckpointMeta, RunDir

pytestmark = pytest.mark.usefixtures("ray_session")


def logits_of(model_dir, messages):
    """fp32 logits of a chat prompt (assistant turn opened), with the model directory's own tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


# --------------------------------------------------------------------------------------------------------------
# train -> eval / generate
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("wide_terminal")
def test_cli_eval_of_a_causal_run_reproduces_trainings_validation_loss(tiny_lora_run, tiny_chat_data):
    result = tuneforge_here("eval", str(tiny_lora_run), "--data", str(tiny_chat_data["valid"]))
    assert result.returncode == 0, result.stderr
    results_file = tiny_lora_run / "eval" / "valid" / "results.json"  # RUN/eval/<data file's name>/
    assert f"results: {results_file}" in result.stdout
    results = json.loads(results_file.read_text())
    assert results["rows"] == len(SAY_WORDS)
    # The same rows, masks and checkpoint (best/) as training's validation at its best step: the same loss.
    best = RunDir(tiny_lora_run).results()["best_metrics"]
    assert results["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-4)
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-9)
    assert 0.0 <= results["stop_rate"] <= 1.0 and 0.0 <= results["exact_match"] <= 1.0
    # The rates are those of the greedy answers it recorded beside the results, one per reference answer.
    samples = [json.loads(line) for line in (results_file.parent / "samples.jsonl").read_text().splitlines()]
    assert results["generated"] == len(samples) == len(SAY_WORDS)
    assert [sample["reference"] for sample in samples] == list(SAY_WORDS)
    assert results["target_format"] == "text" and "json_valid" not in results
    assert results["stop_rate"] == sum(s["finish_reason"] == "stop" for s in samples) / len(samples)
    assert results["exact_match"] == sum(s["answer"] == s["reference"] for s in samples) / len(samples)
    assert len(results["mistakes"]) == sum(s["answer"] != s["reference"] for s in samples)
    assert "eval loss (perplexity)" in result.stdout and f"{results['eval_loss']:.4f}" in result.stdout


def test_streamed_pieces_join_into_the_greedy_completion(tiny_lora_run):
    from tuneforge.generate import GenerationSettings, Generator

    generator = Generator.from_path(tiny_lora_run)
    settings = GenerationSettings(max_new_tokens=8)  # greedy
    prompts = [f"Say {word}." for word in SAY_WORDS]
    completions = generator.complete(prompts, settings)
    for prompt, completion in zip(prompts, completions, strict=True):
        pieces = list(generator.stream(prompt, settings))
        assert "".join(pieces).strip() == completion.text, prompt
    # the tuned answers are not the base model's: the stream above came through the adapter
    assert [c.text for c in completions] != [c.text for c in generator.complete(prompts, settings, use_base=True)]


# --------------------------------------------------------------------------------------------------------------
# train -> export (full fine-tune)
# --------------------------------------------------------------------------------------------------------------


def test_merged_export_of_a_full_fine_tune_is_the_trained_model(tiny_full_run, tiny_llama_dir):
    import torch

    from tuneforge.export import export_model
    from tuneforge.generate import prompt_of

    result = export_model(tiny_full_run, "merged")
    merged = tiny_full_run / "export" / "merged"
    assert result.report["path"] == str(merged)
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_model.safetensors").exists()
    assert (tiny_full_run / "best" / "training_state.pt").is_file()
    assert not (merged / "training_state.pt").exists()  # optimizer state is for --resume, not for users
    messages, _ = prompt_of(RunDir(tiny_full_run).validation_samples()[0], "validation sample 1")
    exported = logits_of(merged, messages)
    trained = logits_of(tiny_full_run / "best", messages)
    assert torch.equal(exported, trained)
    # ...and that model is the fine-tuned one, not the base it started from
    assert float((trained - logits_of(tiny_llama_dir, messages)).abs().max()) > 0.5
    assert CheckpointMeta.read(merged).lora is False


# --------------------------------------------------------------------------------------------------------------
# train --resume from the command line (conftest's full run is finished that way)
# --------------------------------------------------------------------------------------------------------------


def test_cli_resume_continues_an_interrupted_run_from_its_checkpoint(resumed_full_run):
    run, crashed = resumed_full_run.run, resumed_full_run.after_crash
    plan = json.loads((run / "plan.json").read_text())
    first_event = plan["event_steps"][0]
    assert plan["total_steps"] == 4 and first_event == 2
    # the library run died after its first checkpoint: failed, no results, a checkpoint to continue from
    assert crashed.state.status == "failed" and not crashed.has_results and crashed.latest_step == first_event
    cli = resumed_full_run.cli
    assert cli.returncode == 0, cli.stderr
    assert f"resuming at step {first_event}" in cli.stdout
    history = RunDir(run).metrics()
    steps = [row for row in history if row["type"] == "step"]
    assert [row["step"] for row in steps] == list(range(1, plan["total_steps"] + 1))  # no step twice, none missing
    assert [row["step"] for row in history if row["type"] == "eval"] == plan["event_steps"]
    # steps up to the checkpoint are the first attempt's; the schedule went on from there instead of restarting
    kept = [row for row in crashed.metrics if row["type"] == "step" and row["step"] <= first_event]
    assert steps[:first_event] == kept
    rates = [row["lr"] for row in steps]
    assert all(a > b for a, b in zip(rates, rates[1:])), rates  # cosine without warm-up: falls at every step
    state = RunDir(run).state()
    assert state.status == "completed" and state.resumed_from_step == first_event
    results = RunDir(run).results()
    assert results["steps"] == plan["total_steps"]
    assert CheckpointMeta.read(run / "best").step == results["best_metrics"]["step"]


# --------------------------------------------------------------------------------------------------------------
# runs list / runs best
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("wide_terminal")
def test_runs_list_shows_each_run_completed_with_its_best_metric(tiny_lora_run, tiny_full_run, tiny_runs_dir):
    result = tuneforge_here("runs", "list", str(tiny_runs_dir))
    assert result.returncode == 0, result.stderr
    listed = {cells[0]: cells[1:] for cells in table_lines(result.stdout)}
    assert set(listed) == {tiny_lora_run.name, tiny_full_run.name}, result.stdout
    for run in (tiny_lora_run, tiny_full_run):
        best_loss = RunDir(run).results()["best_metrics"]["eval_loss"]
        assert listed[run.name] == ["run", "completed", "causal_lm", f"eval_loss {best_loss:.4f}", str(run)]


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory, ray_session, tiny_llama_dir, tiny_chat_data):
    """A one-trial search (a grid of one learning rate; four steps): ROOT/runs/grid with its best_run.json. Picking
    the better of several trials is test_tune's; here it is what `runs` shows of a search that ended."""
    from tuneforge.config import load_config
    from tuneforge.tune import search

    root = tmp_path_factory.mktemp("tiny-search")
    text = (f"model_id: {tiny_llama_dir}\ntrain_path: {tiny_chat_data['train']}\n"
            f"valid_path: {tiny_chat_data['valid']}\ntrain_batch_size_per_device: 4\nnum_epochs: 1\n"
            "max_num_checkpoints: 1\nnum_warmup_steps: 0\nprecision: fp32\nseed: 1\n"
            f"lora_config: {{r: 4, lora_alpha: 8}}\noutput_dir: {root / 'runs'}\n"
            "search_space:\n  learning_rate: {grid: [2.0e-2]}\ntune:\n  experiment_name: grid\n")
    search(load_config(write_config(root / "search.yaml", text)))
    return root / "runs" / "grid"


@pytest.mark.slow  # a search of its own (~65 s); test_tune's grid search covers `runs best` in `make test`
@pytest.mark.usefixtures("wide_terminal")
def test_runs_list_and_runs_best_show_a_search_as_it_ended(tiny_search, monkeypatch):
    experiment = tiny_search
    best = json.loads((experiment / "best_run.json").read_text())
    [trial] = [path for path in experiment.iterdir() if (path / "config.yaml").is_file()]
    loss = RunDir(trial).results()["best_metrics"]["eval_loss"]
    # best_run.json names the trial and its best validation loss (the default objective of a causal run)
    assert best["run_id"] == trial.name and best["mode"] == "min" and best["objective"] == pytest.approx(loss)
    assert best["hyperparameters"] == {"learning_rate": 0.02}
    # the output directory holds the search, done, with its best trial
    result = tuneforge_here("runs", "list", str(experiment.parent))
    listed = {cells[0]: cells[1:] for cells in table_lines(result.stdout)}
    assert listed["grid"][:2] == ["search", "done, 1 trials"], result.stdout
    assert listed["grid"][3] == f"{best['metric']} {best['objective']:.4f} ({best['run_id']})"
    # the experiment holds the trial: a completed run, with the best loss its results.json has
    result = tuneforge_here("runs", "list", str(experiment))
    listed = {cells[0]: cells[1:] for cells in table_lines(result.stdout)}
    assert listed[trial.name] == ["run", "completed", "causal_lm", f"eval_loss {loss:.4f}", str(trial)], result.stdout
    # `runs best NAME` finds the experiment under ./runs and shows what best_run.json says
    monkeypatch.chdir(experiment.parent.parent)
    result = tuneforge_here("runs", "best", "grid")
    assert result.returncode == 0, result.stderr
    shown = table_rows(result.stdout)
    assert shown["trial"] == best["run_id"]
    assert shown[f"objective ({best['metric']}, {best['mode']})"] == f"{best['objective']:.4g}"
    assert shown["learning_rate"] == "0.02" and shown["checkpoint"] == best["checkpoint"]
