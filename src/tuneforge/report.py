"""`tuneforge report`: one self-contained HTML page about one run, several runs, or a search, read from their
directories only.

The page needs no network to open: charts are drawn by matplotlib as inline SVG, images are inlined as data URIs,
and the only script (a search's sortable trials table) is inline. A run that has not logged yet, a failed run, a
search with trials missing, or any missing file gets a line saying what is missing in place of that section;
nothing in a run or search directory makes the report fail.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from tuneforge.atomic import write_text
from tuneforge.errors import TuneforgeError
from tuneforge.rundir import REPORT_FILE, ExperimentDir, RunDir, locate, read_json, read_jsonl

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;
font-size:.9rem;vertical-align:top}th{background:#f5f5f5}.missing{color:#a60;font-style:italic}
.differs{background:#fff3cd}.chart svg{max-width:100%;height:auto}code{font-size:.85rem}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#aaa}
"""
# Sorts a table by the clicked column: numbers as numbers, the rest as text; a second click reverses.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var down = th.dataset.down !== "1"; th.dataset.down = down ? "1" : "0";
    rows.sort(function (a, b) {
      var x = a.cells[column].textContent, y = b.cells[column].textContent, nx = parseFloat(x), ny = parseFloat(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return down ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def write_report(paths: list[str | Path], output: str | Path | None = None) -> Path:
    """Write the report of the runs, or of the one search, at `paths` to `output` (default: report.html in the run
    or search directory, or in the working directory for several runs) and return where it is."""
    directories = [locate(path) for path in paths]
    searches = [ExperimentDir(path) for path in directories if ExperimentDir(path).is_experiment()]
    if searches and len(directories) > 1:
        raise TuneforgeError(f"{searches[0].path} is a search: report on it alone, or give runs to compare")
    if searches:
        page, default = render_search(searches[0]), searches[0].report_file
    else:
        runs = [open_run(path) for path in directories]
        page, default = render_page(runs), (runs[0].report_file if len(runs) == 1 else Path(REPORT_FILE))
    target = Path(output) if output else default
    write_text(target, page)
    return target


def open_run(path: str | Path) -> RunDir:
    run = RunDir(locate(path))
    if not run.is_run():
        raise TuneforgeError(f"{run.path}: not a tuneforge run or search (no config.yaml, no tune_config.yaml); "
                             "give a run or search directory to report on")
    return run


def render_page(runs: list[RunDir]) -> str:
    title = runs[0].path.name if len(runs) == 1 else f"{len(runs)} runs"
    body = [f"<h1>tuneforge report: {escape(title)}</h1>"]
    if len(runs) > 1:
        body += compare_runs(runs)
    for run in runs:
        body += run_section(run, heading=len(runs) > 1)
    return html_page(title, body)


def html_page(title: str, body: list[str], script: str = "") -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{''.join(body)}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>")


# ----------------------------------------------------------------------------------------------------------------
# A search
# ----------------------------------------------------------------------------------------------------------------


def render_search(experiment: ExperimentDir) -> str:
    search, best = experiment.search(), experiment.best_run()
    metric = best.get("metric") or search.get("metric") or "objective"
    trials = read_trials(experiment.trials_file)
    body = [f"<h1>tuneforge search report: {escape(experiment.name)}</h1>",
            table([["search", str(experiment.path)], ["metric", f"{metric} ({search.get('mode', '?')})"],
                   ["trials", str(len(trials))]])]
    auto = search.get("auto")
    if auto:  # what tune --auto built, and why
        body += ["<h2>The search --auto built</h2>", table([list(row) for row in auto.get("plan", [])],
                                                         ["", "value", "why"])]
        body += [f"<p>{escape(note)}</p>" for note in auto.get("notes", [])]
    body += ["<h2>Best run</h2>", best_section(best)]
    body += ["<h2>Trials</h2>", trials_table(trials) if trials else missing(
        "no trials.csv: the search is running or was interrupted before its summary; the trials' runs follow")]
    if trials:
        body += ["<h2>Objective</h2>", objective_charts(trials, metric)]
    runs = experiment.trial_runs()
    listed = {trial.get("run_id") for trial in trials}
    absent = sorted(name for name in listed if name and not experiment.trial(name).is_run())
    if absent:
        body.append(missing(f"trials listed in trials.csv whose run is missing (no config.yaml): {', '.join(absent)}"))
    if runs:
        body += compare_runs(runs)
    return html_page(experiment.name, body, SORT_SCRIPT if trials else "")


def read_trials(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return []


def best_section(best: dict[str, Any]) -> str:
    if not best:
        return missing("no best_run.json yet: the search has not finished")
    rows = [["run", best.get("run_id", "?")], ["objective", shown(best.get("objective"))],
            ["checkpoint", best.get("checkpoint") or "none kept"]]
    rows += [[f"hyperparameter {name}", shown(value)] for name, value in (best.get("hyperparameters") or {}).items()]
    return table(rows)


TRIAL_COLUMNS = ("run_id", "status", "iterations", "best_objective", "final_objective")


def trials_table(trials: list[dict[str, str]]) -> str:
    params = [key for key in trials[0] if key.startswith("param.")]
    columns = [*TRIAL_COLUMNS, *params, "error"]
    head = "<thead><tr>" + "".join(f"<th>{escape(c.removeprefix('param.'))}</th>" for c in columns) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{escape(trial.get(c, ''))}</td>" for c in columns) + "</tr>" for trial in trials)
    return f"<table class=\"sortable\">{head}<tbody>{body}</tbody></table>"


def objective_charts(trials: list[dict[str, str]], metric: str) -> str:
    scored = [(trial["run_id"], number(trial.get("best_objective"))) for trial in trials]
    scored = [(name, value) for name, value in scored if value is not None]
    if not scored:
        return missing("no trial reported the objective")
    charts = [bar_chart(f"best {metric} by trial", scored)]
    for param in (key for key in trials[0] if key.startswith("param.")):
        points = [(trial.get(param, ""), number(trial.get("best_objective"))) for trial in trials]
        points = [(value, objective) for value, objective in points if objective is not None]
        charts.append(scatter_chart(f"{metric} against {param.removeprefix('param.')}", param.removeprefix("param."),
                                    points))
    return "".join(charts)


def number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------------


def run_section(run: RunDir, *, heading: bool) -> list[str]:
    config, state, results = run.config(), read_json(run.state_file), run.results()
    metrics = run.metrics()
    parts = [f"<h2>{escape(run.path.name)}</h2>" if heading else "",
             table([["run", str(run.path)], ["status", state.get("status", "unknown")],
                    ["task", config.get("task", "causal_lm")], ["model", config.get("model_id", "?")],
                    ["started", state.get("started", "")], ["ended", state.get("ended", "")]])]
    if state.get("error"):
        parts.append(f"<p class=\"missing\">the run failed: {escape(state['error'])}</p>")
    parts += ["<h3>Config (changed from the defaults)</h3>", config_changes(config)]
    parts += ["<h3>Plan</h3>", plan_section(run)]
    parts += ["<h3>Training</h3>", training_charts(run, metrics, results)]
    parts += ["<h3>Metrics</h3>", metrics_section(results, metrics)]
    parts += eval_sections(run) + samples_section(run) + export_section(run)
    return parts


def config_changes(config: dict[str, Any]) -> str:
    from tuneforge.config import changed_keys, config_defaults

    defaults = config_defaults()
    rows = [[key, shown(value), shown(defaults.get(key, "(required)"))] for key, value in changed_keys(config).items()]
    return table(rows, ["key", "value", "default"]) if rows else missing("every key at its default")


def plan_section(run: RunDir) -> str:
    plan = read_json(run.plan_file)
    if not plan:
        return missing("no plan.json")
    rows = [[name, shown(plan.get(name))] for name in ("train_rows", "global_batch_size", "steps_per_epoch",
                                                       "num_epochs", "total_steps", "warmup_steps", "event_steps")]
    lr = image(run.lr_plot, "learning rate by step") if run.lr_plot.is_file() else missing("no learning-rate plot")
    return table(rows) + lr


def training_charts(run: RunDir, metrics: list[dict[str, Any]], results: dict[str, Any]) -> str:
    steps = [row for row in metrics if row.get("type") == "step"]
    if not steps:
        return missing("no metrics yet: the run has not logged a training step")
    evals = [row for row in metrics if row.get("type") == "eval"]
    best_step = (results.get("best_metrics") or {}).get("step")
    loss = line_chart("loss by step", {"train loss": [(row["step"], row["loss"]) for row in steps]},
                      points={"eval loss": [(row["step"], row["eval_loss"]) for row in evals if "eval_loss" in row]},
                      events=[row["step"] for row in evals], best=best_step)
    speed = line_chart("real tokens/s by step",
                       {"tokens/s": [(row["step"], row["tokens_per_second"]) for row in steps
                                     if "tokens_per_second" in row]})
    return loss + speed + reward_charts(evals, best_step)


def reward_charts(evals: list[dict[str, Any]], best_step: int | None) -> str:
    """Preference runs: the implicit rewards of chosen and rejected answers, and how often chosen wins."""
    def series(key: str) -> list[tuple[float, float]]:
        return [(row["step"], row[key]) for row in evals if isinstance(row.get(key), (int, float))]

    rewards = {name: series(f"eval_rewards_{name}") for name in ("chosen", "rejected", "margin")}
    if not any(rewards.values()):
        return ""
    return (line_chart("validation rewards by step", rewards, best=best_step)
            + line_chart("reward accuracy by step (chosen above rejected)",
                         {"accuracy": series("eval_rewards_accuracy")}, best=best_step))


def metrics_section(results: dict[str, Any], metrics: list[dict[str, Any]]) -> str:
    evals = [row for row in metrics if row.get("type") == "eval"]
    final = results.get("final_metrics") or (evals[-1] if evals else {})
    best = results.get("best_metrics") or {}
    if not final and not best:
        return missing("no validation yet (no results.json and no eval event)")
    names = sorted({key for key in {**final, **best} if key.startswith(("eval_", "train_loss", "step", "epoch"))})
    note = "" if results else missing("no results.json: the run has not finished; final = its latest validation")
    return note + table([[name, shown(final.get(name)), shown(best.get(name))] for name in names],
                        ["metric", "final", f"best ({results.get('best_metric', '?')})"])


def eval_sections(run: RunDir) -> list[str]:
    if not run.evals_dir.is_dir():
        return []
    parts = ["<h3>Evaluations</h3>"]
    for evaluation in run.evals():
        results = evaluation.results()
        base = results.get("base") if isinstance(results.get("base"), dict) else {}
        scalars = [[key, shown(value), shown(base.get(key))] for key, value in results.items()
                   if isinstance(value, (int, float, str))]
        parts.append(f"<h4>{escape(evaluation.name)}</h4>")
        header = ["result", "fine-tuned", "base model"] if base else None
        parts.append(table([row if base else row[:2] for row in scalars], header) if scalars
                     else missing("no results.json"))
        per_class = results.get("per_class") or results.get("per_type")
        if isinstance(per_class, dict):
            columns = sorted({key for row in per_class.values() if isinstance(row, dict) for key in row})
            parts.append(table([[label, *(shown(row.get(c)) for c in columns)] for label, row in per_class.items()
                                if isinstance(row, dict)], ["class", *columns]))
        if evaluation.confusion_plot.is_file():
            parts.append(image(evaluation.confusion_plot, "confusion matrix"))
        parts.append(samples_table(read_jsonl(evaluation.samples_file), read_jsonl(evaluation.base_samples_file)))
    return parts


def samples_section(run: RunDir) -> list[str]:
    rows = read_jsonl(run.generation_samples_file)
    if not rows:
        return []
    last = max(int(row.get("step", 0)) for row in rows)
    return [f"<h3>Answers at the last validation (step {last})</h3>",
            samples_table([row for row in rows if int(row.get("step", 0)) == last], [])]


def samples_table(tuned: list[dict[str, Any]], base: list[dict[str, Any]]) -> str:
    if not tuned:
        return ""
    keys = [key for key in ("prompt", "reference", "answer", "finish_reason", "exact", "json_exact")
            if any(key in row for row in tuned)]
    header = [*keys, "base model's answer"] if base else keys
    rows = []
    for index, row in enumerate(tuned[:20]):
        cells = [shown(row.get(key)) for key in keys]
        if base:
            cells.append(shown((base[index] if index < len(base) else {}).get("answer")))
        rows.append(cells)
    return table(rows, header)


def export_section(run: RunDir) -> list[str]:
    report = read_json(run.export_report_file)
    if not report:
        return []
    rows = [[artifact, escape(json.dumps(details, default=str)[:600])] for artifact, details in report.items()]
    return ["<h3>Exports</h3>", table(rows, ["artifact", "report"], escaped=True)]


# ----------------------------------------------------------------------------------------------------------------
# Several runs
# ----------------------------------------------------------------------------------------------------------------


def compare_runs(runs: list[RunDir]) -> list[str]:
    names = [run.path.name for run in runs]
    series = {}
    for run in runs:
        steps = [row for row in run.metrics() if row.get("type") == "step"]
        series[f"{run.path.name} train"] = [(row["step"], row["loss"]) for row in steps]
    evals = {f"{run.path.name} eval": [(row["step"], row["eval_loss"]) for row in run.metrics()
                                       if row.get("type") == "eval" and "eval_loss" in row] for run in runs}
    chart = (line_chart("loss by step, every run", series, points=evals) if any(series.values())
             else missing("no run has logged a training step yet"))
    finals = [run.results().get("final_metrics") or {} for run in runs]
    metric_names = sorted({key for final in finals for key in final if key.startswith("eval_")})
    metrics = table([[name, *(shown(final.get(name)) for final in finals)] for name in metric_names],
                    ["final metric", *names]) if metric_names else missing("no run has finished a validation")
    return ["<h2>Runs side by side</h2>", chart, metrics, "<h3>Config differences</h3>", config_differences(runs)]


def config_differences(runs: list[RunDir]) -> str:
    configs = [run.config() for run in runs]
    keys = sorted({key for config in configs for key in config})
    rows = []
    for key in keys:
        values = [shown(config.get(key, "—")) for config in configs]
        if len(set(values)) > 1:
            rows.append("<tr class=\"differs\"><td>" + escape(key) + "</td>"
                        + "".join(f"<td>{escape(value)}</td>" for value in values) + "</tr>")
    if not rows:
        return missing("the runs' configs are the same")
    header = "<tr><th>key</th>" + "".join(f"<th>{escape(run.path.name)}</th>" for run in runs) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


# ----------------------------------------------------------------------------------------------------------------
# HTML pieces
# ----------------------------------------------------------------------------------------------------------------


def line_chart(title: str, lines: dict[str, list[tuple[float, float]]], *,
               points: dict[str, list[tuple[float, float]]] | None = None, events: list[int] | None = None,
               best: int | None = None) -> str:
    """An inline SVG chart: lines, marked points, dotted vertical lines at checkpoint events, a star at the best."""
    figure, axes = new_figure()
    for label, values in lines.items():
        if values:
            axes.plot(*zip(*values, strict=True), label=label, linewidth=1.4)
    for label, values in (points or {}).items():
        if values:
            axes.plot(*zip(*values, strict=True), "o", label=label, markersize=5)
    for step in events or []:
        axes.axvline(step, color="#999", linestyle=":", linewidth=0.8)
    best_points = [(x, y) for values in (points or {}).values() for x, y in values if x == best]
    if best_points:
        axes.plot(*best_points[0], "*", color="#d62728", markersize=14, label=f"best (step {best})")
    axes.set_title(title)
    axes.set_xlabel("optimizer step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return svg_of(figure)


def bar_chart(title: str, bars: list[tuple[str, float]]) -> str:
    figure, axes = new_figure()
    axes.bar([name for name, _ in bars], [value for _, value in bars], color="#1f77b4")
    axes.set_title(title)
    axes.tick_params(axis="x", labelrotation=30, labelsize=7)
    return svg_of(figure)


def scatter_chart(title: str, x_label: str, points: list[tuple[str, float]]) -> str:
    """The objective against one searched parameter: numbers on a numeric axis (log where they span decades),
    anything else as categories."""
    figure, axes = new_figure()
    numeric = [(number(x), y) for x, y in points]
    if points and all(x is not None for x, _ in numeric):
        axes.plot([x for x, _ in numeric], [y for _, y in numeric], "o", markersize=7)
        positive = [x for x, _ in numeric if x > 0]
        if len(positive) == len(numeric) and max(positive) / min(positive) >= 100:
            axes.set_xscale("log")
    else:
        axes.plot([str(x) for x, _ in points], [y for _, y in points], "o", markersize=7)
    axes.set_title(title)
    axes.set_xlabel(x_label)
    axes.grid(alpha=0.3)
    return svg_of(figure)


def new_figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 3.2))


def svg_of(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    svg = buffer.getvalue()
    return f"<div class=\"chart\">{svg[svg.index('<svg'):]}</div>"


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<div class=\"chart\"><img alt=\"{escape(alt)}\" src=\"data:image/png;base64,{data}\"></div>"


def table(rows: list[list[Any]], header: list[str] | None = None, *, escaped: bool = False) -> str:
    cell = (lambda value: str(value)) if escaped else (lambda value: escape(str(value)))
    head = "<tr>" + "".join(f"<th>{escape(name)}</th>" for name in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def missing(text: str) -> str:
    return f"<p class=\"missing\">{escape(text)}</p>"


def shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def escape(text: str) -> str:
    return html.escape(str(text), quote=True)
