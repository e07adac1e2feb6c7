"""Generation at validation (`eval_generate`): at every checkpoint event the model answers the first validation
rows greedily, and the answers are scored against the rows' own answers (stop rate, exact match, JSON metrics,
the user's metrics). Each worker answers its share of the rows; every worker scores the gathered answers, so all
report the same metrics to Ray Train (which ranks checkpoints by them)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tuneforge.hardware import autocast_context
from tuneforge.rundir import CheckpointMeta

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig


def generation_pairs(rows: list[dict[str, Any]], limit: int) -> list[tuple[Any, str]]:
    """(prompt, reference answer) for the first `limit` rows that have an answer (chat rows ending with the
    assistant's reply, prompt/completion rows)."""
    from tuneforge.generate import prompt_of

    pairs = []
    for index, row in enumerate(rows):
        if "messages" not in row and "prompt" not in row:
            continue
        prompt, row = prompt_of(row, f"validation row {index + 1}")
        if "reference" in row:
            pairs.append((prompt, row["reference"]))
    return pairs[:limit]


class ValidationGeneration:
    def __init__(self, config: TrainConfig, rows: list[dict[str, Any]], tokenizer: Any, meta: CheckpointMeta):
        from tuneforge.constrain import constraint_for
        from tuneforge.generate import GenerationSettings

        settings = config.eval_generate
        assert settings is not None
        self.pairs = generation_pairs(rows, settings.max_rows)
        self.tokenizer = copy.deepcopy(tokenizer)  # the Generator pads on the left; training's tokenizer stays as is
        self.meta = meta
        self.settings = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
        self.constraint = constraint_for(any_json=settings.any_json, schema_path=settings.json_schema,
                                         run_schema=settings.constrain == "schema", answer_schema=meta.answer_schema)
        self.target_format = config.target_format
        self.user_metrics = tuple(config.eval_metrics or ())

    def run(self, model: torch.nn.Module, *, rank: int, world_size: int, device: torch.device, precision: str,
            gather: Callable[[Any], list[Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(eval_ metrics, one sample row per answer) for this event."""
        from tuneforge.evaluate import score_completions
        from tuneforge.generate import Generator

        started = time.perf_counter()
        mine = list(range(rank, len(self.pairs), world_size))
        generator = Generator(model, self.tokenizer, self.meta)
        model.eval()
        try:
            with torch.no_grad(), autocast_context(precision, device):
                completions = generator.complete([self.pairs[i][0] for i in mine], self.settings,
                                                 constraint=self.constraint)
        finally:
            model.train()
        answered = sorted((pair for part in gather(list(zip(mine, completions, strict=True))) for pair in part),
                          key=lambda pair: pair[0])
        seconds = time.perf_counter() - started
        scored = score_completions(self.pairs, [completion for _, completion in answered],
                                   target_format=self.target_format, user_metrics=self.user_metrics, seconds=seconds)
        metrics = {f"eval_{name}": value for name, value in scored.metrics.items()}
        metrics["eval_generate_seconds"] = round(seconds, 3)
        return metrics, scored.samples


def check_generation_setup(config: TrainConfig, data: Any) -> None:
    """Before training: eval_generate has answered validation rows to score, its schema compiles, the user's
    metrics import, and a JSON metric chosen as best_metric has JSON answers to measure."""
    from tuneforge.constrain import constraint_for
    from tuneforge.errors import ConfigError, DataError, TuneforgeError
    from tuneforge.scoring import JSON_METRICS, detect_json, load_user_metric

    settings = config.eval_generate
    assert settings is not None
    source = config.valid_path or config.train_path
    if not data.valid:
        raise DataError(f"{source}: eval_generate needs validation rows; give valid_path or a valid_split above 0")
    pairs = generation_pairs(data.valid_rows, settings.max_rows)
    if not pairs:
        raise DataError(f"{source}: eval_generate needs validation rows with an answer to compare with (chat rows that "
                        f"end with the assistant's message, or prompt/completion rows); these rows are {data.shape} rows")
    try:
        constraint_for(any_json=settings.any_json, schema_path=settings.json_schema,
                       run_schema=settings.constrain == "schema", answer_schema=data.answer_schema, source=source)
    except TuneforgeError as exc:
        raise ConfigError(f"{config.source_of('eval_generate')}: eval_generate: {exc}") from None
    for spec in config.eval_metrics or ():
        try:
            load_user_metric(spec)
        except ValueError as exc:
            raise ConfigError(f"{config.source_of('eval_metrics')}: eval_metrics: {exc}") from None
    chosen = config.best_metric.removeprefix("eval_")
    if chosen in JSON_METRICS and config.target_format == "auto" and not detect_json([r for _, r in pairs]):
        raise DataError(f"{source}: best_metric {config.best_metric} scores JSON answers, but the validation answers "
                        "are not JSON; choose eval_exact_match, or set target_format: json to score them as JSON")
