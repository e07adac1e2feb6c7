"""The `tuneforge` Typer app and what every command shares: one-line errors, --debug, options used by several
commands, refusing options that would have no effect, writing JSON lines."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from tuneforge import ui
from tuneforge.errors import Stopped, TuneforgeError

# Kept, no public API does it: Typer has no hook for how a usage error is shown, and since it vendors click (0.26)
# it exports neither UsageError nor NoArgsIsHelpError (fastapi/typer#1867). The public BadParameter's base is
# click's UsageError in every Typer of typer>=0.12, vendored click or not; NoArgsIsHelpError (click 8.2+, a bare
# `tuneforge`, which Typer answers with the help) lives beside it.
USAGE_ERROR = typer.BadParameter.__base__
HELP_REQUEST = getattr(sys.modules[USAGE_ERROR.__module__], "NoArgsIsHelpError", ())


class OneLineErrors(TyperGroup):
    """Every error a user can fix ends the same way: one red line and exit code 2, instead of Typer's boxed usage
    message (a bad option value, a missing argument) or a traceback (bad input the library refused)."""

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        with one_line_usage_errors(), friendly(ctx):
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except HELP_REQUEST:
        raise
    except USAGE_ERROR as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        ui.show_error(f"{exc.format_message()}{hint}")
        raise typer.Exit(2) from None


@contextlib.contextmanager
def friendly(ctx: typer.Context) -> Iterator[None]:
    """Around every command: bad input (a TuneforgeError, or an OSError the library let through) ends in one red
    line and exit code 2, Ctrl-C in exit code 130. With --debug, read from `ctx.obj` once the callback has set it,
    errors keep their traceback. A run stopped gracefully on SIGTERM says where it stopped and exits 143."""
    try:
        yield
    except Stopped as exc:  # SIGTERM honoured: not an error, but not done either (128 + SIGTERM, as shells say)
        ui.show_stopped(str(exc))
        raise typer.Exit(143) from None
    except (TuneforgeError, OSError) as exc:
        if debugging(ctx):
            raise
        ui.show_error(ui.describe_error(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        ui.show_interrupted()
        raise typer.Exit(130) from None


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Config-driven fine-tuning on Ray Train: train, plan, generate, and more. Add --debug for tracebacks.",
)

JoinTimeoutOption = typer.Option(60.0, "--join-timeout", min=0.1, metavar="SECONDS",
                                 help="with --address: how long to wait for the cluster's head before giving up")
SetOption = typer.Option(None, "--set", "-s", help="override a config key: --set learning_rate=3e-4 (repeatable)")
ConstrainOption = typer.Option(None, "--constrain", metavar="json|schema",
                               help="constrain answers: json (any JSON value, as --json) or schema (the run's answer "
                                    "schema, inferred from its training targets)")


@dataclass(frozen=True)
class GlobalOptions:
    """Options given before the command: the callback puts them on `ctx.obj`, which every command's ctx inherits."""

    debug: bool = False


def debugging(ctx: typer.Context) -> bool:
    return isinstance(ctx.obj, GlobalOptions) and ctx.obj.debug


@app.callback()
def options(ctx: typer.Context,
            debug: bool = typer.Option(False, "--debug", help="show tracebacks and Ray's logs on errors")) -> None:
    ctx.obj = GlobalOptions(debug=debug)
    if not debug:
        ui.quiet_libraries()


def set_join_timeout(seconds: float) -> None:
    from tuneforge import cluster

    cluster.set_join_timeout(seconds)


def refuse_ignored(conflicts: list[tuple[Any, str]]) -> None:
    """An option that would have no effect is refused, never silently ignored: (given, why) pairs."""
    for given, why in conflicts:
        if given:
            raise TuneforgeError(why)


def emit_lines(records: list[dict[str, Any]], output: Path | None, what: str) -> None:
    """One JSON line per record: written to OUTPUT (whole or not at all), else to stdout."""
    from tuneforge.atomic import write_text

    text = "\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\n"
    if output:
        write_text(output, text)
        ui.show_wrote(len(records), what, output)
    else:
        sys.stdout.write(text)


