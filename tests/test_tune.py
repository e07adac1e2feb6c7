"""Hyperparameter search: validation and resource planning (unit), then real searches on a tiny model."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import chat_row, write_config, write_jsonl
from tuneforge.config import TrainConfig, TuneSettings, load_config
from tuneforge.errors import ConfigError
from tuneforge.metrics import default_objective
from tuneforge.tune import read_best_run, search, validate_search
from tuneforge.tune.resources import plan_resources
from tuneforge.tune.results import best_kept_checkpoint, summarize
from tuneforge.tune.space import SpaceSpec, dotted, parse_spec, with_params
from tuneforge.tune.tuner import objective_direction, progress_callback, progress_shown_by

FACTS = [("colour of the sky", "blue"), ("opposite of hot", "cold"), ("number after two", "three"),
         ("first letter", "A"), ("capital of France", "Paris"), ("a baby cat", "kitten")]


def experiment_config(tmp_path, model_dir, search_block: str, *, repeat: int = 8, epochs: int = 4,
                      checkpoints: int = 4) -> TrainConfig:
    rows = [chat_row(f"Name the {q}.", a) for q, a in FACTS]
    train = write_jsonl(tmp_path / "train.jsonl", rows * repeat)
    valid = write_jsonl(tmp_path / "valid.jsonl", rows)
    text = (f"model_id: {model_dir}\ntrain_path: {train}\nvalid_path: {valid}\ntrain_batch_size_per_device: 8\n"
            f"num_epochs: {epochs}\nmax_num_checkpoints: {checkpoints}\nnum_warmup_steps: 2\nprecision: fp32\nseed: 1\n"
            f"lora_config: {{r: 8, lora_alpha: 16}}\noutput_dir: {tmp_path / 'runs'}\n" + search_block)
    return load_config(write_config(tmp_path / "search.yaml", text))


def test_typo_in_search_space_is_refused_with_line_and_suggestion(tmp_path):
    path = write_config(tmp_path / "s.yaml", "model_id: m\ntrain_path: t.jsonl\nsearch_space:\n"
                        "  learning_rat: {loguniform: [1.0e-5, 1.0e-3]}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:4: search_space: unknown key 'learning_rat' \(did you mean 'learning_rate'"):
        validate_search(load_config(path))


def test_nested_lora_keys_are_checked_against_peft(tmp_path):
    path = write_config(tmp_path / "s.yaml", "model_id: m\ntrain_path: t.jsonl\nsearch_space:\n  lora_config:\n"
                        "    rank: {grid: [4, 8]}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:5: search_space: unknown key 'lora_config.rank'"):
        validate_search(load_config(path))


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("  learning_rate: {loguniform: [0, 1.0e-3]}\n", "empty or not positive"),
        ("  num_epochs: {grid: [1, 0]}\n", "value 0 is invalid"),
        ("  learning_rate: {between: [1, 2]}\n", "expected one of grid, choice"),
        ("  model_id: {grid: [a, b]}\n", "'model_id' cannot be searched over"),
        ("  lora_config.r: {grid: [4, 8]}\n", "this config fine-tunes fully"),
    ],
)
def test_bad_search_specs_are_refused_before_any_trial(tmp_path, space, message):
    path = write_config(tmp_path / "s.yaml", "model_id: m\ntrain_path: t.jsonl\nsearch_space:\n" + space)
    with pytest.raises(ConfigError, match=message):
        validate_search(load_config(path))


@pytest.mark.parametrize(
    ("tune_block", "message"),
    [
        ("  metric: eval_acc\n", r"s\.yaml:6: unknown metric 'eval_acc'; trials report eval_loss, eval_perplexity"),
        ("  points_to_evaluate: [{learning_rat: 0.1}]\n",
         r"s\.yaml:6: point 1: 'learning_rat' is not a search_space key \(did you mean 'learning_rate'"),
        ("  points_to_evaluate: [{learning_rate: -1}]\n", r"s\.yaml:6: point 1 is invalid"),
    ],
)
def test_tune_metric_and_starting_points_are_checked_before_any_trial(tmp_path, tune_block, message):
    path = write_config(tmp_path / "s.yaml", "model_id: m\ntrain_path: t.jsonl\nsearch_space:\n"
                        "  learning_rate: {choice: [0.1, 0.2]}\ntune:\n" + tune_block)
    with pytest.raises(ConfigError, match=message):
        validate_search(load_config(path))


def test_grid_needs_the_basic_search_algorithm(tmp_path):
    path = write_config(tmp_path / "s.yaml", "model_id: m\ntrain_path: t.jsonl\nsearch_space:\n"
                        "  learning_rate: {grid: [0.1, 0.2]}\ntune:\n  search_alg: optuna\n")
    with pytest.raises(ConfigError, match="grid values need search_alg: basic"):
        validate_search(load_config(path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{uniform: [1.0e-5]}", r"s\.yaml:4: search_space\.learning_rate: uniform takes \[low, high\] numbers"),
        ("{quniform: [0.1, 0.2]}", r"s\.yaml:4: search_space\.learning_rate: quniform takes \[low, high, step\]"),
        ("{choice: []}", r"s\.yaml:4: search_space\.learning_rate: choice needs a non-empty list"),
        ("{grid: 0.1}", r"s\.yaml:4: search_space\.learning_rate: grid needs a non-empty list"),
        ("{uniform: [1e-5, 1e-3]}", r"s\.yaml:4: .*uniform takes \[low, high\] numbers"),  # YAML 1.1: strings
        ("{grid: [0.1], choice: [0.2]}", r"s\.yaml:4: search_space\.learning_rate: expected one of grid, choice, "
                                         r"uniform, loguniform, randint, quniform, e\.g\. .*\(got grid, choice\)"),
    ],
)
def test_a_malformed_space_spec_names_its_line_and_the_problem(tmp_path, spec, message):
    path = write_config(tmp_path / "s.yaml", f"model_id: m\ntrain_path: t.jsonl\nsearch_space:\n  learning_rate: {spec}\n")
    with pytest.raises(ConfigError, match=message):
        validate_search(load_config(path))


def test_space_spec_knows_its_kind_values_and_the_values_worth_validating():
    spec = parse_spec({"randint": [2, 9]})
    assert isinstance(spec, SpaceSpec) and spec.kind == "randint" and spec.values == [2, 9]
    assert spec.samples() == [2, 8]  # randint's high is exclusive
    assert parse_spec({"grid": ["a", "b"]}).samples() == ["a", "b"]
    with pytest.raises(ValueError, match=r"loguniform range \[0, 1\] is empty or not positive"):
        parse_spec({"loguniform": [0, 1]})


def test_dotted_and_nested_lora_keys_set_nested_values(tmp_path):
    base = TrainConfig(model_id="m", train_path="t", lora_config={"r": 8, "lora_alpha": 16}).model_dump(mode="json")
    changed = with_params(base, {"lora_config.r": 4, "learning_rate": 0.1})
    assert changed["lora_config"] == {"r": 4, "lora_alpha": 16} and changed["learning_rate"] == 0.1
    assert base["lora_config"]["r"] == 8  # the base is left alone
    assert dotted({"lora_config": {"r": 4}, "learning_rate": 0.1}) == {"lora_config.r": 4, "learning_rate": 0.1}
    for written in ("  lora_config.r: {grid: [4, 8]}\n", "  lora_config:\n    r: {grid: [4, 8]}\n"):
        path = write_config(tmp_path / "s.yaml", "model_id: m\ntrain_path: t.jsonl\nlora_config: {r: 8}\n"
                            "search_space:\n" + written)
        assert list(validate_search(load_config(path))) == ["lora_config.r"]


def write_trial(experiment, name: str, status: str, losses: list[float]) -> None:
    from tuneforge.rundir import RunDir, RunState

    run = RunDir(experiment / name)
    run.path.mkdir(parents=True)
    run.set_state(RunState(status=status))
    rows = [{"type": "eval", "step": 2 * (i + 1), "eval_loss": loss, "eval_perplexity": 2.0} for i, loss in
            enumerate(losses)]
    run.metrics_file.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_summarize_reads_trial_statuses_from_tunes_results(tmp_path):
    from ray.tune import Result

    from tuneforge.errors import TuneforgeError
    from tuneforge.rundir import RunDir

    experiment = tmp_path / "exp"
    for name, status, losses in [("trial_a", "completed", [1.0, 0.5]), ("trial_b", "running", [2.0]),
                                 ("trial_c", "failed", [])]:
        write_trial(experiment, name, status, losses)

    def result(name, done, error=None, config=None):
        metrics = {"done": done, "config": config or {"learning_rate": 0.1, "lora_config.r": 4}}
        return Result(metrics=metrics, checkpoint=None, error=error, path=str(experiment / name))

    grid = [result("trial_a", True), result("trial_b", True), result("trial_c", False, RuntimeError("boom\nmore"))]
    summary = summarize(experiment, grid, "eval_loss", "min")
    assert [t["status"] for t in summary.trials] == ["done", "stopped early", "error"]
    assert summary.best["run_id"] == "trial_a" and summary.best["objective"] == 0.5
    assert summary.best["hyperparameters"] == {"learning_rate": 0.1, "lora_config.r": 4}
    state = RunDir(experiment / "trial_b").state()
    assert state.status == "stopped" and state.stopped_by == "scheduler"
    rows = list(csv.DictReader(open(experiment / "trials.csv")))
    assert "param.lora_config.r" in rows[0] and rows[2]["error"] == "boom"

    write_trial(experiment, "trial_d", "running", [1.5])  # Tune had not ended it when the search was cut short
    with pytest.raises(TuneforgeError, match="search interrupted with 1 of 4 trial"):
        summarize(experiment, [*grid, result("trial_d", False)], "eval_loss", "min")
    assert [row["status"] for row in csv.DictReader(open(experiment / "trials.csv"))][-1] == "interrupted"
    summary = summarize(experiment, [*grid, result("trial_d", False)], "eval_loss", "min", budget_spent=True)
    assert summary.trials[-1]["status"] == "stopped early"
    assert RunDir(experiment / "trial_d").state().stopped_by == "time_budget_s"



def test_a_diverged_trial_never_ranks_best(tmp_path):
    import math

    from ray.tune import Result

    experiment = tmp_path / "exp"
    write_trial(experiment, "trial_a", "completed", [float("nan")])  # first in the grid: min() alone would keep it
    write_trial(experiment, "trial_b", "completed", [float("nan"), 0.9, 0.7])
    grid = [Result(metrics={"done": True, "config": {"learning_rate": lr}}, checkpoint=None, error=None,
                   path=str(experiment / name)) for name, lr in [("trial_a", 1.0), ("trial_b", 0.1)]]
    summary = summarize(experiment, grid, "eval_loss", "min")
    assert summary.best["run_id"] == "trial_b" and summary.best["objective"] == 0.7
    assert math.isnan(summary.trials[0]["best_objective"])  # trials.csv still shows what the run reported

def test_a_search_report_says_which_trials_and_files_are_missing(tmp_path):
    from tuneforge.report import write_report

    experiment = tmp_path / "exp"
    write_trial(experiment, "trial_a", "running", [1.0])
    (experiment / "tune_config.yaml").write_text("model_id: m\ntrain_path: t.jsonl\n")
    page = write_report([experiment]).read_text(encoding="utf-8")
    assert "no best_run.json yet: the search has not finished" in page
    assert "no trials.csv: the search is running or was interrupted" in page
    (experiment / "trials.csv").write_text("run_id,status,iterations,best_objective,final_objective,param.lr,error\n"
                                           "trial_a,done,1,1.0,1.0,0.1,\ntrial_z,error,0,,,0.2,boom\n")
    page = write_report([experiment]).read_text(encoding="utf-8")
    assert "whose run is missing (no config.yaml): trial_a, trial_z" in page
    assert "<td>boom</td>" in page and "objective against lr" in page


def test_a_restored_progress_callback_reports_to_the_resuming_display():
    import pickle

    first, second = object(), object()
    with progress_shown_by(first):
        pickled = pickle.dumps(progress_callback(first))  # what Tune keeps in the experiment
    with progress_shown_by(second):
        assert pickle.loads(pickled).display is second
    assert not hasattr(pickle.loads(pickled), "display")  # no search running: a callback that does nothing


def test_objective_direction_follows_the_metric_and_the_task():
    causal = TrainConfig(model_id="m", train_path="t")
    assert objective_direction(causal, TuneSettings()) == ("objective", "min")
    assert objective_direction(causal, TuneSettings(metric="eval_perplexity")) == ("eval_perplexity", "min")
    classifier = TrainConfig(model_id="m", train_path="t", task="classification", text_fields=["text"],
                             label_field="label", best_metric="eval_f1")
    assert objective_direction(classifier, TuneSettings()) == ("objective", "max")
    assert objective_direction(classifier, TuneSettings(metric="eval_f1")) == ("eval_f1", "max")
    assert objective_direction(classifier, TuneSettings(mode="min")) == ("objective", "min")


def test_objective_follows_hf_default_compute_objective():
    assert default_objective({"eval_loss": 0.7, "eval_perplexity": 2.0, "step": 5}) == 0.7
    assert default_objective({"eval_loss": 0.7, "eval_accuracy": 0.9, "eval_f1": 0.8}) == pytest.approx(1.7)


def test_resources_fit_two_cpus_and_refuse_what_cannot_fit():
    config = TrainConfig(model_id="m", train_path="t")
    plan = plan_resources(config, TuneSettings(), cpus=2, gpus=0)
    assert plan.concurrency == 2 and plan.cpus_per_worker == pytest.approx(0.99)
    two_workers = TrainConfig(model_id="m", train_path="t", num_devices=2)
    plan = plan_resources(two_workers, TuneSettings(), cpus=2, gpus=0)
    assert plan.concurrency == 1 and plan.cpus_per_worker * 2 + 0.01 <= 2  # a trial + two workers fit
    fixed = TrainConfig(model_id="m", train_path="t", num_devices=2, worker_resources={"CPU": 1})
    with pytest.raises(ConfigError, match="one trial needs 2 x 1 CPU"):
        plan_resources(fixed, TuneSettings(), cpus=2, gpus=0)
    assert plan_resources(config, TuneSettings(max_concurrent_trials=1), cpus=2, gpus=0).cpus_per_worker == pytest.approx(1.99)
    with pytest.raises(ConfigError, match="GPU"):
        plan_resources(TrainConfig(model_id="m", train_path="t", num_devices=2), TuneSettings(), cpus=16, gpus=1)


# The sampled searches run before the ASHA test: the workers of a trial ASHA stops can keep their CPUs reserved
# for minutes on a loaded machine (Ray Train's placement-group cleaner waits on the State API), and a search
# right after it then fails to place its workers.
@pytest.mark.slow  # two 2-trial searches cost ~3 min on 2 cores; `make test-slow` runs them
@pytest.mark.usefixtures("ray_session")
def test_optuna_samples_a_dotted_lora_key(tmp_path, tiny_llama_dir):
    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  lora_config.r: {choice: [4, 8]}\n"
                               "tune:\n  search_alg: optuna\n  num_samples: 2\n  experiment_name: optuna\n",
                               repeat=2, epochs=2, checkpoints=2)
    result = search(config)
    assert len(result.trials) == 2 and all(t["status"] == "done" for t in result.trials)
    assert result.best["hyperparameters"]["lora_config.r"] in (4, 8)
    for trial in result.trials:  # the dotted key set r inside lora_config, and lora_alpha stayed
        saved = load_config(Path(trial["run_dir"]) / "config.yaml")
        assert saved.lora_config["r"] == trial["param.lora_config.r"] and saved.lora_config["lora_alpha"] == 16
    rows = list(csv.DictReader(open(tmp_path / "runs" / "optuna" / "trials.csv")))
    assert {row["param.lora_config.r"] for row in rows} <= {"4", "8"}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_hyperopt_samples_a_range(tmp_path, tiny_llama_dir):
    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {loguniform: [1.0e-3, 1.0e-2]}\n"
                               "tune:\n  search_alg: hyperopt\n  num_samples: 2\n  experiment_name: hyperopt\n",
                               repeat=2, epochs=2, checkpoints=2)
    result = search(config)
    assert len(result.trials) == 2 and all(t["status"] == "done" for t in result.trials)
    assert all(1.0e-3 <= t["param.learning_rate"] <= 1.0e-2 for t in result.trials)
    assert json.loads((tmp_path / "runs" / "hyperopt" / "best_run.json").read_text())["mode"] == "min"


@pytest.mark.usefixtures("ray_session")
def test_two_trial_grid_picks_the_better_trial(tmp_path, tiny_llama_dir, monkeypatch):
    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {grid: [0.0, 1.0e-2]}\n"
                               "tune:\n  experiment_name: grid\ntrackers: [tensorboard, mlflow]\n")
    result = search(config)
    from tests.test_mlflow import check_search_in_mlflow

    check_search_in_mlflow(result, tmp_path / "runs", "search", [0.0, 1.0e-2])
    experiment = tmp_path / "runs" / "grid"
    assert result.experiment_dir == experiment
    assert result.best["hyperparameters"] == {"learning_rate": 0.01} and result.best["mode"] == "min"
    best_run = json.loads((experiment / "best_run.json").read_text())
    assert set(best_run) >= {"run_id", "objective", "hyperparameters", "checkpoint"}
    rows = list(csv.DictReader(open(experiment / "trials.csv")))
    assert len(rows) == 2 and all(row["status"] == "done" for row in rows)
    for row in rows:  # each trial is a normal run
        assert (experiment / row["run_id"] / "results.json").is_file()
        assert list((experiment / row["run_id"] / "tensorboard").glob("events.*"))
    assert (experiment / "objective_by_trial.png").read_bytes()[:4] == b"\x89PNG"
    assert (Path(best_run["checkpoint"]) / "adapter_model.safetensors").is_file()
    assert Path(best_run["checkpoint"]).is_relative_to(experiment / best_run["run_id"])
    best_row = next(row for row in rows if row["run_id"] == best_run["run_id"])
    assert float(best_row["best.eval_loss"]) == pytest.approx(best_run["objective"])
    assert float(best_row["final.eval_loss"]) >= float(best_row["best.eval_loss"])
    monkeypatch.chdir(tmp_path)  # `tuneforge runs best grid` finds the experiment by name under ./runs
    assert read_best_run(Path("grid")) == best_run

    from tuneforge.report import write_report

    page = write_report([experiment]).read_text(encoding="utf-8")  # experiment/report.html
    assert f"<td>{best_run['run_id']}</td>" in page.split("<h2>Trials</h2>")[0]  # the best run, first
    trials_table = page[page.index('<table class="sortable">'):page.index("<h2>Objective</h2>")]
    assert trials_table.count("<tr>") == 3 and "<th>learning_rate</th>" in trials_table  # header + a row per trial
    assert f"{best_run['metric']} against learning_rate" in page and f"best {best_run['metric']} by trial" in page
    assert all(f"{row['run_id']} train" in page for row in rows)  # both trials' curves overlaid
    assert "<script>" in page and not re.search(r'(src|href)="(https?:)?//', page)
    if shutil.which("chromium"):  # the sorting script loads without an error in a real browser
        from tests.test_report import open_in_chromium

        console, dom = open_in_chromium(experiment / "report.html", tmp_path / "search.png")
        assert console == [] and dom.count("<svg") >= 2


@pytest.mark.slow  # ~90 s; make test keeps the grid search (trials, best run) and the scheduler settings checks
@pytest.mark.usefixtures("ray_session")
def test_asha_stops_a_hopeless_trial_before_max_t(tmp_path, tiny_llama_dir):
    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {grid: [1.0e-2, 0.0]}\n"
                               "tune:\n  scheduler: asha\n  grace_period: 1\n  reduction_factor: 2\n  max_t: 4\n"
                               "  max_concurrent_trials: 1\n  experiment_name: asha\n")
    result = search(config)
    by_lr = {trial["param.learning_rate"]: trial for trial in result.trials}
    assert by_lr[0.01]["iterations"] == 4 and by_lr[0.01]["status"] == "done"
    assert by_lr[0.0]["iterations"] < 4 and by_lr[0.0]["status"] == "stopped early"
    stopped = Path(by_lr[0.0]["run_dir"])
    assert not (stopped / "best").exists()  # a stopped trial never finished, yet its checkpoints are found
    assert best_kept_checkpoint(stopped, "objective", "min").parent == stopped / "checkpoints"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_pbt_trials_take_over_each_others_checkpoints(tmp_path, tiny_llama_dir):
    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {grid: [1.0e-2, 0.0]}\n"
                               "tune:\n  scheduler: pbt\n  perturbation_interval: 1\n  hyperparam_mutations:\n"
                               "    learning_rate: [1.0e-2, 5.0e-3]\n  experiment_name: pbt\n")
    assert config.num_checkpoints_to_keep == 1
    result = search(config)
    runs = [json.loads((tmp_path / "runs" / "pbt" / t["run_id"] / "run.json").read_text()) for t in result.trials]
    assert any(run.get("started_from") for run in runs)  # the lr=0 trial continued from the better trial's checkpoint
    assert all(t["status"] == "done" for t in result.trials)
    saved = json.loads((tmp_path / "runs" / "pbt" / "search.json").read_text())
    assert any("num_checkpoints_to_keep raised from 1 to 3" in note for note in saved["notes"])


@pytest.mark.slow
def test_interrupted_search_resumes(tmp_path, tiny_llama_dir):
    import signal
    import subprocess
    import sys
    import time

    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {grid: [1.0e-2, 3.0e-3]}\n"
                               "tune:\n  max_concurrent_trials: 1\n  experiment_name: cut\n")
    source = tmp_path / "search.yaml"
    experiment = tmp_path / "runs" / "cut"
    process = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "tune", str(source)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(experiment.glob("trial_*/results.json"))) < 1:
        time.sleep(1)
    time.sleep(5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert "search interrupted" in err and "--resume" in err
    assert not (experiment / "best_run.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "tuneforge.cli", "tune", "--resume", str(experiment)],
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((experiment / "best_run.json").read_text())["hyperparameters"] == {"learning_rate": 0.01}
    rows = list(csv.DictReader(open(experiment / "trials.csv")))
    assert [row["status"] for row in rows] == ["done", "done"]
    del config


def test_pbt_raising_num_checkpoints_to_keep_is_shown_when_the_search_starts(tmp_path, tiny_llama_dir, monkeypatch):
    from tuneforge import cluster

    class NoRay(Exception):
        pass

    def no_ray(*args, **kwargs):
        raise NoRay

    class Display:
        def __init__(self):
            self.notes = []

        def note(self, message):
            self.notes.append(message)

    monkeypatch.setattr(cluster, "ensure_ray", no_ray)  # the notes come first; no trial needs to start
    config = experiment_config(tmp_path, tiny_llama_dir, "search_space:\n  learning_rate: {grid: [1.0e-2, 0.0]}\n"
                               "tune:\n  scheduler: pbt\n  hyperparam_mutations:\n    learning_rate: [1.0e-2, 5.0e-3]\n")
    display = Display()
    with pytest.raises(NoRay):
        search(config, display=display)
    assert len(display.notes) == 1 and "num_checkpoints_to_keep raised from 1 to 3" in display.notes[0]


def test_pbt_refuses_checkpoints_kept_outside_the_run_directories():
    from tuneforge.tune.tuner import apply_pbt_rules

    config = TrainConfig(model_id="m", train_path="t.jsonl", storage_path="s3://bucket/ckpts")
    with pytest.raises(ConfigError, match=r"scheduler pbt hands checkpoints between trials .*remove storage_path"):
        apply_pbt_rules(config, TuneSettings(scheduler="pbt"))
    assert apply_pbt_rules(config, TuneSettings(scheduler="asha"))[0] is config
