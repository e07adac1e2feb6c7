"""Standard benchmarks through lm-evaluation-harness: in-process on a run (`tuneforge eval --lm-eval`), and through
`tuneforge serve` with lm-eval's own `local-completions` client — which needs echo + prompt logprobs, token-id
prompts and the tokenizer endpoints, and scores at chance on servers that get one of them wrong. Both on our own
multiple-choice task (tests/lm_eval/, local data: this machine has no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import LoopbackServer

pytest.importorskip("lm_eval")

TASK_YAML = Path(__file__).parent / "lm_eval" / "everyday_mc.yaml"
TASK = "tuneforge_everyday_mc"


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    from tuneforge.benchmarks import task_manager

    names, manager = task_manager([str(TASK_YAML)], tmp_path_factory.mktemp("lm-eval-tasks"))
    assert names == [TASK]
    return manager


def per_document(output: dict) -> list[list[float]]:
    """Each document's loglikelihood of each choice, in document order."""
    samples = sorted(output["samples"][TASK], key=lambda sample: sample["doc_id"])
    return [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]


def evaluate(lm, task_manager, model_args: dict | None = None) -> dict:
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, model_args=model_args, tasks=[TASK], task_manager=task_manager,
                           log_samples=True, bootstrap_iters=0, verbosity="ERROR")


def local_completions(task_manager, url: str, model: str) -> dict:
    return evaluate("local-completions", task_manager, {"base_url": f"{url}/v1/completions", "model": model,
                                                         "num_concurrent": 1, "max_retries": 1, "batch_size": 4})


@pytest.fixture(scope="module")
def in_process(tiny_lora_run, task_manager):
    from tuneforge.benchmarks import hf_model
    from tuneforge.models.loading import load_checkpoint

    return evaluate(hf_model(load_checkpoint(tiny_lora_run, needs="generates"), batch_size=4), task_manager)


def test_local_completions_through_tuneforge_serve_scores_as_lm_evals_own_hf_model(tiny_lora_run, task_manager,
                                                                                   in_process):
    from tuneforge.serve import build_app, load_engines

    engines = load_engines([tiny_lora_run])
    engines.causal[tiny_lora_run.name].generator.pack_bf16 = False  # fp32, as the in-process model
    with LoopbackServer(build_app(engines)) as server:
        served = local_completions(task_manager, server.url, tiny_lora_run.name)
    assert served["results"][TASK]["acc,none"] == in_process["results"][TASK]["acc,none"]
    assert served["results"][TASK]["acc_norm,none"] == in_process["results"][TASK]["acc_norm,none"]
    assert per_document(served) == [pytest.approx(row, abs=1e-4) for row in per_document(in_process)]
    assert len(per_document(served)) == 16


@pytest.mark.slow  # ~25 s (a Q8_0 export, llama.cpp serving); make test keeps the fp32 torch comparison
def test_a_q8_gguf_served_through_llama_cpp_scores_within_a_point(tiny_lora_run, task_manager, in_process):
    pytest.importorskip("llama_cpp")
    from tuneforge.export import ExportSettings, export_model
    from tuneforge.serve import build_app, load_engines

    gguf = tiny_lora_run / "export" / "model-q8_0.gguf"
    if not gguf.exists():
        export_model(tiny_lora_run, "gguf", ExportSettings(quant="q8_0", prompts=2, max_new_tokens=4))
    engines = load_engines([gguf], threads=1)
    model_id = next(iter(engines.causal))
    try:
        with LoopbackServer(build_app(engines)) as server:
            served = local_completions(task_manager, server.url, model_id)
    finally:
        engines.close()
    for metric in ("acc,none", "acc_norm,none"):
        assert abs(served["results"][TASK][metric] - in_process["results"][TASK][metric]) <= 0.01
    # every choice's loglikelihood close to the fp32 model's (Q8_0 rounds the weights, not the scoring)
    assert per_document(served) == [pytest.approx(row, rel=0.02) for row in per_document(in_process)]


def test_tuneforge_eval_lm_eval_compares_with_the_base_and_keeps_the_results(tiny_lora_run, tmp_path, in_process):
    from tests.test_cli import tuneforge_here

    out = tmp_path / "bench"
    result = tuneforge_here("eval", str(tiny_lora_run), "--lm-eval", str(TASK_YAML), "--compare-base",
                            "--output", str(out), "--batch-size", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lm-eval" in result.stdout and "base model" in result.stdout and "change" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results[f"{TASK}/acc"] == pytest.approx(in_process["results"][TASK]["acc,none"])
    assert results[f"{TASK}/documents"] == 16
    assert set(results["base"]) == {key for key in results if key.startswith(f"{TASK}/")}
    assert results["lm_eval"]["results"][TASK]["acc,none"] == results[f"{TASK}/acc"]
    copied = out / "lm_eval_tasks" / TASK_YAML.name  # the task as run: its data path made absolute
    assert str(TASK_YAML.parent / "everyday_mc.jsonl") in copied.read_text()


def test_lm_eval_mistakes_are_one_line_before_any_model_loads(tiny_lora_run, tmp_path):
    from tests.test_cli import assert_one_clear_line, tuneforge_here

    unknown = tuneforge_here("eval", str(tiny_lora_run), "--lm-eval", "tuneforge_everyday_mcq", "--output",
                             str(tmp_path / "x"))
    assert unknown.returncode != 0 and "no task 'tuneforge_everyday_mcq'" in unknown.stderr
    both = tuneforge_here("eval", str(tiny_lora_run), "--lm-eval", str(TASK_YAML), "--data", str(TASK_YAML))
    assert_one_clear_line(both, "run them one at a time")
    missing = tuneforge_here("eval", str(tiny_lora_run), "--lm-eval", str(tmp_path / "nope.yaml"))
    assert_one_clear_line(missing, "no such task YAML")
    neither = tuneforge_here("eval", str(tiny_lora_run))
    assert_one_clear_line(neither, "--data FILE", "--lm-eval")


def test_benchmark_scores_reach_the_runs_model_card(tiny_lora_run, tmp_path, in_process):
    import shutil

    from huggingface_hub import ModelCard

    from tuneforge.benchmarks import evaluate_benchmarks

    run = shutil.copytree(tiny_lora_run, tmp_path / "lora")
    evaluate_benchmarks(run, [str(TASK_YAML)], batch_size=4)
    card = ModelCard.load(run / "best" / "README.md")
    found = {(result.dataset_type, result.metric_type): result.metric_value for result in card.data.eval_results
             if result.source_name == "lm-evaluation-harness"}
    assert found == {(TASK, "acc"): pytest.approx(in_process["results"][TASK]["acc,none"]),
                     (TASK, "acc_norm"): pytest.approx(in_process["results"][TASK]["acc_norm,none"])}
    assert "lm-evaluation-harness" in card.text and "tuneforge_everyday_mc 16" in card.text
