"""`tuneforge tune --auto`: a search built from the config's task, the model, the data and the machine, judged by
what the model generates, within a wall-clock budget.

    plan_auto_search   the metric, the ranges, the sampler and scheduler, and how many trials fit: a config with a
                       search_space and tune block that the ordinary search then runs (and tune_config.yaml keeps)
    measure_speed      the probe (tune.probe): a few real optimizer steps and one batch of validation generation,
                       in this process, before Ray starts, so that a budget too small is refused at once
    deadline_searcher  no trial starts that cannot reach its first validation event before the deadline (tune.deadline)
    deadline_stopper   a trial running at the deadline stops at its next validation event (its checkpoint is kept)

Why each range is what it is is written next to it (RANGES) and printed in the plan table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config import EvalGenerate, TrainConfig, TuneSettings
from tuneforge.errors import ConfigError
from tuneforge.tune.probe import PROBE_STEPS, TRIAL_STARTUP_S, Speed, measure_speed
from tuneforge.tune.space import FINE_TUNING

# Learning rates, log-uniform. LoRA's B matrix starts at zero and the adapter is small, so it wants rates about ten
# times full fine-tuning's; on small models and small data the best LoRA rates measured here were near 1e-3
# (ENVIRONMENT.md's quality table: 2e-4 gave 0.46 exact match, 1e-3 gave 0.82).
LORA_LR = (1.0e-4, 3.0e-3)
FULL_LR = (5.0e-6, 2.0e-4)
RANKS = [8, 16, 32]  # with lora_alpha = 2r, so the update's scale alpha/r stays 2 and rank and rate do not trade off
FIRST_GUESS = {"lora": {"learning_rate": 1.0e-3, "lora_config.r": 16, "fine_tuning": "lora"},
               "full": {"learning_rate": 5.0e-5}}
MIN_STEPS, MAX_STEPS = 100, 600  # optimizer steps a small-data fine-tune needs, at least and at most
MIN_TRIALS = 3  # the longest trial may take a third of the budget: TPE needs a few results to model
STARTUP_TRIALS = 2  # random trials before TPE models the results (Optuna's default of 10 never ends on a CPU budget)
# LoRA against full fine-tuning is searched only where the budget holds this many trials: one more dimension needs
# results on both sides, and a full fine-tune costs more per step (ENVIRONMENT.md: 1.2-1.4x LoRA's on CPU).
FULL_FT_MIN_TRIALS = 8
FULL_FT_STEP_COST = 1.5
FULL_FT_BYTES_PER_PARAMETER = 32  # fp32 weights, gradients and two Adam moments (16 B), doubled for activations
FULL_LR_RATIO = 0.1  # full fine-tuning wants about a tenth of LoRA's learning rate (LORA_LR vs FULL_LR)
MAX_GENERATE_ROWS = 64


@dataclass
class AutoParameter:
    key: str
    shown: str
    reason: str


@dataclass
class AutoPlan:
    config: TrainConfig  # with the search_space and tune block the search runs
    metric: str
    metric_reason: str
    parameters: list[AutoParameter]
    speed: Speed
    budget_s: float
    trials_fit: int
    sampler: str
    scheduler: str
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, value, why) rows for the plan table."""
        speed = self.speed
        rows = [("metric", self.metric, self.metric_reason)]
        rows += [(p.key, p.shown, p.reason) for p in self.parameters]
        rows += [
            ("sampler", self.sampler, "models which settings score well from the trials so far"),
            ("scheduler", self.scheduler, "stops a trial scoring in the bottom half at the same validation event"),
            ("probe", f"{speed.seconds_per_step:.2f} s/step, {speed.event_seconds:.1f} s/validation",
             f"{PROBE_STEPS} optimizer steps and one generation batch measured here ({speed.device}, "
             f"{speed.threads} threads)"),
            ("budget", f"{format_duration(self.budget_s)}, ~{self.trials_fit} full trials",
             "no trial starts that cannot reach its first validation before the deadline; one running then stops "
             "at its next validation"),
        ]
        return rows


def parse_duration(text: str) -> float:
    """'30m', '1h30m', '90s', '45' (seconds) -> seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", cleaned)
    if not parts or "".join(number + unit for number, unit in parts) != cleaned:
        raise ConfigError(f"--budget {text}: expected a duration such as 30m, 1h30m, 90s or 600 (seconds)")
    return sum(float(number) * {"h": 3600, "m": 60, "s": 1}[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


# ----------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------


def plan_auto_search(config: TrainConfig, budget_s: float, prepared: Any, speed: Speed | None = None,
                     concurrency: int = 1) -> AutoPlan:
    """The search `--auto` runs for `config` within `budget_s`: `prepared` is the run prepared as a trial would
    be (tuneforge.train.prepare_run); `speed` is measured by the probe unless given."""
    metric, metric_reason = choose_metric(config, prepared)
    config = configure_validation(config, prepared, metric)
    fixed = fixed_keys(config)
    user_space = dict(config.search_space or {})
    speed = speed or measure_speed(config, prepared)
    first_event = speed.first_event_seconds()
    if budget_s < first_event:
        raise ConfigError(f"--budget {format_duration(budget_s)} is too small: one trial needs ~{first_event:.0f} s "
                          f"to reach its first validation event on this machine ({speed.steps_per_epoch} steps at "
                          f"{speed.seconds_per_step:.2f} s, validation {speed.event_seconds:.0f} s, start "
                          f"{TRIAL_STARTUP_S:.0f} s); give --budget {math.ceil(first_event * MIN_TRIALS / 60)}m or more")
    parameters, space, notes = [], {}, []
    for key, spec, shown, reason in auto_dimensions(config, speed, budget_s / MIN_TRIALS):
        if key in fixed:
            notes.append(f"{key} fixed at {fixed[key]} (--set)")
        elif key in user_space or (key.startswith("lora_config.") and "lora_config" in user_space):
            notes.append(f"{key}: your search_space range kept")
        else:
            space[key] = spec
            parameters.append(AutoParameter(key, shown, reason))
    if config.uses_lora and "lora_config.r" in space and "lora_config.lora_alpha" not in {**user_space, **fixed}:
        parameters.append(AutoParameter("lora_config.lora_alpha", "2 × r", "the update scale alpha/r stays 2 "
                                        "whatever the rank, so the learning rate means the same for every rank"))
    parameters += [AutoParameter(key, describe_spec(spec), "your search_space") for key, spec in user_space.items()]
    longest = speed.trial_seconds(*longest_trial(config, space, speed))
    trials_fit = max(1, int(budget_s * concurrency // longest))
    method, reason = fine_tuning_choice(config, speed, trials_fit, fixed, user_space)
    if method:
        space[FINE_TUNING] = method
        parameters.append(AutoParameter(FINE_TUNING, "lora, full", reason))
        trials_fit = max(1, int(budget_s * concurrency // (longest * (1 + FULL_FT_STEP_COST) / 2)))
    else:
        notes.append(reason)
    epochs_spec = space.get("num_epochs") or user_space.get("num_epochs")
    settings = TuneSettings(
        search_alg="optuna", scheduler="asha", grace_period=1, reduction_factor=2,
        max_t=max_events(config, epochs_spec), num_samples=1000,  # the deadline ends the search, not the count
        metric=metric, mode="max", max_concurrent_trials=concurrency,
        points_to_evaluate=[first_guess(config, space)] if first_guess(config, space) else None,
        # Tune's own budget is the backstop only: a trial at the deadline may still reach its next validation.
        time_budget_s=budget_s + longest_event_gap(speed) + 60,
        lora_alpha_ratio=2.0 if "lora_config.r" in space else None,
        full_learning_rate_ratio=FULL_LR_RATIO if FINE_TUNING in space else None,
        startup_trials=STARTUP_TRIALS, experiment_name=(config.tune.experiment_name if config.tune else None),
        max_failures=config.tune.max_failures if config.tune else None,
    )
    searched = config.model_copy(update={"search_space": {**user_space, **space}, "tune": settings})
    return AutoPlan(searched, metric, metric_reason, parameters, speed, budget_s, trials_fit,
                    sampler=f"Optuna TPE ({STARTUP_TRIALS} random trials first, then model-based; a first guess "
                    "from the ranges' sweet spot)",
                    scheduler=f"ASHA on {metric}, grace 1 validation event, halving", notes=notes)


def fine_tuning_choice(config: TrainConfig, speed: Speed, trials_fit: int, fixed: dict[str, Any],
                       user_space: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the fine_tuning spec, why) where LoRA against full fine-tuning is worth a dimension, else (None, why not)."""
    if FINE_TUNING in user_space or "lora_config" in fixed:
        return None, "LoRA vs full fine-tuning: as you set it"
    if not config.uses_lora:
        return None, "LoRA vs full fine-tuning: not searched, the config fine-tunes fully (add a lora_config to compare)"
    needed = speed.model_parameters * FULL_FT_BYTES_PER_PARAMETER
    if not speed.memory_bytes or needed > speed.memory_bytes:
        return None, (f"LoRA vs full fine-tuning: not searched, a full fine-tune of {speed.model_parameters / 1e6:.0f} M "
                      f"parameters needs ~{needed / 2**30:.1f} GiB and the device has {speed.memory_bytes / 2**30:.1f}")
    if trials_fit < FULL_FT_MIN_TRIALS:
        return None, (f"LoRA vs full fine-tuning: not searched, the budget holds ~{trials_fit} trials and comparing "
                      f"the two needs {FULL_FT_MIN_TRIALS}+ (give a larger --budget)")
    return ({"choice": ["lora", "full"]},
            f"the model fits a full fine-tune (~{needed / 2**30:.1f} GiB of {speed.memory_bytes / 2**30:.0f}); full "
            f"trials use {FULL_LR_RATIO:g} x the sampled learning rate")


def choose_metric(config: TrainConfig, prepared: Any) -> tuple[str, str]:
    """The task's quality metric: what the trials are judged by (never the loss while a quality metric exists)."""
    from tuneforge.scoring import detect_json
    from tuneforge.taskspec import get_spec
    from tuneforge.train.generation import generation_pairs

    task = get_spec(config.task)
    if config.tune and config.tune.metric:
        return config.tune.metric, "your tune.metric"
    if task.generates:
        pairs = generation_pairs(prepared.data.valid_rows, MAX_GENERATE_ROWS)
        if not pairs:
            raise ConfigError(f"{config.source_of('train_path')}: --auto judges trials by the answers the model "
                              f"generates, and these {prepared.data.shape} rows have no answers to compare with; "
                              "use chat or prompt/completion rows, or tune with your own search_space and "
                              "tune.metric: eval_loss")
        if prepared.data.answer_schema is not None or detect_json([reference for _, reference in pairs]):
            return "eval_json_exact", "the targets are JSON: share of generated answers equal to the reference"
        return "eval_exact_match", "share of generated answers equal to the reference"
    if "eval_f1" in task.metrics:
        kind = "weighted over classes" if task.classifies_texts else "over entities"
        return "eval_f1", f"F1 {kind} on the validation rows"
    raise ConfigError(f"{config.source_of('task')}: --auto needs a quality metric and a {config.task} run reports "
                      f"none ({', '.join(task.metrics)}); tune with your own search_space and tune.metric")


def configure_validation(config: TrainConfig, prepared: Any, metric: str) -> TrainConfig:
    """A validation event every epoch, generation switched on where answers are scored, the best checkpoint by the
    search's metric, one kept per trial."""
    updates: dict[str, Any] = {"best_metric": metric, "best_metric_mode": "max", "num_checkpoints_to_keep": 1}
    if not config.max_steps:
        updates["checkpoint_every_n_epochs"] = 1
    if metric.removeprefix("eval_") in ("json_exact", "exact_match") and not config.eval_generate:
        updates["eval_generate"] = EvalGenerate(max_rows=MAX_GENERATE_ROWS,
                                                max_new_tokens=answer_token_budget(prepared),
                                                batch_size=min(32, MAX_GENERATE_ROWS))
    return config.model_copy(update=updates)


def answer_token_budget(prepared: Any) -> int:
    """New tokens validation may generate: the longest reference answer and a margin, so a run-on shows."""
    from tuneforge.train.generation import generation_pairs

    pairs = generation_pairs(prepared.data.valid_rows, MAX_GENERATE_ROWS)
    longest = max((len(prepared.tokenizer(reference)["input_ids"]) for _, reference in pairs), default=64)
    return min(512, int(longest * 1.25) + 16)


def fixed_keys(config: TrainConfig) -> dict[str, Any]:
    """Keys the user fixed with --set: not searched."""
    fixed = {}
    for key, source in config._sources.items():
        if key and source.startswith("--set"):
            dotted = ".".join(key)
            value: Any = config.model_dump(mode="json")
            for part in key:
                value = value.get(part) if isinstance(value, dict) else None
            fixed[dotted] = value
            if key == ("lora_config",):
                fixed.update({f"lora_config.{k}": v for k, v in (value or {}).items()})
    return fixed


def auto_dimensions(config: TrainConfig, speed: Speed, trial_budget: float) -> list[tuple[str, dict[str, Any], str, str]]:
    """(key, search_space spec, shown, why) for every dimension --auto searches on this config."""
    lora = config.uses_lora
    low, high = LORA_LR if lora else FULL_LR
    dims = [("learning_rate", {"loguniform": [low, high]}, f"{low:g} – {high:g}, log-uniform",
             ("LoRA adapters start at zero and want ~10× full fine-tuning's rates; small models and data sit high "
              "in this range" if lora else "full fine-tuning moves every weight: rates ten times below LoRA's"))]
    if lora:
        dims.append(("lora_config.r", {"choice": RANKS}, ", ".join(map(str, RANKS)),
                     "capacity of the adapter: 8 is the usual start, 32 where the task needs more"))
    epochs = epoch_range(speed, trial_budget, config)
    if epochs:
        dims.append(("num_epochs", {"randint": [epochs[0], epochs[1] + 1]}, f"{epochs[0]} – {epochs[1]}",
                     f"{speed.steps_per_epoch} steps per epoch: {MIN_STEPS}+ optimizer steps, and the longest trial "
                     f"fits a third of the budget"))
    else:
        steps = step_range(speed, trial_budget)
        dims.append(("max_steps", {"randint": [steps[0], steps[1] + 1]}, f"{steps[0]} – {steps[1]}",
                     "an epoch takes longer than a third of the budget: trials train for a number of steps instead"))
    return dims


def epoch_range(speed: Speed, trial_budget: float, config: TrainConfig) -> tuple[int, int] | None:
    """Epochs from enough optimizer steps to the most a third of the budget holds; None when one epoch does not fit."""
    if config.max_steps:
        return None
    per_epoch = speed.trial_seconds(speed.steps_per_epoch, 1) - TRIAL_STARTUP_S
    fits = int((trial_budget - TRIAL_STARTUP_S) // per_epoch)
    if fits < 1:
        return None
    enough = math.ceil(MIN_STEPS / speed.steps_per_epoch)
    high = max(1, min(fits, math.ceil(MAX_STEPS / speed.steps_per_epoch), 10))
    # A range worth searching: widened downwards where the budget is tight, to no fewer than half the steps needed.
    floor = max(1, math.ceil(MIN_STEPS / 2 / speed.steps_per_epoch))
    return max(min(floor, high), min(enough, high - 2)), high


def step_range(speed: Speed, trial_budget: float) -> tuple[int, int]:
    per_step = speed.seconds_per_step + speed.event_seconds / 50  # events spread over the steps
    high = max(4, int((trial_budget - TRIAL_STARTUP_S - speed.event_seconds) // per_step))
    return max(2, high // 3), high


def longest_trial(config: TrainConfig, space: dict[str, Any], speed: Speed) -> tuple[int, int]:
    """(steps, validation events) of the longest trial the space allows."""
    if "num_epochs" in space:
        epochs = space["num_epochs"]["randint"][1] - 1
        return epochs * speed.steps_per_epoch, epochs
    if "max_steps" in space:
        return space["max_steps"]["randint"][1] - 1, config.max_num_checkpoints
    epochs = config.num_epochs or math.ceil(config.min_update_steps / speed.steps_per_epoch)
    return (config.max_steps or epochs * speed.steps_per_epoch), (epochs if not config.max_steps else config.max_num_checkpoints)


def max_events(config: TrainConfig, epochs_spec: dict[str, Any] | None) -> int:
    """ASHA's max_t: the most validation events a trial reports."""
    if epochs_spec and "randint" in epochs_spec:
        return max(1, epochs_spec["randint"][1] - 1)
    if epochs_spec:
        return max(int(v) for v in next(iter(epochs_spec.values())))
    if config.max_steps or not config.num_epochs:
        return config.max_num_checkpoints
    return config.num_epochs


def longest_event_gap(speed: Speed) -> float:
    """Seconds between two validation events at most: how far past the deadline a running trial may go."""
    return speed.steps_per_epoch * speed.seconds_per_step + speed.event_seconds


def first_guess(config: TrainConfig, space: dict[str, Any]) -> dict[str, Any] | None:
    """The first trial: the rates' sweet spot (what an expert would try first), and the longest training the range
    holds: the checkpoint kept is the best validation event's, so a long trial also holds the shorter ones' best.
    TPE goes on from it."""
    guess = {key: value for key, value in FIRST_GUESS["lora" if config.uses_lora else "full"].items() if key in space}
    for key in ("num_epochs", "max_steps"):
        if key in space:
            guess[key] = space[key]["randint"][1] - 1
    return guess or None


def describe_spec(spec: Any) -> str:
    if isinstance(spec, dict) and len(spec) == 1:
        kind, values = next(iter(spec.items()))
        return f"{kind} {values}"
    return str(spec)
