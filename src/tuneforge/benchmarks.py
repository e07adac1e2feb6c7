"""Standard benchmarks through lm-evaluation-harness: "did fine-tuning break what the model could do?".

`evaluate_benchmarks` runs lm-eval's Python API in this process on the run's own model (its `hf` model class over
the loaded weights, adapter on; with `compare_base`, the same weights with the adapter switched off), on tasks by
name where their data is reachable or on local task YAMLs with local data. Results land in an evaluation folder like
`tuneforge eval --data`'s, as flat scalars (`TASK/METRIC`, the base model's under `base`) that the run's report and
model card show beside the others, and lm-eval's own per-task results under `lm_eval`.

The same numbers come from a served model through lm-eval's `local-completions` (echo + prompt logprobs, token-id
prompts and the tokenizer endpoints of tuneforge.serve): tests/test_benchmarks.py checks that both agree.
"""

from __future__ import annotations

import difflib
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from tuneforge.atomic import atomic_dir, write_json
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.evaluate import EvalReport, kept_in_run
from tuneforge.rundir import BENCHMARK_DOCUMENTS as DOCUMENTS
from tuneforge.rundir import BENCHMARK_KEY, EvalDir, RunDir

LOCAL_TASKS_DIR = "lm_eval_tasks"  # the local task YAMLs as run, data paths made absolute, kept with the results
STDERR_BOOTSTRAP = 1000  # lm-eval's default 100000 resamples cost minutes for metrics without a closed form


def require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("--lm-eval needs lm-evaluation-harness: pip install 'tuneforge[lm-eval]'") from None
    return lm_eval


def evaluate_benchmarks(run: str | Path, tasks: list[str], *, compare_base: bool = False, limit: int | None = None,
                        num_fewshot: int | None = None, batch_size: int = 8, name: str | None = None,
                        output_dir: str | Path | None = None) -> EvalReport:
    """Score the run on lm-eval `tasks` (names, or paths to task YAMLs). `limit`: documents per task."""
    require_lm_eval()
    from tuneforge.models.loading import load_checkpoint

    target = Path(output_dir) if output_dir else RunDir.locate(run).eval_dir(name or "lm-eval")
    with atomic_dir(target) as staged:
        names, manager = task_manager(tasks, Path(staged) / LOCAL_TASKS_DIR)  # a wrong task before the model loads
        loaded = load_checkpoint(run, needs="generates")
        if compare_base and not hasattr(loaded.model, "disable_adapter"):
            raise TuneforgeError("--compare-base needs a LoRA run (a full fine-tune has no separate base to switch "
                                 "to)")
        lm = hf_model(loaded, batch_size)
        settings = {"limit": limit, "num_fewshot": num_fewshot}
        tuned = run_tasks(lm, names, manager, **settings)
        base = None
        if compare_base:
            with loaded.model.disable_adapter():
                base = run_tasks(lm, names, manager, **settings)
        results = benchmark_results(run, names, tuned, base, settings)
        write_json(EvalDir(staged).results_file, results)
    return kept_in_run(run, EvalReport(results, target), output_dir)


def task_manager(tasks: list[str], local_dir: Path) -> tuple[list[str], Any]:
    """lm-eval task names for `tasks`, and a TaskManager that knows them: each local YAML is copied to `local_dir`
    with its relative data_files made absolute (read from the YAML's own folder, wherever the command runs)."""
    from lm_eval.tasks import TaskManager

    names, local = [], False
    for task in tasks:
        if task.endswith((".yaml", ".yml")):
            names.append(copy_local_task(Path(task), local_dir))
            local = True
        else:
            names.append(task)
    manager = TaskManager(include_path=str(local_dir) if local else None)
    known = set(manager.all_tasks)
    for task, name in zip(tasks, names, strict=True):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; pass a task YAML's path for a local task"
            raise ConfigError(f"--lm-eval {task}: lm-eval has no task {name!r}{hint}")
    return names, manager


def copy_local_task(path: Path, local_dir: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"--lm-eval {path}: no such task YAML")
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=TaggedLoader)  # safe: tags are kept as text
    except yaml.YAMLError as exc:
        raise ConfigError(f"--lm-eval {path}: not valid YAML: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise ConfigError(f"--lm-eval {path}: a task YAML needs a 'task:' name (lm-eval's task config format)")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        config["dataset_kwargs"]["data_files"] = absolute_files(files, path.parent)
    local_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, local_dir / f"{path.stem}.source.yaml.txt")  # the file as given, beside the copy run
    (local_dir / path.name).write_text(yaml.dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return config["task"]


class TaggedLoader(yaml.SafeLoader):
    """Safe YAML that keeps lm-eval's `!function module.name` tags as they are (they name Python beside the YAML)."""


def keep_tag(loader: Any, suffix: str, node: Any) -> Any:
    return TaggedScalar(f"!{suffix}", loader.construct_scalar(node))


class TaggedScalar(str):
    def __new__(cls, tag: str, value: str) -> TaggedScalar:
        item = super().__new__(cls, value)
        item.tag = tag
        return item


def represent_tagged(dumper: Any, data: TaggedScalar) -> Any:
    return dumper.represent_scalar(data.tag, str(data))


TaggedLoader.add_multi_constructor("!", keep_tag)
yaml.add_representer(TaggedScalar, represent_tagged)


def absolute_files(files: Any, folder: Path) -> Any:
    if isinstance(files, str):
        return files if "://" in files or Path(files).is_absolute() else str((folder / files).resolve())
    if isinstance(files, list):
        return [absolute_files(item, folder) for item in files]
    if isinstance(files, dict):
        return {split: absolute_files(item, folder) for split, item in files.items()}
    return files


def hf_model(loaded: Any, batch_size: int) -> Any:
    """lm-eval's `hf` model over the loaded weights (a PEFT model answers with its adapter until switched off)."""
    from lm_eval.models.huggingface import HFLM

    loaded.model.eval()
    context = int(getattr(loaded.model.config, "max_position_embeddings", 0) or loaded.meta.context_length or 2048)
    lm_eval_log = logging.getLogger("lm_eval")
    level = lm_eval_log.level
    lm_eval_log.setLevel(logging.ERROR)  # its warnings about being handed a loaded model: that is the intent here
    try:
        return HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, max_length=context)
    finally:
        lm_eval_log.setLevel(level)


def run_tasks(lm: Any, names: list[str], manager: Any, *, limit: int | None, num_fewshot: int | None) -> dict[str, Any]:
    from lm_eval import simple_evaluate

    try:
        output = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                 bootstrap_iters=STDERR_BOOTSTRAP, log_samples=False, verbosity="ERROR")
    except (ConnectionError, OSError) as exc:
        raise TuneforgeError(f"lm-eval could not load a task's data ({type(exc).__name__}: {str(exc)[:200]}); with no "
                             "dataset hub reachable, give a local task YAML whose data_files are local files") from None
    return output["results"]


def benchmark_results(run: str | Path, names: list[str], tuned: dict[str, Any], base: dict[str, Any] | None,
                      settings: dict[str, Any]) -> dict[str, Any]:
    import lm_eval

    results: dict[str, Any] = {"data": f"lm-eval: {', '.join(names)}", "checkpoint": str(run), **settings,
                               **flat_scores(tuned)}
    if base is not None:
        results["base"] = flat_scores(base)
    results[BENCHMARK_KEY] = {"version": lm_eval.__version__, "tasks": names, "results": tuned,
                          **({"base_results": base} if base is not None else {})}
    return results


def flat_scores(results: dict[str, Any]) -> dict[str, float]:
    """`TASK/METRIC` -> value, lm-eval's `acc,none` keys without their filter name where it is `none`."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, filtered = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "alias":
                label = metric if filtered in ("", "none") else f"{metric}[{filtered}]"
                flat[f"{task}/{DOCUMENTS if metric == 'sample_len' else label}"] = float(value)
    return flat


def benchmark_view(report: EvalReport) -> Any:
    """Per task and metric: the fine-tuned score, the base model's and the change (stderr and counts left out)."""
    from tuneforge.eval_views import EvalView, ViewTable

    results = report.results
    base = results.get("base") or {}
    rows = []
    for key, value in results.items():
        if "/" not in key or key.endswith(("_stderr", f"/{DOCUMENTS}")) or not isinstance(value, float):
            continue
        task, metric = key.split("/", 1)
        stderr = results.get(f"{key}_stderr")
        shown = f"{value:.3f}" + (f" ± {stderr:.3f}" if isinstance(stderr, float) else "")
        row = [task, metric, shown]
        if base:
            row += [f"{base[key]:.3f}", f"{value - base[key]:+.3f}"] if key in base else ["", ""]
        rows.append(row)
    columns = ["task", "metric", "fine-tuned"] + (["base model", "change"] if base else [])
    documents = {key.split("/")[0]: int(v) for key, v in results.items() if key.endswith(f"/{DOCUMENTS}")}
    counts = ", ".join(f"{task} {n}" for task, n in documents.items())
    return EvalView([ViewTable(f"lm-eval ({counts} documents)", columns, rows, text_columns=2),
                     f"results: {report.files.results_file}"])
