"""Causal language modelling (SFT): chat, prompt/completion or plain-text rows; loss on the answer tokens; the model
learns to stop at its end-of-turn token. Inference generates; evaluation scores loss and what the model generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.tasks.base import Task
from tuneforge.taskspec import CAUSAL_LM


class CausalLM(Task):
    spec = CAUSAL_LM

    def prepare_data(self, config: Any, tokenizer: Any, max_length: int | None, progress: Any = None) -> Any:
        from tuneforge.data.prepare import prepare_causal
        from tuneforge.data.streaming import prepare_streamed_causal, wants_streaming

        if wants_streaming(config):
            return prepare_streamed_causal(config, tokenizer, max_length, progress=progress)
        return prepare_causal(config, tokenizer, max_length)

    def run_facts(self, config: Any, tokenizer: Any, data: Any) -> dict[str, Any]:
        from tuneforge.data.causal import end_of_turn_token_ids

        return {"stop_token_ids": end_of_turn_token_ids(tokenizer), "system_prompt": data.system_prompt,
                "answer_schema": data.answer_schema}

    def collate(self, examples: list[Any], pad_id: int, *, padding: str, context_length: int,
                multiple_of: int | None) -> dict[str, Any]:
        from tuneforge.data.collate import collate_causal, collate_causal_padding_free

        if padding == "free":
            return collate_causal_padding_free(examples)
        return collate_causal(examples, pad_id, padding=padding, context_length=context_length, multiple_of=multiple_of)

    def padding_free_blocker(self, config: Any, model_config: Any, context_length: int) -> str | None:
        from tuneforge.models.padding_free import padding_free_blocker

        if config.padding != "longest" or config.pad_to_multiple_of:
            return "the config asks for padded batch shapes (padding: max_length or pad_to_multiple_of)"
        return padding_free_blocker(model_config, context_length)

    def objective(self, model: Any, meta: Any, config: Any) -> Any:
        from tuneforge.models.objectives import CausalLMObjective

        return CausalLMObjective(model)

    def load(self, path: str | Path) -> Any:
        from tuneforge.generate import Generator

        return Generator.from_path(path)

    def evaluate(self, run: str | Path, data_path: str | Path, **options: Any) -> Any:
        from tuneforge.evaluate import evaluate_causal

        options["batch_size"] = min(options.get("batch_size", 8), 8)  # generation batches: memory grows with length
        return evaluate_causal(run, data_path, **options)

    def eval_view(self, report: Any) -> Any:
        from tuneforge.eval_views import causal_view

        return causal_view(report)

    def fidelity_check(self, loaded: Any, samples: list[dict[str, Any]], *, prompts: int, max_new_tokens: int) -> Any:
        from tuneforge.fidelity import generation_check

        return generation_check(loaded, samples, prompts, max_new_tokens)

    def next_step_hint(self, run_dir: Path) -> str | None:
        return f"tuneforge generate {run_dir} --prompt \"...\""
