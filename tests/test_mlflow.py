"""MLflow beside TensorBoard (`trackers: [tensorboard, mlflow]`), read back through `MlflowClient` on the SQLite store
a run writes by default: one tiny LoRA run, crashed after its first checkpoint and resumed through the CLI, then
evaluated, is shared by most tests; a 2-trial search checks the parent and nested runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers import free_port, write_config
from tests.test_cli import assert_one_clear_line, ray_must_not_start, tuneforge_here  # noqa: F401 - a fixture
from tuneforge.config import TrainConfig, load_config
from tuneforge.errors import ConfigError
from tuneforge.rundir import ExperimentDir, RunDir


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def flattened(data: dict, prefix: str = "") -> dict[str, str]:
    """A config as the test expects its params: dotted keys, strings as they are, other values as JSON."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flattened(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def tracked_config(folder: Path, model_dir: Path, data: dict[str, Path], extra: str = "", name: str = "tracked") -> Path:
    return write_config(folder / f"{name}.yaml", (
        f"model_id: {model_dir}\ntrain_path: {data['train']}\nvalid_path: {data['valid']}\n"
        "train_batch_size_per_device: 4\neval_batch_size_per_device: 4\nnum_warmup_steps: 0\nprecision: fp32\n"
        "seed: 1\nnum_epochs: 1\nmax_num_checkpoints: 2\nlearning_rate: 2.0e-2\nlora_config: {r: 4, lora_alpha: 8}\n"
        f"output_dir: {folder / 'runs'}\ntrackers: [tensorboard, mlflow]\n{extra}"))


# --- the config ------------------------------------------------------------------------------------------------


def test_mlflow_is_off_by_default_and_its_defaults_are_resolved_into_the_config(tmp_path):
    plain = load_config(write_config(tmp_path / "plain.yaml", "model_id: m\ntrain_path: t.jsonl\n"))
    assert plain.trackers == ["tensorboard"] and plain.mlflow_tracking_uri is None and not plain.mlflow_log_model
    config = load_config(write_config(tmp_path / "meetings.yaml", "model_id: m\ntrain_path: t.jsonl\n"
                                      "output_dir: out\ntrackers: [tensorboard, mlflow]\n"))
    assert config.mlflow_tracking_uri == f"sqlite:///{Path('out').resolve()}/mlflow.db"
    assert config.mlflow_experiment == "meetings"  # the config file's name
    assert yaml.safe_load(config.to_yaml())["mlflow_experiment"] == "meetings"  # a resumed run reads it back
    relative = load_config(write_config(tmp_path / "r.yaml", "model_id: m\ntrain_path: t.jsonl\ntrackers: [mlflow]\n"
                                        "mlflow_tracking_uri: sqlite:///stores/m.db\n"))
    assert relative.mlflow_tracking_uri == f"sqlite:///{Path('stores/m.db').resolve()}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trackers: [tensorboard, wandb]\n", r"c\.yaml:3: trackers\.1: Input should be 'tensorboard' or 'mlflow'"),
        ("mlflow_experiment: demo\n", r"c\.yaml:3: mlflow_experiment: a setting of MLflow tracking, which is off; "
                                      r"add mlflow to trackers"),
    ],
)
def test_tracking_keys_are_checked_when_the_config_loads(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path / "c.yaml", "model_id: m\ntrain_path: t.jsonl\n" + text))


# --- what a run logs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked(ray_session, tmp_path_factory, tiny_llama_dir, tiny_chat_data) -> SimpleNamespace:
    """A LoRA run with MLflow on (4 steps, checkpoints at 2 and 4, best/ logged as artifacts) that crashes right
    after its first checkpoint, then `tuneforge train --resume` completes it and `tuneforge eval` scores it."""
    from ray.train import UserCallback

    from tuneforge.observe.mlflow_runs import RunRecord
    from tuneforge.train import train

    class CrashAfterFirstCheckpoint(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            raise RuntimeError("simulated crash")

    folder = tmp_path_factory.mktemp("mlflow")
    config = load_config(tracked_config(folder, tiny_llama_dir, tiny_chat_data, "mlflow_log_model: true\n"))
    run = RunDir(folder / "runs" / "tracked")
    with pytest.raises(Exception, match="simulated crash"):
        train(config, run_dir=run.path, callbacks=[CrashAfterFirstCheckpoint()])
    record = RunRecord.read(run.mlflow_file)
    client = client_for(record.tracking_uri)
    after_crash = SimpleNamespace(run_id=record.run_id, status=client.get_run(record.run_id).info.status,
                                  steps=[step for step, _ in history(client, record.run_id, "train/loss")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "400")  # a printed line stays one line, however long its paths
        resumed = tuneforge_here("train", "--resume", str(run.path))
        evaluated = tuneforge_here("eval", str(run.path), "--data", str(tiny_chat_data["valid"]), "--max-generate",
                                   "2", "--max-new-tokens", "4")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    return SimpleNamespace(run=run, record=RunRecord.read(run.mlflow_file), client=client, after_crash=after_crash,
                           resumed=resumed, evaluated=evaluated, store=folder / "runs" / "mlflow.db",
                           model=str(tiny_llama_dir))


def test_params_are_the_resolved_config(tracked):
    params = tracked.client.get_run(tracked.record.run_id).data.params
    config = yaml.safe_load(tracked.run.config_file.read_text())
    assert params == flattened(config)
    assert params["lora_config.r"] == "4" and params["context_length"] != "null"  # nested, and resolved by the plan
    assert params["mlflow_tracking_uri"] == f"sqlite:///{tracked.store}"


TIMINGS = ("train/tokens_per_second", "train/step_seconds", "eval/seconds", "eval/peak_rss_mb")


def test_metric_histories_are_metrics_jsonl_at_the_same_steps(tracked):
    """Every step once. The steps the resume trained again keep the values MLflow logged first: the same losses
    (the checkpoint restores the RNG and the data order), the first attempt's timings."""
    resumed_from = tracked.run.state().resumed_from_step
    rows = tracked.run.metrics()
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        kind = "train" if row["type"] == "step" else "eval"
        for key, value in row.items():
            if key not in ("type", "step", "time") and isinstance(value, (int, float)):
                expected.setdefault(f"{kind}/{key.removeprefix('eval_')}", []).append((row["step"], value))
    assert {"train/loss", "train/lr", "train/tokens_per_second", "eval/loss", "eval/train_loss"} <= set(expected)
    for key, values in expected.items():
        logged = history(tracked.client, tracked.record.run_id, key)
        assert [step for step, _ in logged] == [step for step, _ in values], key  # one row a step, none twice
        if key in TIMINGS:
            logged, values = [row for row in logged if row[0] <= resumed_from], [v for v in values if v[0] <= resumed_from]
        assert [value for _, value in logged] == pytest.approx([value for _, value in values]), key


def test_a_resumed_run_continues_its_own_mlflow_run(tracked):
    client, run_id = tracked.client, tracked.record.run_id
    assert tracked.after_crash.run_id == run_id and tracked.after_crash.status == "FAILED"
    # The crash came after the checkpoint of step 2; the resume trains again what followed it (the workers may
    # have run on to step 4 before Ray Train stopped them) and logs each step once.
    assert tracked.after_crash.steps[:2] == [1, 2] and tracked.run.state().resumed_from_step == 2
    assert [step for step, _ in history(client, run_id, "train/loss")] == [1, 2, 3, 4]
    experiment = client.get_experiment_by_name("tracked")  # the config file's name
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # no second run
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.info.run_name == "tracked"
    assert finished.data.tags["task"] == "causal_lm" and finished.data.tags["model"] == tracked.model
    assert finished.data.tags["run_dir"] == str(tracked.run.path.resolve())
    assert finished.data.tags["tuneforge_version"]
    assert f"mlflow ui --backend-store-uri sqlite:///{tracked.store}" in tracked.resumed.stdout


def test_the_runs_files_and_with_mlflow_log_model_its_weights_are_artifacts(tracked):
    client, run_id = tracked.client, tracked.record.run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "plan.json", "lr_schedule.png", "report.html", "results.json", "best"} <= names
    assert "best/adapter_model.safetensors" in {a.path for a in client.list_artifacts(run_id, "best")}
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(tracked.store.parent / "mlartifacts")  # beside the store, not in ./mlruns
    logged = json.loads((artifacts / "results.json").read_text())
    assert logged == tracked.run.results()


def test_eval_scores_land_on_the_runs_mlflow_run_at_the_checkpoints_step(tracked):
    results = json.loads(tracked.run.eval_dir("valid").joinpath("results.json").read_text())
    step = tracked.run.results()["best_metrics"]["step"]
    client, run_id = tracked.client, tracked.record.run_id
    assert history(client, run_id, "eval.valid/loss") == [(step, pytest.approx(results["eval_loss"]))]
    assert history(client, run_id, "eval.valid/exact_match") == [(step, results["exact_match"])]
    assert "eval/valid/results.json" in {a.path for a in client.list_artifacts(run_id, "eval/valid")}
    assert f"scores added to run {run_id} at step {step}" in tracked.evaluated.stdout
    assert client.get_run(run_id).info.status == "FINISHED"  # eval adds to the run, it does not reopen it


# --- a restart's rewind, without Ray ----------------------------------------------------------------------------


def test_steps_trained_again_after_a_restart_are_not_logged_twice(tmp_path):
    """metrics.jsonl drops what was logged after the checkpoint a restart continues from; MLflow cannot delete, so
    it keeps what it first logged for those steps and skips them the second time."""
    from tuneforge.observe.mlflow_runs import RunRecord
    from tuneforge.train.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = TrainConfig(model_id="m", train_path="t.jsonl", trackers=["mlflow"], mlflow_tracking_uri=uri,
                         mlflow_experiment="unit")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text(config.to_yaml())
    tracker = Tracker(run, None, config)

    def step(n: int, loss: float) -> dict:
        return {"type": "step", "step": n, "loss": loss, "lr": 0.1, "time": 1000.0 + n}

    for n in (1, 2, 3, 4):
        tracker.record(step(n, 10.0 + n))
    tracker.record({"type": "start", "step": 2})  # the workers restarted from the checkpoint of step 2
    for n in (3, 4, 5):
        tracker.record(step(n, 20.0 + n))
    tracker.close()
    tracker.finish("FINISHED")
    assert [(row["step"], row["loss"]) for row in run.metrics()] == [(1, 11), (2, 12), (3, 23), (4, 24), (5, 25)]
    run_id = RunRecord.read(run.mlflow_file).run_id
    assert history(client_for(uri), run_id, "train/loss") == [(1, 11), (2, 12), (3, 13), (4, 14), (5, 25)]
    assert not run.tensorboard_dir.exists()  # trackers: [mlflow] leaves TensorBoard out


# --- a search -----------------------------------------------------------------------------------------------------


def check_search_in_mlflow(result, store: Path, experiment_name: str, learning_rates: list[float]) -> None:
    """A search is one parent run with a nested run per trial (called by test_tune's grid search, which tracks to
    MLflow, so make test runs one search, not two)."""
    experiment = ExperimentDir(result.experiment_dir)
    client = client_for(f"sqlite:///{store.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 3 and len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == experiment.path.name and parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["search_space.learning_rate.grid"]) == learning_rates
    assert parent.data.metrics["best/objective"] == pytest.approx(result.best["objective"])
    assert parent.data.tags["best_trial"] == result.best["run_id"]
    assert {"trials.csv", "best_run.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(t.name for t in experiment.trial_runs())
    assert sorted(float(r.data.params["learning_rate"]) for r in children) == sorted(learning_rates)
    for child in children:
        trial = experiment.trial(child.info.run_name)
        assert child.info.status == "FINISHED"
        evals = [row for row in trial.metrics() if row["type"] == "eval"]
        assert history(client, child.info.run_id, "eval/loss") == [(row["step"], pytest.approx(row["eval_loss"]))
                                                                   for row in evals]
        assert "best" not in {a.path for a in client.list_artifacts(child.info.run_id)}  # mlflow_log_model is off


# --- refused before anything starts ---------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_must_not_start")
def test_a_tracking_server_that_does_not_answer_is_one_line_before_ray_starts(tmp_path, tiny_llama_dir, tiny_chat_data):
    uri = f"http://127.0.0.1:{free_port()}"
    path = tracked_config(tmp_path, tiny_llama_dir, tiny_chat_data, f"mlflow_tracking_uri: {uri}\n")
    result = tuneforge_here("train", str(path))
    assert_one_clear_line(result, f"{path}:15: the MLflow tracking server {uri} does not answer",
                          "fix mlflow_tracking_uri")
    assert not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("ray_must_not_start")
def test_mlflow_without_the_package_is_one_line_naming_the_extra(tmp_path, tiny_llama_dir, tiny_chat_data, monkeypatch):
    monkeypatch.setattr("tuneforge.observe.mlflow_runs.installed", lambda: False)
    path = tracked_config(tmp_path, tiny_llama_dir, tiny_chat_data)
    assert_one_clear_line(tuneforge_here("train", str(path)), f"{path}:14: trackers names mlflow",
                          "pip install 'tuneforge[mlflow]'")
