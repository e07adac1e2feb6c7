"""What a task does: the binding of the stage code that differs between tasks (reading and batching its data, its
loss, loading it for inference, scoring it on a file, describing the scores, checking an export).

What a task *is* (name, metrics, capability flags, export formats) is its `spec`, a `tuneforge.taskspec.TaskSpec`
that the stages below this package read without importing it. A binding sits above the stages it binds: train,
export, serve and the CLI ask the run's binding (`tuneforge.tasks.get_task`) to do the task-specific part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tuneforge.taskspec import TaskSpec


class Task:
    spec: ClassVar[TaskSpec]

    @property
    def name(self) -> str:
        return self.spec.name

    # --- data --------------------------------------------------------------------------------------------------
    def prepare_data(self, config: Any, tokenizer: Any, max_length: int | None, progress: Any = None) -> Any:
        """Read, validate and tokenize train and validation rows: a PreparedData. `progress`, if given, receives
        {"type": "prepare", ...} events from work long enough to show a bar for (Ray Data's preparation)."""
        raise NotImplementedError

    def run_facts(self, config: Any, tokenizer: Any, data: Any) -> dict[str, Any]:
        """What later stages need from training, beyond the common fields of the checkpoint metadata."""
        return {}

    def validation_samples(self, data: Any) -> list[dict[str, Any]]:
        """Raw validation rows that export checks fidelity on (kept in the run: no later stage re-reads data)."""
        return [dict(row) for row in data.valid_rows]

    def collate(self, examples: list[Any], pad_id: int, *, padding: str, context_length: int,
                multiple_of: int | None) -> dict[str, Any]:
        """Rows -> tensors. `padding` is the config's, or "free" for padding-free batches (see below)."""
        raise NotImplementedError

    def padding_free_blocker(self, config: Any, model_config: Any, context_length: int) -> str | None:
        """Why this run cannot use padding-free batches (rows end to end, tuneforge.models.padding_free), or None."""
        return f"the {self.name} task trains on padded batches only"

    # --- training ----------------------------------------------------------------------------------------------
    def objective(self, model: Any, meta: Any, config: Any) -> Any:
        """The nn.Module that turns a batch into (loss sum, target count); see models/objectives.py."""
        raise NotImplementedError

    def needs_reference(self, config: Any) -> bool:
        """The loss compares the model with a frozen reference, whose log-probabilities train/reference.py
        computes once before training."""
        return False

    def resolved_keys(self, config: Any) -> dict[str, Any]:
        """Task settings left unset whose defaults the saved config should spell out."""
        return {}

    # --- after training ----------------------------------------------------------------------------------------
    def load(self, path: str | Path) -> Any:
        """The task's inference object for a run or checkpoint (a Generator, a Predictor, a Tagger)."""
        raise NotImplementedError

    def evaluate(self, run: str | Path, data_path: str | Path, **options: Any) -> Any:
        """Score a run on a reference file: an EvalReport."""
        raise NotImplementedError

    def eval_view(self, report: Any) -> Any:
        """How `tuneforge eval` shows an EvalReport: an evaluate.EvalView (tables and lines the CLI renders)."""
        from tuneforge.eval_views import results_view

        return results_view(report)

    def predictions(self, loaded: Any, texts: list[str], *, batch_size: int, threshold: float | None,
                    fallback: str | None, aggregation: str) -> list[dict[str, Any]]:
        """What `tuneforge predict` writes for each text (beside the text's input row)."""
        raise NotImplementedError(f"a {self.name} run does not label or tag texts")

    def fidelity_check(self, loaded: Any, samples: list[dict[str, Any]], *, prompts: int, max_new_tokens: int) -> Any:
        """How export compares a merged or converted copy with `loaded` (the task's inference object) on the run's
        validation samples: a fidelity.FidelityCheck."""
        raise NotImplementedError

    def next_step_hint(self, run_dir: Path) -> str | None:
        """A command to try the trained run, shown when training ends."""
        return None
