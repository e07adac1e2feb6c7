"""What a task is: everything the shared pipeline needs to know about one kind of model and its data.

The training loop, the driver, export and the CLI never ask "which task is this?"; they ask the run's task to do the
task-specific part. A task module binds the stage modules (data, objectives, inference, evaluation) together, and
imports them only inside its methods, so that reading the registry (config validation does) stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class Task:
    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # what a validation event reports: names best_metric and tune.metric accept
    lora_task_type: ClassVar[str]  # PEFT's TaskType
    export_formats: ClassVar[tuple[str, ...]]
    gathers_predictions: ClassVar[bool] = False  # validation collects per-row predictions from every worker
    generates: ClassVar[bool] = False  # answers prompts with text (eval_generate applies)
    classifies_texts: ClassVar[bool] = False  # gives a label per text (served on /v1/classify)
    tags_words: ClassVar[bool] = False  # gives entity spans in a text (tuneforge.predict_tokens.Tagger)
    reads_datasets: ClassVar[bool] = False  # train_path may be a directory, glob or URI, and may stream (Ray Data)

    # --- config ------------------------------------------------------------------------------------------------
    def check_config(self, config: Any) -> None:
        """Raise ValueError for keys this task needs and the config lacks."""

    def reported_metrics(self, config: Any) -> tuple[str, ...]:
        """What a validation event of a run with this config reports (what best_metric and tune.metric may name)."""
        return self.metrics

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

    # --- models and training -----------------------------------------------------------------------------------
    def auto_model(self) -> Any:
        """The transformers Auto class that builds this task's model."""
        raise NotImplementedError

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        """Extra from_pretrained arguments (a classification head's size and label names)."""
        return {}

    def skeleton_config(self, model_config: Any, labels: list[str]) -> Any:
        """The HF config to build a weightless copy of the model from (LoRA targets are checked on it)."""
        return model_config

    def objective(self, model: Any, meta: Any) -> Any:
        """The nn.Module that turns a batch into (loss sum, target count); see train/objectives.py."""
        raise NotImplementedError

    # --- after training ----------------------------------------------------------------------------------------
    def load(self, path: str | Path) -> Any:
        """The task's inference object for a run or checkpoint (a Generator, a Predictor)."""
        raise NotImplementedError

    def evaluate(self, run: str | Path, data_path: str | Path, **options: Any) -> Any:
        """Score a run on a reference file: an EvalReport."""
        raise NotImplementedError

    def fidelity_check(self, loaded: Any, samples: list[dict[str, Any]], *, prompts: int, max_new_tokens: int) -> Any:
        """How export compares a merged or converted copy with `loaded` (the task's inference object) on the run's
        validation samples: an export.fidelity.FidelityCheck."""
        raise NotImplementedError

    def next_step_hint(self, run_dir: Path) -> str | None:
        """A command to try the trained run, shown when training ends."""
        return None


class LabelHeadTask(Task):
    """A task whose model is an encoder with a fresh head over the run's labels (sequence or token labels)."""

    def model_kwargs(self, labels: list[str]) -> dict[str, Any]:
        from tuneforge.models.loading import label_head

        return label_head(labels)

    def skeleton_config(self, model_config: Any, labels: list[str]) -> Any:
        model_config.num_labels = max(len(labels), 2)
        return model_config
