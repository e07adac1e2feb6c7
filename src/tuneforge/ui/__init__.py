"""Terminal display for the CLI, all of it: the consoles and one-line messages (`console`), the live training and
search displays (`progress`), the tables a command ends with (`tables`), and the silencing of library chatter
(`quiet`). The library never imports this package; it reports through the reporter and display objects it is given."""

from tuneforge.ui.console import (
    busy,
    console,
    describe_error,
    error_console,
    format_value,
    key_value_table,
    show_error,
    show_interrupted,
    show_monitor,
    show_note,
    show_notes,
    show_phase,
    show_plain_lines,
    show_serving,
    show_stream,
    show_written,
    show_wrote,
)
from tuneforge.ui.progress import RichReporter, SearchDisplay
from tuneforge.ui.quiet import quiet_libraries
from tuneforge.ui.tables import (
    show_best_run,
    show_checks,
    show_comparison,
    show_eval_view,
    show_export,
    show_plan,
    show_run_summary,
    show_runs,
    show_search_result,
)

__all__ = [
    "RichReporter",
    "SearchDisplay",
    "busy",
    "console",
    "describe_error",
    "error_console",
    "format_value",
    "key_value_table",
    "quiet_libraries",
    "show_best_run",
    "show_checks",
    "show_comparison",
    "show_error",
    "show_eval_view",
    "show_export",
    "show_interrupted",
    "show_note",
    "show_notes",
    "show_phase",
    "show_plain_lines",
    "show_monitor",
    "show_serving",
    "show_plan",
    "show_run_summary",
    "show_runs",
    "show_search_result",
    "show_stream",
    "show_written",
    "show_wrote",
]
