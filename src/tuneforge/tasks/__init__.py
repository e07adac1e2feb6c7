"""The task registry: each task's binding (`Task`), found by name. Adding a task: a `TaskSpec` and a `Task`
subclass binding its stage code, then `register(task)` (the built-in tasks are registered below)."""

from __future__ import annotations

from tuneforge.tasks.base import Task
from tuneforge.tasks.causal_lm import CausalLM
from tuneforge.tasks.classification import SequenceClassification
from tuneforge.tasks.preference import Preference
from tuneforge.tasks.token_classification import TokenClassification
from tuneforge.taskspec import get_spec, register_spec

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make a task known to every stage: its spec (config, models, export, serve) and its binding."""
    register_spec(task.spec)
    TASKS[task.name] = task
    return task


def get_task(name: str | None) -> Task:
    """The binding of the task called `name` (aliases resolved; a checkpoint without a task is a causal LM; an
    unknown name is a TuneforgeError naming the known ones)."""
    return TASKS[get_spec(name).name]


for _builtin in (CausalLM(), SequenceClassification(), TokenClassification(), Preference()):
    register(_builtin)

__all__ = ["TASKS", "Task", "get_task", "register"]
