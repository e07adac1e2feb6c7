"""Benchmark: tuneforge's preference task (DPO) vs TRL's DPOTrainer + PEFT, same model, pairs, LoRA config and steps.

Both sides train SmolLM2-135M-Instruct with a fresh LoRA adapter (r=8, alpha 16, dropout 0, all attention and MLP
projections) by DPO (beta 0.1, the reference being the base model: the adapter off) on the demo's chat pairs
(data/demo/prefer_train.jsonl, or its first --rows pairs), batch 8 pairs, learning rate 5e-5 with a cosine schedule
and 3 warm-up steps, context 256 (no demo pair is longer), bf16 autocast where the CPU has bf16 (else fp32), and are
then scored on the 40 validation pairs (data/demo/prefer_valid.jsonl). Printed per side: real (non-pad, prompt +
answer of both sequences) tokens/s over the training steps, training and wall seconds, peak memory, final validation
reward accuracy and DPO loss; then the ratios and whether the targets hold (tokens/s >= 1.5x TRL's, peak PSS not
above TRL's, reward accuracy within 0.02 of TRL's).

    PYTHONPATH=src .venv/bin/python bench/prefer_vs_trl.py [--steps 24] [--rows N] [--seed 42]

Both sides are measured the same way: each runs in a fresh Python process of its own, timed from launch to exit
(imports, Ray start-up and shutdown included), while a thread here samples the memory of that process and all its
descendants (for tuneforge, Ray's own processes and the training worker) and keeps the peak: RSS summed over the
processes, and PSS, which counts pages the processes share (torch's libraries, Ray's object store) once. Also
printed: the cores the rest of the machine kept busy meanwhile (all CPU time used, less the side's own); above a
quarter of a core a warning says the timings measure that contention too (2-CPU machines shared with a test run
have slowed a side's steps tenfold).

    TRL        trl.DPOTrainer given the base model and a peft.LoraConfig, data as a datasets.Dataset in TRL's
               conversational preference format (prompt: system + user messages; chosen / rejected: one assistant
               message each). DPOConfig: TRL's defaults where this list says nothing, so what users get; in
               particular precompute_ref_log_probs=False (TRL's default), so every step also runs the reference
               forward (adapter off) on its batch. Changed from the defaults, to match tuneforge's run: bf16 only where
               the CPU has it (TRL defaults to bf16=True; on CPU it means autocast, as tuneforge's), and
               gradient_checkpointing=False (TRL defaults to True; tuneforge does not checkpoint on CPU, where compute,
               not memory, is the limit, so neither side recomputes activations). After training,
               trainer.evaluate() on the validation pairs (eval batch 8: 40 pairs in 5 equal batches, so TRL's mean of
               batch means is the per-pair mean). Tokens/s: the real tokens of each step's pairs (from the tokenized
               dataset's prompt/chosen/rejected ids) over the steps' wall time (on_step_begin -> on_step_end).
    tuneforge  tuneforge.train.train(TrainConfig(task="preference", loss_type="dpo", reference="base", ...)) through
               the library entry point, so Ray Train with one worker, with validation once at the end. It computes
               the reference log-probs in one pass before the first step; the pass runs cold here (a TUNEFORGE_HOME
               of its own, so no table cached by an earlier run is reused), counts in the wall time and is printed
               on its own, and is outside the training steps. Tokens/s: `tokens` over `step_seconds` of
               metrics.jsonl's step rows; accuracy and loss from its last eval row.

On both sides the first step (warm-up) is left out of tokens/s. The step-1 loss is printed as a check of the
reference: with a fresh adapter (lora_B = 0) the policy is the reference, so every pair's DPO loss is ln 2 = 0.6931
unless the reference log-probs were computed differently from the policy's. The validation accuracy moves in steps
of 1/40 = 0.025 on the demo's 40 pairs, so "within 0.02" means the same number of pairs ranked right.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_vs_hf import tree_memory  # noqa: E402 - the same memory reading on both benches

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parent.parent
TRAIN_PAIRS, VALID_PAIRS = ROOT / "data/demo/prefer_train.jsonl", ROOT / "data/demo/prefer_valid.jsonl"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": TARGET_MODULES}
BATCH, EVAL_BATCH, TRL_EVAL_BATCH, LR, WARMUP, BETA, CONTEXT = 8, 16, 8, 5e-5, 3, 0.1, 256
SIDES = ("trl", "tuneforge")
TARGET_SPEEDUP, ACCURACY_TOLERANCE = 1.5, 0.02
SAMPLE_EVERY_S = 2.0
BUSY_WARNING_CORES = 0.25


def write_data(workdir: Path, rows: int | None) -> tuple[Path, Path]:
    """The pairs both sides read: the first `rows` training pairs (all without --rows), every validation pair."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [line for line in TRAIN_PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    if rows is not None:
        if rows > len(lines):
            raise SystemExit(f"--rows {rows}: {TRAIN_PAIRS} holds {len(lines)} pairs")
        lines = lines[:rows]
    train, valid = workdir / "train.jsonl", workdir / "valid.jsonl"
    train.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    valid.write_text(VALID_PAIRS.read_text(encoding="utf-8"), encoding="utf-8")
    return train, valid


def precision() -> str:
    from tuneforge.hardware import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "fp32"


# ---------------------------------------------------------------------------------------------------------------
# TRL: DPOTrainer + PEFT
# ---------------------------------------------------------------------------------------------------------------


def as_messages(answer) -> list[dict]:
    """An answer as TRL's conversational format wants it: a list holding one assistant message."""
    if isinstance(answer, str):
        return [{"role": "assistant", "content": answer}]
    return answer if isinstance(answer, list) else [answer]


def trl_dataset(path: Path):
    from datasets import Dataset

    pairs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Dataset.from_list([{"prompt": pair["prompt"], "chosen": as_messages(pair["chosen"]),
                               "rejected": as_messages(pair["rejected"])} for pair in pairs])


def run_trl(train: Path, valid: Path, steps: int, seed: int, out: Path) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tuneforge.models import resolve_model

    source = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)  # fp32 weights, as tuneforge's on CPU

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.began)

    timer = StepTimer()
    args = DPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=BATCH,
                     per_device_eval_batch_size=TRL_EVAL_BATCH, max_steps=steps, learning_rate=LR,
                     lr_scheduler_type="cosine", warmup_steps=WARMUP, logging_steps=1, beta=BETA,
                     loss_type=["sigmoid"], max_length=CONTEXT, bf16=precision() == "bf16",
                     gradient_checkpointing=False, eval_strategy="no", save_strategy="no", report_to=[],
                     use_cpu=True, seed=seed, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=trl_dataset(train), eval_dataset=trl_dataset(valid),
                         processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                         callbacks=[timer])

    # Each collated batch's real tokens, from the tokenized rows themselves (what the collator keeps of each
    # sequence: prompt + answer, cut at max_length), in the order the steps take them.
    real_tokens: list[int] = []
    collate = trainer.data_collator

    def counting_collate(examples):
        real_tokens.append(sum(min(len(e["prompt_ids"]) + len(e[answer]), CONTEXT)
                               for e in examples for answer in ("chosen_ids", "rejected_ids")))
        return collate(examples)

    trainer.data_collator = counting_collate
    trainer.train()
    train_tokens = real_tokens[:steps]  # the dataloader may collate one batch ahead; evaluation comes after
    metrics = trainer.evaluate()
    return {
        "tokens_per_second": sum(train_tokens[1:]) / sum(timer.times[1:steps]),
        "train_seconds": sum(timer.times[:steps]),
        "eval_rewards_accuracy": metrics["eval_rewards/accuracies"],
        "eval_loss": metrics["eval_loss"],
        "first_loss": next((row["loss"] for row in trainer.state.log_history if "loss" in row), None),
        "steps": len(timer.times),
        "step_tokens": train_tokens,
        "step_seconds": timer.times[:steps],
    }


# ---------------------------------------------------------------------------------------------------------------
# tuneforge
# ---------------------------------------------------------------------------------------------------------------


class ReferenceSeconds:
    """A reporter that keeps how long the reference pass took (its "reference" event); the rest is ignored."""

    seconds: float | None = None

    def phase(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def event(self, event: dict) -> None:
        if event.get("type") == "reference" and "seconds" in event:
            self.seconds = float(event["seconds"])


def run_tuneforge(train: Path, valid: Path, steps: int, seed: int, out: Path) -> dict:
    from tuneforge.config import TrainConfig
    from tuneforge.rundir import RunDir
    from tuneforge.train import train as tuneforge_train

    config = TrainConfig(task="preference", loss_type="dpo", beta=BETA, reference="base", model_id=MODEL,
                         train_path=str(train), valid_path=str(valid), context_length=CONTEXT,
                         train_batch_size_per_device=BATCH, eval_batch_size_per_device=EVAL_BATCH, max_steps=steps,
                         learning_rate=LR, lr_scheduler_type="cosine", num_warmup_steps=WARMUP,
                         precision=precision(), max_num_checkpoints=1, lora_config=LORA, output_dir=str(out / "runs"),
                         run_name="tuneforge", seed=seed, logging_steps=1)
    reporter = ReferenceSeconds()
    result = tuneforge_train(config, reporter=reporter)
    history = RunDir(result.run_dir).metrics()
    steps_logged = [row for row in history if row["type"] == "step"]
    evals = [row for row in history if row["type"] == "eval"]
    timed = steps_logged[1:]
    return {
        "tokens_per_second": sum(r["tokens"] for r in timed) / sum(r["step_seconds"] for r in timed),
        "train_seconds": sum(r["step_seconds"] for r in steps_logged),
        "reference_seconds": reporter.seconds,
        "eval_rewards_accuracy": evals[-1]["eval_rewards_accuracy"],
        "eval_loss": evals[-1]["eval_loss"],
        "first_loss": steps_logged[0].get("loss") if steps_logged else None,
        "steps": len(steps_logged),
        "step_tokens": [r["tokens"] for r in steps_logged],
        "step_seconds": [r["step_seconds"] for r in steps_logged],
    }


def run_side(side: str, steps: int, seed: int, workdir: Path) -> None:
    """Inside a side's own process: train, evaluate, leave the numbers in workdir/<side>.json."""
    train, valid = workdir / "train.jsonl", workdir / "valid.jsonl"
    runner = run_trl if side == "trl" else run_tuneforge
    result = runner(train, valid, steps, seed, workdir)
    (workdir / f"{side}.json").write_text(json.dumps(result), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Measuring each side the same way
# ---------------------------------------------------------------------------------------------------------------


def sample_peak(pid: int, done: threading.Event, peak: dict) -> None:
    """Keep the peak memory of the tree in peak["rss"] / peak["pss"], and each process's latest CPU seconds in
    peak["cpu"] (Ray's processes may end unreaped by the side's process, so its rusage alone can miss them)."""
    import psutil

    root = psutil.Process(pid)
    while not done.wait(SAMPLE_EVERY_S):
        try:
            rss, pss = tree_memory(root)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            peak["cpu"][process.pid] = times.user + times.system


def side_environment(workdir: Path) -> dict[str, str]:
    """The children's environment: a TUNEFORGE_HOME of this run's own, holding only a link to the converted model,
    so tuneforge's cache of reference log-probs starts empty (a first run's cost) and the user's is left alone."""
    from tuneforge.models.sources import converted_model_dir

    home = workdir / "tuneforge-home"
    (home / "models").mkdir(parents=True, exist_ok=True)
    link = home / "models" / MODEL
    if not link.exists():
        link.symlink_to(converted_model_dir(MODEL), target_is_directory=True)
    return {**os.environ, "TUNEFORGE_HOME": str(home)}


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (all cores' time, less idle and I/O wait)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for descendants (a side's process and the processes it reaped: Ray's)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(side: str, steps: int, seed: int, workdir: Path) -> dict:
    """Run one side in a fresh interpreter: wall clock from launch to exit, peak memory of its process tree, and
    how many cores other processes kept busy meanwhile (the machine is shared: a test run beside this one slows a
    side down several times over, and the numbers then say so)."""
    peak = {"rss": 0, "pss": 0, "cpu": {}}
    done = threading.Event()
    env = side_environment(workdir)
    busy, own = busy_cpu_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--side", side, "--steps", str(steps), "--seed", str(seed),
                              "--workdir", str(workdir)], env=env)
    sampler = threading.Thread(target=sample_peak, args=(child.pid, done, peak), daemon=True)
    sampler.start()
    code = child.wait()
    wall = time.perf_counter() - started
    busy = busy_cpu_seconds() - busy
    done.set()
    sampler.join()
    # Both are lower bounds of the side's CPU time (rusage: the processes reaped; samples: up to 2 s short per
    # process), so the larger is the closer.
    own = max(children_cpu_seconds() - own, sum(peak["cpu"].values()))
    others = busy - own
    if code:
        raise SystemExit(f"the {side} side failed (exit code {code})")
    result = json.loads((workdir / f"{side}.json").read_text(encoding="utf-8"))
    return {**result, "wall_seconds": wall, "peak_rss_mb": peak["rss"] / 2**20, "peak_pss_mb": peak["pss"] / 2**20,
            "other_processes_cores": max(others, 0.0) / wall}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="training steps (at least 2: the first is a warm-up)")
    parser.add_argument("--rows", type=int, help="train on the first ROWS demo pairs (default: all 300)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # set on the child processes only
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is left out of tokens/s")
    if args.rows is not None and args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.side and not args.workdir:
        parser.error("--side needs --workdir")
    return args


ROWS = (("tokens_per_second", "real tokens/s", "higher"), ("train_seconds", "training steps s", "lower"),
        ("wall_seconds", "wall s (from launch)", "lower"), ("peak_rss_mb", "peak tree RSS MB", "lower"),
        ("peak_pss_mb", "peak tree PSS MB", "lower"), ("eval_rewards_accuracy", "eval reward accuracy", "higher"),
        ("eval_loss", "eval DPO loss", "lower"), ("first_loss", "step-1 loss",
                                                "ln 2 = 0.6931 expected: the fresh adapter is the reference"))


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(results: dict[str, dict]) -> dict:
    trl, tf = results["trl"], results["tuneforge"]
    print(f"\n{'':24}{'TRL DPOTrainer':>18}{'tuneforge':>18}{'ratio':>8}")
    for key, label, note in ROWS:
        mine, theirs = (float("nan") if side.get(key) is None else side[key] for side in (tf, trl))
        ratio = mine / theirs if theirs else float("nan")
        print(f"{label:24}{theirs:>18.4g}{mine:>18.4g}{ratio:>7.2f}x"
              f"  ({note + ' is better' if note in ('higher', 'lower') else note})")
    if tf.get("reference_seconds") is not None:
        print(f"{'reference pass s':24}{'(in its steps)':>18}{tf['reference_seconds']:>18.4g}"
              "  (tuneforge: once, before step 1; in wall s, not in training steps s)")
    print(f"{'other processes, cores':24}{trl['other_processes_cores']:>18.2f}{tf['other_processes_cores']:>18.2f}"
          "  (CPU the rest of the machine used while the side ran)")
    if max(trl["other_processes_cores"], tf["other_processes_cores"]) > BUSY_WARNING_CORES:
        print(f"WARNING: other processes kept more than {BUSY_WARNING_CORES} of a core busy during a side; its "
              "timings (and so the ratios) measure the contention too. Run again on a quiet machine.")
    speed = tf["tokens_per_second"] / trl["tokens_per_second"]
    memory = tf["peak_pss_mb"] / trl["peak_pss_mb"]
    accuracy = abs(tf["eval_rewards_accuracy"] - trl["eval_rewards_accuracy"])
    checks = {"tokens_per_second": speed >= TARGET_SPEEDUP, "peak_pss": memory <= 1.0,
              "reward_accuracy": accuracy <= ACCURACY_TOLERANCE}
    print(f"\ntuneforge / TRL: {speed:.2f}x real tokens/s (target >= {TARGET_SPEEDUP}x: "
          f"{verdict(checks['tokens_per_second'])}), peak PSS {memory:.2f}x "
          f"(target <= 1x: {verdict(checks['peak_pss'])}), "
          f"|reward accuracy difference| {accuracy:.3f} (target <= {ACCURACY_TOLERANCE}: "
          f"{verdict(checks['reward_accuracy'])})")
    return {"tokens_per_second": speed, "peak_pss": memory, "reward_accuracy_difference": accuracy, "targets": checks}


def main() -> None:
    args = parse_args()
    if args.side:
        run_side(args.side, args.steps, args.seed, args.workdir)
        return
    from tuneforge.models import resolve_model

    resolve_model(MODEL)  # convert the bundled GGUF once, outside every timing
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        workdir = Path(tmp)
        train, _ = write_data(workdir, args.rows)
        pairs = sum(1 for line in train.read_text(encoding="utf-8").splitlines() if line.strip())
        results = {side: measure(side, args.steps, args.seed, workdir) for side in SIDES}
    print(f"\nSmolLM2-135M LoRA r=8 DPO (beta {BETA}, reference: base), {pairs} training pairs, batch {BATCH} pairs, "
          f"{args.steps} steps, {precision()}, {os.cpu_count()} CPUs")
    print("Each side ran in its own fresh process. wall s: from launch to exit (imports, Ray start-up included).\n"
          f"Peak memory: that process and all its descendants (Ray's processes too), sampled every {SAMPLE_EVERY_S} s; "
          "RSS summed per process, PSS with shared pages counted once.\n"
          "TRL: precompute_ref_log_probs=False (its default): the reference forward runs inside every step.")
    ratios = report(results)
    saved = Path(__file__).parent / "results" / "prefer_vs_trl.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"steps": args.steps, "rows": pairs, "seed": args.seed, "precision": precision(),
                                 "sides": results, "ratios": ratios}, indent=2))
    print(f"\nsaved {saved}")


if __name__ == "__main__":
    main()
