"""Benchmark: tuneforge vs a plain HF Trainer + PEFT script, same model, data, LoRA config and steps, on three
shapes of data users actually train on.

    long   meeting notes -> action items, ~250-token chat rows, lora_dropout 0 (the fast path), context 256
    short  meeting requests -> one JSON object, ~120-token chat rows, lora_dropout 0.05 (PEFT's examples), context 256
    mixed  the long shape's notes at 32-512 tokens with a long tail, lora_dropout 0.05, context 512

Both sides train SmolLM2-135M-Instruct with LoRA (r=8, all attention and MLP projections) on the same tokenized
rows (batch 8, padding to the longest row of each batch, bf16 autocast where the CPU has bf16) and are then scored
with the same token-weighted validation loss. Printed per shape: real (non-pad) tokens/s over the training steps,
wall time, peak memory, final validation loss, and the ratios; the last line gives each shape's speed ratio.

    .venv/bin/python bench/train_vs_hf.py [--shape long|short|mixed ...] [--steps 24] [--compile]

Both sides are measured the same way: each runs in a fresh Python process of its own (tuneforge through its
library entry point, so Ray Train with one worker), timed from launch to exit (imports, Ray start-up and shutdown
included), while a thread here samples the memory of that process and all its descendants (for tuneforge, Ray's
own processes and the training worker) and keeps the peak: RSS summed over the processes, and PSS, which counts
pages the processes share (torch's libraries, Ray's object store) once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, LR, WARMUP, SEED = 8, 2e-4, 2, 7
SIDES = ("baseline", "tuneforge", "tuneforge-compiled")
SHAPES = {"long": {"context": 256, "lora_dropout": 0.0}, "short": {"context": 256, "lora_dropout": 0.05},
          "mixed": {"context": 512, "lora_dropout": 0.05}}
TARGET_SPEEDUP, LOSS_TOLERANCE = 2.0, 0.02


def lora(shape: str) -> dict:
    return {"r": 8, "lora_alpha": 16, "lora_dropout": SHAPES[shape]["lora_dropout"], "target_modules": TARGET_MODULES}
SAMPLE_EVERY_S = 2.0

NAMES = ["Priya", "Tomás", "Aiko", "Grace", "Mohammed", "Lena", "Mateo", "Sofia", "Ingrid", "Rafael", "Amara", "Jonas"]
TASKS = ["send the revised budget", "book the venue", "draft the press release", "review the vendor contract",
         "update the roadmap slides", "collect customer feedback", "fix the onboarding checklist",
         "schedule the security audit", "prepare the pricing memo", "migrate the analytics data"]
FILLER = ["The group spent a while on last quarter's numbers before moving on.",
          "Someone pointed out that the shared drive is a mess and needs an owner.",
          "The new dashboard got good reviews from the sales team.",
          "Several people asked for clearer owners on open items.",
          "There was a short detour into travel plans for the offsite.",
          "Everyone agreed the timeline is tight but workable.",
          "A few questions about tooling were parked for next week.",
          "The discussion about hiring was postponed until the budget is settled."]


def notes_row(rng: random.Random, items: int, filler: int) -> dict:
    """Meeting notes with `items` action items among `filler` unrelated sentences -> the items as a JSON array."""
    actions = [(rng.choice(NAMES), rng.choice(TASKS), f"{rng.choice(['May', 'June', 'July'])} {rng.randint(1, 28)}")
               for _ in range(items)]
    sentences = [f"{who} will {task} by {when}." for who, task, when in actions]
    sentences += [rng.choice(FILLER) for _ in range(filler)]
    rng.shuffle(sentences)
    answer = json.dumps([{"owner": w, "task": t, "due": d} for w, t, d in actions], ensure_ascii=False)
    return {"messages": [
        {"role": "system", "content": "List the action items in the meeting notes as a JSON array."},
        {"role": "user", "content": "Meeting notes: " + " ".join(sentences)},
        {"role": "assistant", "content": answer},
    ]}


def long_rows(count: int, rng: random.Random) -> list[dict]:
    return [notes_row(rng, rng.randint(3, 4), rng.randint(3, 6)) for _ in range(count)]


def short_rows(count: int, rng: random.Random) -> list[dict]:
    """The quality bench's extraction rows (~120 tokens): a meeting request -> one JSON object."""
    from quality_vs_hf import TRAIN_TEMPLATES, chat, make_row

    return [{"messages": chat(*make_row(rng, TRAIN_TEMPLATES))} for _ in range(count)]


def mixed_rows(count: int, rng: random.Random) -> list[dict]:
    """Lengths from ~32 to 512 tokens with a long tail: a log-normal number of filler sentences (median 2,
    1 row in 100 past 20), one in ten rows with no action item at all."""
    rows = []
    for _ in range(count):
        items = 0 if rng.random() < 0.1 else rng.randint(1, 4)
        rows.append(notes_row(rng, items, min(int(rng.lognormvariate(0.7, 1.0)), 26)))
    return rows


ROW_MAKERS = {"long": long_rows, "short": short_rows, "mixed": mixed_rows}


def write_data(folder: Path, shape: str, steps: int) -> tuple[Path, Path]:
    """Exactly `steps` batches of training rows (one epoch) and 48 validation rows."""
    rng = random.Random(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, count in (("train", steps * BATCH), ("valid", 48)):
        path = folder / f"{name}.jsonl"
        rows = ROW_MAKERS[shape](count, rng)
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def tuneforge_config(train: Path, valid: Path, out: Path, shape: str, steps: int, compiled: bool = False):
    from tuneforge.config import TrainConfig

    return TrainConfig(model_id=MODEL, torch_compile=compiled, train_path=str(train), valid_path=str(valid),
                       context_length=SHAPES[shape]["context"], train_batch_size_per_device=BATCH,
                       eval_batch_size_per_device=16, min_update_steps=steps, learning_rate=LR,
                       num_warmup_steps=WARMUP, max_num_checkpoints=1, lora_config=lora(shape), output_dir=str(out),
                       run_name="tuneforge-compiled" if compiled else "tuneforge", seed=SEED, logging_steps=1)


# ---------------------------------------------------------------------------------------------------------------
# Baseline: a plain HF Trainer + PEFT script
# ---------------------------------------------------------------------------------------------------------------


def baseline(train: Path, valid: Path, shape: str, steps: int, out: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from tuneforge.hardware import cpu_has_bf16
    from tuneforge.train import prepare_run

    # Same tokenized rows and loss masks as tuneforge, so the comparison is about the training engine.
    prepared = prepare_run(tuneforge_config(train, valid, out, shape, steps))
    tokenizer, data = prepared.tokenizer, prepared.data
    model = AutoModelForCausalLM.from_pretrained(prepared.model_source, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora(shape)))

    def rows(examples):
        return [{"input_ids": e.input_ids.tolist(),
                 "labels": [int(t) if m else -100 for t, m in zip(e.input_ids, e.target_mask)]} for e in examples]

    def pad_longest(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.began)

    timer = StepTimer()
    real_tokens: list[int] = []
    collate = lambda batch: (real_tokens.append(sum(len(r["input_ids"]) for r in batch)), pad_longest(batch))[1]  # noqa: E731
    args = TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP, logging_steps=1,
                             save_strategy="no", report_to=[], bf16=cpu_has_bf16(), use_cpu=True, seed=SEED,
                             dataloader_num_workers=0, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=rows(data.train), data_collator=collate, callbacks=[timer])
    trainer.train()
    eval_loss = weighted_eval_loss(model, data.valid, pad_longest, rows, cpu_has_bf16())
    tokens = sum(real_tokens[1:steps])  # the first step (warm-up) is left out on both sides
    lengths = [len(example.input_ids) for example in data.train]
    return {
        "tokens_per_second": tokens / sum(timer.times[1:]),
        "mean_row_tokens": sum(lengths) / len(lengths),
        "max_row_tokens": max(lengths),
        "eval_loss": eval_loss,
        "first_loss": trainer.state.log_history[0].get("loss"),
    }


def weighted_eval_loss(model, examples, pad_longest, rows, bf16: bool) -> float:
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    batch_rows = rows(examples)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(batch_rows), 16):
            batch = pad_longest(batch_rows[i : i + 16])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return total / count


# ---------------------------------------------------------------------------------------------------------------
# tuneforge
# ---------------------------------------------------------------------------------------------------------------


def run_tuneforge(train: Path, valid: Path, shape: str, steps: int, out: Path, compiled: bool = False) -> dict:
    from tuneforge.rundir import RunDir
    from tuneforge.train import train as tuneforge_train

    result = tuneforge_train(tuneforge_config(train, valid, out, shape, steps, compiled))
    history = RunDir(result.run_dir).metrics()
    step_rows = [row for row in history if row["type"] == "step"][1:]
    evals = [row for row in history if row["type"] == "eval"]
    return {
        "tokens_per_second": sum(r["tokens"] for r in step_rows) / sum(r["step_seconds"] for r in step_rows),
        "eval_loss": evals[-1]["eval_loss"],
    }


def run_side(side: str, shape: str, steps: int, workdir: Path) -> None:
    """Inside a side's own process: train, then leave the quality and speed numbers in workdir/<side>.json."""
    train, valid = workdir / "train.jsonl", workdir / "valid.jsonl"
    if side == "baseline":
        result = baseline(train, valid, shape, steps, workdir)
    else:
        result = run_tuneforge(train, valid, shape, steps, workdir, compiled=side == "tuneforge-compiled")
    (workdir / f"{side}.json").write_text(json.dumps(result), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Measuring each side the same way
# ---------------------------------------------------------------------------------------------------------------


def tree_memory(root) -> tuple[int, int]:
    """(RSS summed, PSS summed) in bytes over a process and all its descendants; processes that end meanwhile
    count as nothing. Read from /proc/PID/smaps_rollup: psutil's memory_full_info parses the whole smaps file,
    which with Ray's dozen processes took a third of a core from the 2-core training it was measuring."""
    rss = pss = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            rollup = Path(f"/proc/{process.pid}/smaps_rollup").read_text(encoding="ascii").splitlines()
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in rollup[1:] if line.endswith("kB")}
        rss, pss = rss + fields.get("Rss", 0), pss + fields.get("Pss", 0)
    return rss, pss


def sample_peak(pid: int, done: threading.Event, peak: dict) -> None:
    import psutil

    root = psutil.Process(pid)
    while not done.wait(SAMPLE_EVERY_S):
        try:
            rss, pss = tree_memory(root)
        except psutil.NoSuchProcess:
            return
        peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)


def measure(side: str, shape: str, steps: int, workdir: Path) -> dict:
    """Run one side in a fresh interpreter: wall clock from launch to exit, peak memory of its process tree."""
    peak = {"rss": 0, "pss": 0}
    done = threading.Event()
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--side", side, "--shape", shape, "--steps", str(steps),
                              "--workdir", str(workdir)])
    sampler = threading.Thread(target=sample_peak, args=(child.pid, done, peak), daemon=True)
    sampler.start()
    code = child.wait()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if code:
        raise SystemExit(f"the {side} side failed (exit code {code})")
    result = json.loads((workdir / f"{side}.json").read_text(encoding="utf-8"))
    return {**result, "wall_seconds": wall, "peak_rss_mb": peak["rss"] / 2**20, "peak_pss_mb": peak["pss"] / 2**20}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), action="append",
                        help="data shape to measure (repeatable; default: all three)")
    parser.add_argument("--steps", type=int, default=24, help="training steps per shape (at least 2: the first is a warm-up)")
    parser.add_argument("--compile", action="store_true", help="also run tuneforge with torch_compile: true")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # set on the child processes only
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is left out of tokens/s")
    if args.side and not (args.workdir and args.shape):
        parser.error("--side needs --workdir and --shape")
    args.shape = args.shape or list(SHAPES)
    return args


ROWS = (("tokens_per_second", "real tokens/s", "higher"), ("wall_seconds", "wall s (from launch)", "lower"),
        ("peak_rss_mb", "peak tree RSS MB", "lower"), ("peak_pss_mb", "peak tree PSS MB", "lower"),
        ("eval_loss", "final eval loss", "lower"))


def print_shape(shape: str, columns: list[tuple[str, dict]]) -> None:
    hf = columns[0][1]
    settings = SHAPES[shape]
    print(f"\n{shape}: context {settings['context']}, lora_dropout {settings['lora_dropout']}, "
          f"mean row {hf['mean_row_tokens']:.0f} tokens (max {hf['max_row_tokens']})")
    print(f"{'':24}" + "".join(f"{name:>18}{'ratio':>8}" if i else f"{name:>18}" for i, (name, _) in enumerate(columns)))
    for key, label, better in ROWS:
        cells = [f"{hf[key]:>18.4g}"] + [f"{run[key]:>18.4g}{run[key] / hf[key]:>7.2f}x" for _, run in columns[1:]]
        print(f"{label:24}{''.join(cells)}  ({better} is better)")
    for name, run in columns[1:]:
        speed = run["tokens_per_second"] / hf["tokens_per_second"]
        loss = abs(run["eval_loss"] / hf["eval_loss"] - 1)
        memory = run["peak_pss_mb"] <= hf["peak_pss_mb"]
        print(f"{name}: {speed:.2f}x tokens/s (target {TARGET_SPEEDUP}x: {'met' if speed >= TARGET_SPEEDUP else 'NOT met'}), "
              f"eval loss {100 * loss:.1f}% off (<= {100 * LOSS_TOLERANCE:.0f}%: {'met' if loss <= LOSS_TOLERANCE else 'NOT met'}), "
              f"peak PSS {'not above' if memory else 'ABOVE'} the baseline's")


def main() -> None:
    args = parse_args()
    if args.side:
        run_side(args.side, args.shape[0], args.steps, args.workdir)
        return
    from tuneforge.models import resolve_model

    resolve_model(MODEL)  # convert the bundled GGUF once, outside every timing
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        for shape in args.shape:
            workdir = Path(tmp) / shape
            write_data(workdir, shape, args.steps)
            sides = ["baseline", "tuneforge"] + ["tuneforge-compiled"] * args.compile
            results[shape] = {side: measure(side, shape, args.steps, workdir) for side in sides}
    print(f"\nSmolLM2-135M LoRA r=8, batch {BATCH}, {args.steps} steps per shape, {os.cpu_count()} CPUs")
    print("Each side ran in its own fresh process. wall s: from launch to exit (imports, Ray start-up included).\n"
          f"Peak memory: that process and all its descendants (Ray's processes too), sampled every {SAMPLE_EVERY_S} s; "
          "RSS summed per process, PSS with shared pages counted once.")
    names = {"baseline": "HF Trainer+PEFT", "tuneforge": "tuneforge", "tuneforge-compiled": "+torch_compile"}
    for shape, sides in results.items():
        print_shape(shape, [(names[side], run) for side, run in sides.items()])
    saved = Path(__file__).parent / "results" / "train_vs_hf.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"steps": args.steps, "shapes": results}, indent=2))
    ratios = [f"{shape} {sides['tuneforge']['tokens_per_second'] / sides['baseline']['tokens_per_second']:.2f}×"
              for shape, sides in results.items()]
    print("\ntuneforge / HF Trainer+PEFT, real tokens/s: " + "   ".join(ratios))


if __name__ == "__main__":
    main()
