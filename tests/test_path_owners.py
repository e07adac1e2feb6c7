"""The directories' owners, and the rule that keeps them the only owners: the paths of a run directory
(`rundir.RunDir`), an evaluation's folder (`rundir.EvalDir`) and a search's experiment directory
(`rundir.ExperimentDir`) are built in the rundir package and nowhere else (ARCHITECTURE.md, "The run directory contract")."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from tuneforge.rundir import (
    EvalDir,
    ExperimentDir,
    RunDir,
    checkpoint_name,
    export_report_file,
    list_runs,
    record_export,
)

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tuneforge"
OWNER = PACKAGE / "rundir"  # the package: meta, run (RunDir, EvalDir), search (ExperimentDir)

# Every file and folder name of the three layouts.
RUN_NAMES = {"config.yaml", "plan.json", "lr_schedule.png", "run.json", "validation_samples.jsonl", "metrics.jsonl",
             "eval_samples.jsonl", "tensorboard", "checkpoints", "best", "results.json", "report.html", "eval",
             "export", "export_report.json", "tuneforge.json", "training_state.pt",
             "checkpoint_manager_snapshot.json", "reference_logps.safetensors", "README.md"}
EVAL_NAMES = {"results.json", "confusion_matrix.png", "samples.jsonl", "base_samples.jsonl"}
SEARCH_NAMES = {"tune_config.yaml", "search.json", "trials.csv", "best_run.json", "objective_by_trial.png",
                "report.html"}
OWNED_NAMES = RUN_NAMES | EVAL_NAMES | SEARCH_NAMES


def literal_names(node: ast.AST) -> list[ast.Constant]:
    """The string constants `node` is, or holds (a tuple, list or set of names compared with `in`)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [item for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)]


def hand_built_paths(source: str) -> list[tuple[int, str]]:
    """(line, name) of each owned name used to build or recognise a path: the right side of `/`
    (`run / "results.json"`, f-strings included), an argument of `joinpath` / `with_name` / `Path(...)`, or
    compared with something's `.name` (`path.parent.name == "export"`). The same strings elsewhere (a metrics row's
    `row.get("type") == "eval"`, a command's name, a message) are not paths and are not counted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        candidates: list[ast.AST] = []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            candidates = [node.right]
        elif isinstance(node, ast.Call):
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if called in ("joinpath", "with_name", "Path", "PurePath"):
                candidates = list(node.args)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(side, ast.Attribute) and side.attr == "name" for side in sides):
                candidates = sides
        found += [(constant.lineno, constant.value) for candidate in candidates
                  for constant in literal_names(candidate) if constant.value in OWNED_NAMES]
    return sorted(set(found))


def test_no_module_but_rundir_builds_run_eval_or_search_paths_by_hand():
    offenders = {str(path.relative_to(PACKAGE)): found for path in sorted(PACKAGE.rglob("*.py"))
                 if OWNER not in path.parents and (found := hand_built_paths(path.read_text(encoding="utf-8")))}
    assert offenders == {}


def test_the_path_finder_sees_paths_and_ignores_the_same_words_elsewhere():
    sample = """\
a = run.path / "eval" / name
b = f"results: {report.output_dir / 'results.json'}"
if path.parent.name == "export": pass
if path.name in ("best", "checkpoints"): pass
c = Path(folder, "trials.csv")
d = [row for row in rows if row.get("type") == "eval"]
@app.command("eval")
def f(): pass
e = "no results.json yet"
g = out / "merged"
"""
    # 1: a path; 2: inside an f-string; 3: a folder recognised by its name; 4: two at once; 5: built by Path();
    # 6: a metrics row, 7: a command's name, 9: a message (not paths); 10: a name no owner holds
    assert hand_built_paths(sample) == [(1, "eval"), (2, "results.json"), (3, "export"), (4, "best"),
                                        (4, "checkpoints"), (5, "trials.csv")]


# --- RunDir ------------------------------------------------------------------------------------------------------


def a_run(path: Path, status: str = "completed") -> RunDir:
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.config_file.write_text("task: causal_lm\n")
    run.set_state(run.state().model_copy(update={"status": status}))
    return run


def test_a_runs_report_and_export_report_live_in_the_run(tmp_path):
    run = RunDir(tmp_path / "demo")
    assert run.report_file == tmp_path / "demo" / "report.html"
    assert run.export_report_file == tmp_path / "demo" / "export" / "export_report.json"
    assert export_report_file(tmp_path / "elsewhere") == tmp_path / "elsewhere" / "export_report.json"
    record_export(run.export_dir, "merged", {"path": "x"})
    assert json.loads(run.export_report_file.read_text()) == {"merged": {"path": "x"}}


def test_evals_lists_the_runs_evaluations_by_name(tmp_path):
    run = RunDir(tmp_path / "demo")
    assert run.evals() == []
    for name in ("held-out", "b-set"):
        run.eval_dir(name).mkdir(parents=True)
    (run.evals_dir / "stray.txt").write_text("")
    assert [evaluation.name for evaluation in run.evals()] == ["b-set", "held-out"]
    assert run.eval_dir("b-set") == run.evals_dir / "b-set" == run.evals()[0].path


def test_an_eval_dir_names_its_files_and_reads_its_results(tmp_path):
    evaluation = EvalDir(tmp_path / "held-out")
    assert evaluation.name == "held-out"
    assert [p.name for p in (evaluation.results_file, evaluation.confusion_plot, evaluation.samples_file,
                             evaluation.base_samples_file)] == ["results.json", "confusion_matrix.png",
                                                                "samples.jsonl", "base_samples.jsonl"]
    assert evaluation.results() == {}
    evaluation.path.mkdir()
    evaluation.results_file.write_text('{"eval_loss": 1.5}')
    assert evaluation.results() == {"eval_loss": 1.5}


def test_a_checkpoints_run_is_read_from_its_place_in_the_layout(tmp_path):
    run = tmp_path / "demo"
    assert checkpoint_name(10) == "step-000010"
    assert RunDir.holding(run / "best").path == run
    assert RunDir.holding(run / "checkpoints" / "step-000010").path == run
    assert RunDir.holding(tmp_path / "store" / "demo" / "checkpoints" / "step-000010").name == "demo"  # no files
    assert RunDir.holding(run / "step-000004").path == run
    assert RunDir.holding(run / "export" / "merged") is None
    assert RunDir.holding(run) is None


def test_the_run_a_file_sits_in_is_found_by_its_run_json(tmp_path):
    run = a_run(tmp_path / "demo")
    model = run.export_dir / "model-q8_0.gguf"
    assert RunDir.of_file(model).path == run.path
    assert RunDir.of_file(run.path / "elsewhere" / "model.gguf").path == run.path
    assert RunDir.of_file(tmp_path / "loose" / "model.gguf") is None


# --- ExperimentDir -----------------------------------------------------------------------------------------------


def a_search(path: Path, trials: tuple[str, ...] = ("trial_a", "trial_b")) -> ExperimentDir:
    search = ExperimentDir(path)
    search.path.mkdir(parents=True)
    search.config_file.write_text("model: x\n")
    for name in trials:
        a_run(search.path / name)
    return search


def test_an_experiment_dir_names_its_files(tmp_path):
    search = ExperimentDir(tmp_path / "grid")
    assert search.name == "grid"
    assert {p.name for p in (search.config_file, search.search_file, search.trials_file, search.best_run_file,
                             search.objective_plot, search.report_file)} == SEARCH_NAMES
    assert all(p.parent == search.path for p in (search.config_file, search.trials_file, search.report_file))


def test_an_experiment_is_told_from_a_run_by_its_tune_config(tmp_path):
    search = a_search(tmp_path / "grid")
    assert search.is_experiment()
    assert not ExperimentDir(search.path / "trial_a").is_experiment()
    assert not ExperimentDir(tmp_path / "missing").is_experiment()


def test_trial_runs_lists_the_trials_run_directories_only(tmp_path):
    search = a_search(tmp_path / "grid", trials=("trial_b", "trial_a"))
    (search.path / "not-a-run").mkdir()
    search.trials_file.write_text("run_id\n")
    assert [run.name for run in search.trial_runs()] == ["trial_a", "trial_b"]
    assert search.trial("trial_a").path == search.path / "trial_a"
    assert ExperimentDir(tmp_path / "missing").trial_runs() == []


def test_the_search_a_trial_belongs_to(tmp_path):
    search = a_search(tmp_path / "grid")
    assert ExperimentDir.of_trial(search.path / "trial_a").path == search.path
    assert ExperimentDir.of_trial(a_run(tmp_path / "alone").path) is None


def test_search_and_best_run_are_read_leniently(tmp_path):
    search = a_search(tmp_path / "grid")
    assert search.search() == {} and search.best_run() == {}
    search.search_file.write_text('{"metric": "objective", "mode": "min"}')
    search.best_run_file.write_text('{"run_id": "trial_a"')  # cut short
    assert search.search() == {"metric": "objective", "mode": "min"}
    assert search.best_run() == {}


def test_list_runs_tells_searches_from_runs(tmp_path):
    a_run(tmp_path / "one")
    search = a_search(tmp_path / "grid")
    search.best_run_file.write_text('{"run_id": "trial_a", "objective": 0.5, "metric": "objective"}')
    entries = {entry.name: entry for entry in list_runs(tmp_path)}
    assert entries["one"].kind == "run" and entries["one"].status == "completed"
    assert entries["grid"].kind == "search" and entries["grid"].status == "done, 2 trials"
    assert entries["grid"].best == "objective 0.5000 (trial_a)"
