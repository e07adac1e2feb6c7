"""`tuneforge train`, `plan`, `tune`, `runs` and `report`: training and searching, and looking at what they left."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tuneforge import ui
from tuneforge.cli.app import (
    JoinTimeoutOption,
    SetOption,
    app,
    debugging,
    refuse_ignored,
    set_join_timeout,
)
from tuneforge.errors import TuneforgeError


@app.command()
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="the run's YAML config"),
    set_: Optional[list[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue RUN from its latest checkpoint"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (directory under output_dir)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run of the same name"),
    address: Optional[str] = typer.Option(None, "--address", help="join a Ray cluster (e.g. auto, ray://host:10001)"),
    join_timeout: float = JoinTimeoutOption,
    dashboard: bool = typer.Option(False, "--dashboard", help="start Ray's dashboard on 127.0.0.1"),
) -> None:
    """Fine-tune a model as CONFIG describes (or continue a run with --resume RUN)."""
    set_join_timeout(join_timeout)
    from tuneforge.cluster import dashboard_url
    from tuneforge.config import load_config
    from tuneforge.tasks import get_task
    from tuneforge.train import resume as resume_run
    from tuneforge.train import train as train_run

    refuse_ignored([
        (resume and config, f"give CONFIG or --resume RUN, not both: a resumed run keeps its config.yaml; drop {config}"),
        (resume and name, "--name names a new run; a resumed run keeps its directory, so drop --name"),
        (resume and overwrite, "--overwrite replaces a run; --resume continues one, so drop one of them"),
    ])
    overrides = list(set_ or []) + ([f"run_name={name}"] if name else [])
    with ui.RichReporter(debug=debugging(ctx)) as reporter:
        if resume:
            result = resume_run(resume, overrides=overrides, address=address, dashboard=dashboard, reporter=reporter,
                                debug=debugging(ctx))
        else:
            if config is None:
                raise TuneforgeError("give a CONFIG file, or --resume RUN to continue a run")
            loaded = load_config(config, overrides)
            ui.show_notes(loaded.notes)
            result = train_run(loaded, address=address, dashboard=dashboard, overwrite=overwrite, reporter=reporter,
                               debug=debugging(ctx))
    hint = get_task(result.results.get("task")).next_step_hint(result.run_dir)
    ui.show_run_summary(result, hint=hint, dashboard=dashboard_url())


@app.command()
def plan(
    config: Path = typer.Argument(..., help="the run's YAML config"),
    set_: Optional[list[str]] = SetOption,
    png: Optional[Path] = typer.Option(None, "--png", help="where to write the learning-rate plot"),
) -> None:
    """Show what a run will do before it trains: data statistics, steps, epochs, checkpoint events, LR plot."""
    from tuneforge.config import load_config
    from tuneforge.plan import plot_learning_rates
    from tuneforge.train import prepare_run

    loaded = load_config(config, list(set_ or []))
    ui.show_notes(loaded.notes)
    prepared = prepare_run(loaded)
    ui.show_notes(prepared.data.notes)
    ui.show_plan(prepared)
    target = png or Path(prepared.config.output_dir) / "plans" / f"{loaded.source_name}-lr_schedule.png"
    plot_learning_rates(prepared.config, prepared.plan, target)
    ui.show_written("learning-rate schedule", target)


@app.command()
def tune(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="YAML with search_space: and tune: blocks"),
    set_: Optional[list[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue an interrupted search (its directory)"),
    address: Optional[str] = typer.Option(None, "--address", help="join a Ray cluster"),
    join_timeout: float = JoinTimeoutOption,
    auto: bool = typer.Option(False, "--auto", help="build the search from the task, model, data and machine, "
                              "judged by what the model generates (completes your search_space; --set keys stay fixed)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="with --auto: wall-clock time for the whole "
                                         "search, e.g. 30m, 1h30m, 900 (seconds); default 30m"),
) -> None:
    """Search hyperparameters with Ray Tune; every trial is a full tuneforge run."""
    set_join_timeout(join_timeout)
    from tuneforge.config import TuneSettings, load_config
    from tuneforge.tune import load_experiment_config, objective_direction, search
    from tuneforge.tune.auto import parse_duration

    refuse_ignored([
        (resume and config, f"give CONFIG or --resume EXPERIMENT, not both: a search keeps its config; drop {config}"),
        (resume and set_, "--set cannot change a resumed search (its trials keep their config); drop --set"),
        (resume and auto, "--auto builds a new search, and a resumed search keeps the space it started with; drop "
                          "--auto to continue it"),
        (budget and not auto, "--budget is the time of an --auto search; add --auto (or set tune.time_budget_s)"),
    ])
    budget_s = parse_duration(budget) if budget else None
    if resume:
        loaded = load_experiment_config(resume)
    elif config is None:
        raise TuneforgeError("give a CONFIG file, or --resume EXPERIMENT to continue a search")
    else:
        loaded = load_config(config, list(set_ or []))
    ui.show_notes(loaded.notes)
    metric, _ = objective_direction(loaded, loaded.tune or TuneSettings())
    with ui.SearchDisplay(metric) as display:
        result = search(loaded, address=address, resume_dir=resume, display=display, debug=debugging(ctx), auto=auto,
                        budget_s=budget_s)
    ui.show_search_result(result)
    from tuneforge.report import write_report

    ui.show_phase(f"report: {write_report([result.experiment_dir])}")


runs_app = typer.Typer(help="Look at runs and searches under an output directory.", no_args_is_help=True)


app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(directory: Path = typer.Argument(Path("runs"), help="output_dir to look in")) -> None:
    """Every run and search with its status and best metric."""
    from tuneforge.rundir import list_runs

    ui.show_runs(directory, list_runs(directory))


@runs_app.command("best")
def runs_best(experiment: Path = typer.Argument(..., help="a search's directory")) -> None:
    """The best trial of a search: its objective, hyperparameters and checkpoint."""
    from tuneforge.tune import read_best_run

    ui.show_best_run(experiment, read_best_run(experiment))


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="one run directory, several to compare, or a search's directory"),
    output: Optional[Path] = typer.Option(None, "--output", help="the HTML file (default: report.html in the run or "
                                          "search, ./report.html for several runs)"),
) -> None:
    """Write one self-contained HTML page about a run (or several side by side, or a search): config, plan, curves,
    metrics, evaluations, answers, exports; a search's trials and objective. Opens without network access."""
    from tuneforge.report import write_report

    ui.show_phase(f"report: {write_report(runs, output)}")
