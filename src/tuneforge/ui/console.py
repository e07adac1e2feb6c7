"""The two consoles and the small pieces every display uses: notes, one-line errors, phases, key/value tables."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from tuneforge.errors import TuneforgeError

console = Console()
error_console = Console(stderr=True)  # errors, and spinners that must stay off a stdout of JSON lines


# The library's messages are plain text: escaped, a bracket in one ("pip install 'tuneforge[mlflow]'") stays visible.
def show_note(message: str) -> None:
    console.print(f"[yellow]note:[/yellow] {escape(message)}", highlight=False)


def show_notes(notes: Iterable[str]) -> None:
    for note in notes:
        show_note(note)


def show_phase(message: str) -> None:
    console.print(f"[dim]· {escape(message)}[/dim]")


def show_error(message: str) -> None:
    """Bad input ends in this one red line on stderr."""
    error_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def show_stopped(message: str) -> None:
    error_console.print(f"[yellow]{escape(message)}[/yellow]")


def show_interrupted() -> None:
    error_console.print("[yellow]interrupted[/yellow]")


def describe_error(exc: BaseException) -> str:
    """One line. An OSError that escaped the library (a full disk, a read-only or missing output directory) names
    the path and the reason, without the errno noise."""
    if isinstance(exc, OSError) and not isinstance(exc, TuneforgeError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc} (check the path, its permissions and free disk space)"
    return str(exc)


def busy(message: str) -> Status:
    """A transient spinner on stderr (stdout may be the command's JSON lines); `.update(text)` changes its text."""
    return error_console.status(message)


def show_written(what: str, path: Any) -> None:
    console.print(f"{what}: {path}")


def show_wrote(count: int, what: str, path: Any) -> None:
    console.print(f"wrote {count} {what} to {path}")


def show_plain_lines(lines: Iterable[str]) -> None:
    """Text that is shown as is: no markup, no highlighting, no wrapping."""
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def show_stream(prompt: str, pieces: Iterable[str]) -> None:
    """A prompt, then its completion as it is generated."""
    console.print(f"[bold cyan]> {prompt}[/bold cyan]")
    for piece in pieces:
        console.out(piece, end="", highlight=False)
    console.out("")


def key_value_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="dim")
    table.add_column()
    for key, value in rows:
        table.add_row(key, format_value(value))
    return table


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def show_monitor(monitor: Any) -> None:
    """Where to look while the monitor runs, and how to join its cluster."""
    console.print(f"Prometheus: [bold]{monitor.prometheus_url}[/bold]  (scraping Ray's metrics agents every "
                  f"{monitor.options.scrape_interval_s:g} s; tuneforge's series are ray_tuneforge_*)", highlight=False)
    if monitor.dashboard_url:
        console.print(f"Ray dashboard: [bold]{monitor.dashboard_url}[/bold]  (it asks for the cluster's token: "
                      "`ray get-auth-token`; its Metrics tab shows Ray's panels once Grafana runs)", highlight=False)
    absent = "" if monitor.grafana_installed else " (not installed on this machine: run it where it is)"
    console.print(f"Grafana{absent}: {monitor.grafana_url} once this runs:", highlight=False)
    console.print(f"  {monitor.grafana_command}", highlight=False, soft_wrap=True)
    if monitor.options.address is None:
        console.print(f"Train on this cluster: [bold]{monitor.join_command('train CONFIG')}[/bold]"
                      "  (Ctrl-C stops the monitor and its Ray)", highlight=False, soft_wrap=True)
    else:
        console.print("Ctrl-C stops the monitor (the cluster keeps running)")
    for note in monitor.notes:
        show_note(note)


def show_serving(url: str, kinds: dict[str, str], *, api_key: bool, exposed: bool, playground: bool = True) -> None:
    """Where the API listens, what it serves (`kinds`: model id -> chat, classify or tag), where the playground page
    is, and a request to paste: a chat request to the first model that chats, else one to the first model's own
    endpoint."""
    model_ids = list(kinds)
    if exposed and not api_key:
        show_note("the server listens beyond this machine with no API key: anyone who can reach it can use it "
                  "(set one with --api-key-env VAR)")
    console.print(f"serving [bold]{', '.join(model_ids)}[/bold] at [bold]{url}/v1[/bold]  (Ctrl-C stops)")
    if playground:
        console.print(f"  playground: [bold]{url}/[/bold] in a browser" + ("  (it asks for the API key)" if api_key else ""))
    header = ' -H "Authorization: Bearer $KEY"' if api_key else ""
    chatting = [model for model, kind in kinds.items() if kind == "chat"]
    if chatting:
        route, body = "chat/completions", {"model": chatting[0], "messages": [{"role": "user", "content": "Hello"}],
                                           "max_tokens": 64}
    else:  # classifiers and taggers: /v1/classify and /v1/tag take the same body
        route, body = kinds[model_ids[0]], {"model": model_ids[0], "input": ["Hello"]}
    console.print(f"  curl {url}/v1/{route} -H 'Content-Type: application/json'{header} -d '{json.dumps(body)}'",
                  highlight=False, soft_wrap=True)
