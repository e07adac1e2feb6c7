"""The task registry. Adding a task: write a module with a `Task` subclass and add an instance to TASKS."""

from __future__ import annotations

from tuneforge.errors import TuneforgeError
from tuneforge.tasks.base import Task
from tuneforge.tasks.causal_lm import CausalLM
from tuneforge.tasks.classification import SequenceClassification
from tuneforge.tasks.token_classification import TokenClassification

TASKS: dict[str, Task] = {task.name: task for task in (CausalLM(), SequenceClassification(), TokenClassification())}
ALIASES = {"instruction_tuning": "causal_lm"}  # Anyscale's name for the same thing


def get_task(name: str | None) -> Task:
    """The task called `name` (checkpoints written before tasks had names are causal LMs)."""
    name = ALIASES.get(name or "causal_lm", name or "causal_lm")
    try:
        return TASKS[name]
    except KeyError:
        raise TuneforgeError(f"unknown task '{name}'; tuneforge knows {', '.join(TASKS)}") from None


__all__ = ["ALIASES", "TASKS", "Task", "get_task"]
