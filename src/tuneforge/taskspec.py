"""What a task *is*, as data: its name, the metrics its validation reports, what it can do (generate text, label
texts, tag words), its export formats, PEFT task type, the transformers class that builds its model and the Hub's
pipeline tag.

This module is a leaf below every stage: the config validates against it, `models` builds from it, `train`,
`export`, `serve` and the CLI read its flags. What a task *does* (read its data, batch it, score it, load it for
inference) is bound in `tuneforge.tasks`, which sits above the stages it binds; see ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.errors import TuneforgeError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    metrics: tuple[str, ...]  # what a validation event reports: names best_metric and tune.metric accept
    lora_task_type: str  # PEFT's TaskType
    auto_model: str  # the transformers Auto class that builds the model, by name
    export_formats: tuple[str, ...]
    pipeline_tag: str  # the Hugging Face Hub's name for what the model does (its model card's pipeline_tag)
    label_head: bool = False  # an encoder with a fresh head over the run's labels (num_labels, id2label)
    generates: bool = False  # answers prompts with text (eval_generate applies; served on /v1/chat/completions)
    classifies_texts: bool = False  # a label per text (served on /v1/classify)
    tags_words: bool = False  # entity spans in a text
    gathers_predictions: bool = False  # validation collects per-row predictions from every worker
    reads_datasets: bool = False  # train_path may be a directory, glob or URI, and may stream (Ray Data)
    learns_preferences: bool = False  # trains on preferred vs rejected answers (loss_type, beta, reference apply)
    required_keys: tuple[tuple[str, str], ...] = ()  # (config key, what it is) the task cannot run without

    def check_config(self, config: Any) -> None:
        """Raise ValueError for keys this task needs and the config lacks."""
        for key, meaning in self.required_keys:
            if not getattr(config, key):
                raise ValueError(f"{self.name} needs {key} ({meaning})")

    def reported_metrics(self, config: Any) -> tuple[str, ...]:
        """What a validation event of a run with this config reports (what best_metric and tune.metric may name)."""
        if not (self.generates and config.eval_generate):
            return self.metrics
        from tuneforge.scoring import JSON_METRICS, TEXT_METRICS, user_metric_name

        scored = TEXT_METRICS + (JSON_METRICS if config.target_format != "text" else ())
        users = tuple(user_metric_name(spec) for spec in config.eval_metrics or ())
        return (*self.metrics, *(f"eval_{name}" for name in scored + users), "eval_generate_seconds")

    @property
    def serves(self) -> bool:
        return self.generates or self.classifies_texts or self.tags_words


CAUSAL_LM = TaskSpec(
    name="causal_lm", metrics=("eval_loss", "eval_perplexity"), lora_task_type="CAUSAL_LM",
    auto_model="AutoModelForCausalLM", export_formats=("merged", "gguf", "gguf-lora"),
    pipeline_tag="text-generation", generates=True, reads_datasets=True)
CLASSIFICATION = TaskSpec(
    name="classification", metrics=("eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1"),
    lora_task_type="SEQ_CLS", auto_model="AutoModelForSequenceClassification", export_formats=("merged",),
    pipeline_tag="text-classification", label_head=True, classifies_texts=True, gathers_predictions=True,
    required_keys=(("text_fields", "the columns that make the input text"),
                   ("label_field", "the column holding the label")))
TOKEN_CLASSIFICATION = TaskSpec(
    name="token_classification", metrics=("eval_loss", "eval_precision", "eval_recall", "eval_f1", "eval_accuracy"),
    lora_task_type="TOKEN_CLS", auto_model="AutoModelForTokenClassification", export_formats=("merged",),
    pipeline_tag="token-classification", label_head=True, tags_words=True, gathers_predictions=True)

# Preference tuning of a causal LM (DPO, IPO, ORPO, SimPO, KTO): trained on pairs of answers, used like an SFT run.
PREFERENCE = TaskSpec(
    name="preference", metrics=("eval_loss", "eval_rewards_chosen", "eval_rewards_rejected", "eval_rewards_accuracy",
                                "eval_rewards_margin", "eval_logps_chosen", "eval_logps_rejected"),
    lora_task_type="CAUSAL_LM", auto_model="AutoModelForCausalLM", export_formats=("merged", "gguf", "gguf-lora"),
    pipeline_tag="text-generation", generates=True, learns_preferences=True)

SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (CAUSAL_LM, CLASSIFICATION, TOKEN_CLASSIFICATION, PREFERENCE)}
ALIASES = {"instruction_tuning": "causal_lm"}  # Anyscale's name for the same thing


def canonical_name(name: str | None) -> str:
    """A task name with aliases resolved (checkpoints written before tasks had names are causal LMs)."""
    return ALIASES.get(name or "causal_lm", name or "causal_lm")


def get_spec(name: str | None) -> TaskSpec:
    name = canonical_name(name)
    try:
        return SPECS[name]
    except KeyError:
        raise TuneforgeError(f"unknown task '{name}'; tuneforge knows {', '.join(SPECS)}") from None


def register_spec(spec: TaskSpec) -> None:
    """Add a task's spec (tuneforge.tasks.register does this with the task's binding)."""
    SPECS[spec.name] = spec
