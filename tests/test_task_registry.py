"""One way in per task: a fourth task registered here, in the test, flows through config validation, `plan`,
training on Ray, `eval` and its rendering, and `serve` planning, with no other module edited."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.eval_views import EvalView
from tuneforge.taskspec import CAUSAL_LM, SPECS
from tuneforge.tasks import TASKS, get_task, register
from tuneforge.tasks.causal_lm import CausalLM

TOY_SPEC = dataclasses.replace(CAUSAL_LM, name="toy_echo", export_formats=("merged",), reads_datasets=False)


class ToyEcho(CausalLM):
    """Repeats a word: the causal task's data and loss, its own name, export formats and eval view."""

    spec = TOY_SPEC

    def eval_view(self, report):
        view = super().eval_view(report)
        return EvalView([f"toy echo: {report.results['exact_match']:.3f} echoed exactly", *view.blocks], view.notes)

    def next_step_hint(self, run_dir: Path) -> str:
        return f"echo with {run_dir}"


@pytest.fixture
def toy_task():
    task = register(ToyEcho())
    yield task
    TASKS.pop(task.name)
    SPECS.pop(task.name)


def test_an_unregistered_task_is_refused_with_the_known_ones(tiny_llama_dir, tiny_chat_data):
    from tuneforge.config import TrainConfig

    with pytest.raises(ValueError, match="unknown task 'toy_echo'.*causal_lm"):
        TrainConfig(task="toy_echo", model_id=str(tiny_llama_dir), train_path=str(tiny_chat_data["train"]))


@pytest.mark.slow  # ~32 s (its own training run); make test keeps the registry checks above
def test_a_task_registered_in_the_test_trains_evaluates_and_is_planned_for_serving(
        toy_task, ray_session, tiny_llama_dir, tiny_chat_data, tmp_path, capsys, wide_terminal):
    from tests.helpers import train_tiny_causal
    from tuneforge import ui
    from tuneforge.config import load_config
    from tuneforge.export import export_model
    from tuneforge.rundir import CheckpointMeta, RunDir, resolve_checkpoint
    from tuneforge.serve.engines import planned_models, served_ids
    from tuneforge.train import prepare_run

    result = train_tiny_causal(tiny_llama_dir, tiny_chat_data, tmp_path / "runs" / "toy", task="toy_echo",
                               num_epochs=2, learning_rate=2e-2, lora_config={"r": 4, "lora_alpha": 8})
    prepared = prepare_run(load_config(RunDir(result.run_dir).config_file))
    assert prepared.task is toy_task and prepared.plan.total_steps > 0  # plan
    assert result.results["task"] == "toy_echo"  # training, on Ray workers that never imported this test's task
    assert CheckpointMeta.read(resolve_checkpoint(result.run_dir)).task == "toy_echo"
    assert get_task(result.results["task"]).next_step_hint(result.run_dir) == f"echo with {result.run_dir}"

    report = toy_task.evaluate(result.run_dir, tiny_chat_data["valid"], output_dir=tmp_path / "eval",
                               max_new_tokens=4)
    ui.show_eval_view(toy_task.eval_view(report))  # eval rendering: the toy's own line, then the causal tables
    shown = capsys.readouterr().out
    assert "toy echo:" in shown and "exact_match" in shown

    planned = planned_models([result.run_dir])  # serving: a LoRA run that generates shares its base
    assert planned[0].task is toy_task and served_ids(planned) == ["toy", "base"]

    with pytest.raises(Exception, match="exports as merged, not gguf"):  # the toy's own export formats
        export_model(result.run_dir, "gguf")


def test_a_task_is_one_registration_away(toy_task):
    from tuneforge.taskspec import get_spec

    assert get_spec("toy_echo") is TOY_SPEC and get_task("toy_echo") is toy_task
    with pytest.raises(TuneforgeError, match="toy_echo"):  # an unknown name lists the known tasks, the toy too
        get_task("toy_echo_2")
