"""The `tuneforge` command. Each command parses its arguments, calls the library and hands what it returned to one
display function in `tuneforge.ui`; nothing else lives here. Commands are grouped by what a user is doing: `train`
(train, plan, tune, runs, report), `use` (generate, eval, predict, check), `ship` (export, serve, monitor, doctor)."""

from __future__ import annotations

from tuneforge.cli.app import app

# Each module registers its commands on `app`; `tuneforge --help` lists them in this order.
# isort: off
from tuneforge.cli import train  # noqa: F401, E402
from tuneforge.cli import use  # noqa: F401, E402
from tuneforge.cli import ship  # noqa: F401, E402
# isort: on


def main() -> None:
    app()


__all__ = ["app", "main"]
