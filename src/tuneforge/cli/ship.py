"""`tuneforge export`, `serve`, `monitor` and `doctor`: taking a run elsewhere, serving it, watching it, and checking
the machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tuneforge import ui
from tuneforge.cli.app import (
    JoinTimeoutOption,
    app,
    set_join_timeout,
)
from tuneforge.errors import TuneforgeError


@app.command()
def serve(
    runs: list[Path] = typer.Argument(..., help="run directories, checkpoints, merged exports or GGUF files to serve"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="a GGUF LoRA adapter to apply to the GGUF file served"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: this machine only)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    replicas: int = typer.Option(1, "--replicas", min=1, help="replicas of the model server"),
    autoscale: Optional[str] = typer.Option(None, "--autoscale", metavar="MIN:MAX", help="autoscale replicas"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR",
                                              help="require 'Authorization: Bearer <key>' with the key in $VAR"),
    max_tokens: int = typer.Option(1024, "--max-tokens-limit", min=1, help="largest max_tokens a request may ask"),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="concurrent requests generated together"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)"),
    join_timeout: float = JoinTimeoutOption,
    no_ui: bool = typer.Option(False, "--no-ui", help="no playground page at / (the API only)"),
) -> None:
    """Serve fine-tuned models over HTTP in OpenAI's API shape (chat, completions, classify, tag) on Ray Serve,
    with a playground page at / to try them side by side in a browser."""
    set_join_timeout(join_timeout)
    import signal
    import time

    from tuneforge.serve import Limits, ServeOptions, start, stop
    from tuneforge.serve.server import api_key_from_env, parse_autoscale

    options = ServeOptions(host=host, port=port, replicas=replicas, autoscale=parse_autoscale(autoscale),
                           api_key=api_key_from_env(api_key_env), address=address, gguf_lora=lora,
                           limits=Limits(max_tokens=max_tokens), max_batch_size=max_batch_size, ui=not no_ui)
    with ui.busy(f"starting {len(runs)} model(s) on Ray Serve"):
        served = start(runs, options)
    ui.show_serving(served.url, served.kinds, api_key=options.api_key is not None,
                    exposed=host not in ("127.0.0.1", "localhost", "::1"), playground=not no_ui)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop: the same clean stop
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ui.show_phase("stopping: requests in flight finish first")
    finally:
        stop()


@app.command()
def monitor(
    address: Optional[str] = typer.Option(None, "--address", help="a running Ray cluster (default: start one here "
                                          "for `tuneforge train --address` to join)"),
    join_timeout: float = JoinTimeoutOption,
    directory: Path = typer.Option(Path("tuneforge-monitor"), "--dir", help="where prometheus.yml, Prometheus's "
                                   "data and the Grafana folder go"),
    host: str = typer.Option("127.0.0.1", "--host", help="address Prometheus, Grafana and the dashboard listen on"),
    prometheus_port: int = typer.Option(9090, "--prometheus-port", min=1, max=65535),
    grafana_port: int = typer.Option(3000, "--grafana-port", min=1, max=65535),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", min=1, max=65535),
    scrape_interval: float = typer.Option(2.0, "--scrape-interval", min=1.0, help="seconds between scrapes"),
) -> None:
    """Watch training, searches and serving live: Prometheus on Ray's metrics, Ray's dashboard, a Grafana folder."""
    set_join_timeout(join_timeout)
    import signal
    import time

    from tuneforge.observe.monitor import MonitorOptions, start_monitor

    options = MonitorOptions(address=address, directory=directory, host=host, prometheus_port=prometheus_port,
                             grafana_port=grafana_port, dashboard_port=dashboard_port,
                             scrape_interval_s=scrape_interval)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop: the same clean stop
    with ui.busy("starting Prometheus" + ("" if address else " and Ray")):
        watching = start_monitor(options)
    try:
        ui.show_monitor(watching)
        while watching.running():
            watching.refresh_targets()
            time.sleep(5)
        raise TuneforgeError(f"prometheus stopped: see {directory / 'prometheus.log'}")
    except KeyboardInterrupt:
        ui.show_phase("stopping Prometheus")
    finally:
        watching.stop()


@app.command()
def export(
    run: Path = typer.Argument(..., help="a run directory (uses best/) or a checkpoint directory"),
    format_: str = typer.Option("merged", "--format", help="merged | gguf | gguf-lora"),
    quant: str = typer.Option("q8_0", "--quant", help="gguf: f16 | q8_0 | q4_0 | q4_k_m"),
    output: Optional[Path] = typer.Option(None, "--output", help="directory for the artifacts (default RUN/export)"),
    with_base: bool = typer.Option(False, "--with-base", help="gguf-lora: also write the base model as GGUF"),
    prompts: int = typer.Option(8, "--prompts", min=1, help="validation prompts for the fidelity/parity checks"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
) -> None:
    """Export for local use: merged HF weights, a GGUF model, or a GGUF LoRA adapter; always checked."""
    from tuneforge.export import ExportSettings, export_model

    settings = ExportSettings(quant=quant, output_dir=output, with_base=with_base, prompts=prompts,
                              max_new_tokens=max_new_tokens)
    ui.show_phase(f"exporting {run} as {format_}{'' if format_ == 'merged' else ' (' + quant + ')'}")
    ui.show_export(export_model(run, format_, settings))


@app.command()
def doctor(
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="run one llama.cpp generation (in a child process)"),
    ray: bool = typer.Option(True, "--ray/--no-ray", help="time a local Ray start"),
    as_json: bool = typer.Option(False, "--json", help="print the checks as JSON"),
) -> None:
    """Check this machine: versions, CPU features, training precision, threads, llama.cpp, bundled models, Ray.
    Paste the output into bug reports."""
    from tuneforge.doctor import as_dict, exit_code, render, run_checks

    with ui.busy("checking") as status:
        checks = run_checks(smoke=smoke, ray=ray, progress=status.update)
    if as_json:
        sys.stdout.write(json.dumps(as_dict(checks), indent=2) + "\n")
    else:
        ui.show_plain_lines(render(checks))
    raise typer.Exit(exit_code(checks))
