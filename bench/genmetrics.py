"""Benchmark: what judging a run by its answers costs.

1. Generation at validation (`eval_generate`) against training: from a run's metrics.jsonl, the seconds spent
   generating at its validation events over the seconds spent in training steps. Target: at most 25 %.
2. Constrained decoding against free decoding, in this process on the same rows and model: milliseconds per
   generated token with no constraint, with `--json` (any JSON value) and with a JSON Schema of the demo's answers.
   Target: at most 30 % more per token. Also the held-out exact match (parsed JSON) with and without the constraint.
3. Generation speed in torch, before and after the adapter is folded into an inference copy of the weights
   (tuneforge.models.inference): tokens/s answering held-out rows one request at a time and in batches, through
   PEFT's unmerged layers (before), the fp32 fold, and the inference copy Generator uses by default (the fold, with
   bf16 weights packed for oneDNN on CPUs with native bf16), on the same loaded model; how many answers equal the
   unmerged ones, and each side's exact match against the references. Target: at least 2x.

    .venv/bin/python bench/genmetrics.py [--run runs/demo] [--rows 60]

The run defaults to runs/demo (`make demo` trains it with eval_generate on); the rows are the demo's held-out file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "data" / "demo" / "meetings_heldout.jsonl"
DEMO_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["person", "city", "date", "topic"],
               "properties": {key: {"type": "string"} for key in ("person", "city", "date", "topic")}}


def validation_share(run: Path) -> dict:
    from tuneforge.rundir import RunDir

    rows = RunDir(run).metrics()
    steps = [row for row in rows if row.get("type") == "step"]
    evals = [row for row in rows if row.get("type") == "eval"]
    if not any("eval_generate_seconds" in row for row in evals):
        raise SystemExit(f"{run}: no generation at validation in this run (train it with eval_generate, e.g. make demo)")
    train_seconds = sum(row["step_seconds"] for row in steps)
    generate_seconds = sum(row.get("eval_generate_seconds", 0.0) for row in evals)
    loss_seconds = sum(row["eval_seconds"] - row.get("eval_generate_seconds", 0.0) for row in evals)
    return {"train_seconds": train_seconds, "generate_seconds": generate_seconds, "loss_eval_seconds": loss_seconds,
            "events": len(evals), "share": generate_seconds / train_seconds}


def decode_costs(run: Path, rows: int, batch_size: int) -> dict:
    from tuneforge.constrain import constraint_for
    from tuneforge.evaluate import answer_and_score
    from tuneforge.generate import GenerationSettings, Generator, read_prompt_rows

    generator = Generator.from_path(run)
    pairs = [(prompt, row["reference"]) for prompt, row in read_prompt_rows(HELD_OUT)][:rows]
    settings = GenerationSettings(max_new_tokens=64, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        schema = Path(tmp) / "schema.json"
        schema.write_text(json.dumps(DEMO_SCHEMA), encoding="utf-8")
        constraints = {"free": None, "any JSON": constraint_for(any_json=True),
                       "schema": constraint_for(schema_path=schema)}
        answer_and_score(generator, pairs[:batch_size], settings)  # warm-up: first-call costs out of the timing
        results = {}
        for name, constraint in constraints.items():
            if constraint is not None:  # the tokenizer's llguidance view is built once per run (~1 s), outside
                constraint.ll_tokenizer(generator.tokenizer, generator.stop_ids)
            started = time.perf_counter()
            scored = answer_and_score(generator, pairs, settings, constraint=constraint)
            seconds = time.perf_counter() - started
            tokens = sum(s["new_tokens"] + (s["finish_reason"] == "stop") for s in scored.samples)
            results[name] = {"seconds": seconds, "tokens": tokens, "ms_per_token": 1000 * seconds / tokens,
                             **{key: scored.metrics[key] for key in ("json_exact", "json_valid", "stop_rate")}}
    return results


def fold_speed(run: Path, rows: int, batch_size: int) -> dict:
    """Tokens/s through PEFT's unmerged layers and through the folded copy of the same loaded model, batch by batch
    in turn (drift on a shared machine hits both alike), and whether they answer the same."""
    from tuneforge.generate import GenerationSettings, Generator, read_prompt_rows
    from tuneforge.scoring import leading_json, same_json

    def json_exact(text: str, reference: str) -> bool:
        return same_json(leading_json(text)[0], leading_json(reference)[0])

    default = Generator.from_path(run)
    if not default.has_adapter:
        raise SystemExit(f"{run}: not a LoRA run; the fold applies to LoRA runs only")
    model, tokenizer, meta = default.model, default.tokenizer, default.meta
    sides = {"unmerged": Generator(model, tokenizer, meta, fold_adapter=False),
             "fp32 fold": Generator(model, tokenizer, meta, pack_bf16=False), "inference copy": default}
    pairs = [(prompt, row["reference"]) for prompt, row in read_prompt_rows(HELD_OUT)][:rows]
    prompts, references = [prompt for prompt, _ in pairs], [reference for _, reference in pairs]
    results: dict = {}
    for mode, size, count in (("per request", 1, max(4, rows // 6)), ("batched", batch_size, rows)):
        settings = GenerationSettings(max_new_tokens=64, batch_size=size)
        seconds, answers = dict.fromkeys(sides, 0.0), {name: [] for name in sides}
        for generator in sides.values():
            generator.complete(prompts[:size], GenerationSettings(max_new_tokens=8, batch_size=size))  # warm-up
        for start in range(0, count, size):
            for name, generator in sides.items():
                started = time.perf_counter()
                answers[name] += generator.complete(prompts[start:min(start + size, count)], settings)
                seconds[name] += time.perf_counter() - started
        unmerged = [answer.text for answer in answers["unmerged"]]
        for name in sides:
            texts = [answer.text for answer in answers[name]]
            results[f"{mode}/{name}"] = {
                "tokens_per_second": sum(answer.new_tokens for answer in answers[name]) / seconds[name],
                "rows": count, "answers": texts, "same_as_unmerged": sum(map(str.__eq__, texts, unmerged)),
                "json_exact": sum(json_exact(text, ref) for text, ref in zip(texts, references)) / count}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--rows", type=int, default=60, help="held-out rows answered per decoding mode")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    share = validation_share(args.run)
    speed = fold_speed(args.run, args.rows, args.batch_size)
    costs = decode_costs(args.run, args.rows, args.batch_size)
    print(f"\n{args.run}: {share['events']} validation events")
    print(f"  training steps {share['train_seconds']:.1f} s, generation at validation {share['generate_seconds']:.1f} s, "
          f"loss at validation {share['loss_eval_seconds']:.1f} s")
    print(f"  generation at validation / training: {100 * share['share']:.1f} % (target <= 25 %)")
    free = costs["free"]["ms_per_token"]
    print(f"\nheld-out rows ({args.rows}, batch {args.batch_size}, greedy, max 64 new tokens):")
    print(f"{'decoding':12}{'ms/token':>10}{'overhead':>10}{'json exact':>12}{'json valid':>12}{'stop rate':>11}")
    for name, row in costs.items():
        overhead = 100 * (row["ms_per_token"] / free - 1)
        print(f"{name:12}{row['ms_per_token']:>10.1f}{overhead:>9.1f}%{row['json_exact']:>12.3f}"
              f"{row['json_valid']:>12.3f}{row['stop_rate']:>11.3f}")
    print("\ntorch generation, greedy, max 64 new tokens: PEFT unmerged (before) vs the inference copies (after)")
    print(f"  {'mode':12}{'side':16}{'rows':>6}{'tokens/s':>10}{'vs before':>11}{'same answers':>14}{'json exact':>12}")
    for mode in ("per request", "batched"):
        before = speed[f"{mode}/unmerged"]["tokens_per_second"]
        for side in ("unmerged", "fp32 fold", "inference copy"):
            row = speed[f"{mode}/{side}"]
            print(f"  {mode:12}{side:16}{row['rows']:>6}{row['tokens_per_second']:>10.1f}"
                  f"{row['tokens_per_second'] / before:>10.2f}x{row['same_as_unmerged']:>10} of {row['rows']:<3}"
                  f"{row['json_exact']:>10.3f}")
    worst = max(100 * (row["ms_per_token"] / free - 1) for row in costs.values())
    saved = REPO / "bench" / "results" / "genmetrics.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"validation": share, "decoding": costs, "fold": speed}, indent=2), encoding="utf-8")
    print(f"\nvalidation generation {100 * share['share']:.1f}% of training (<= 25%: "
          f"{'met' if share['share'] <= 0.25 else 'NOT met'}); constrained decoding +{worst:.1f}% per token "
          f"(<= 30%: {'met' if worst <= 30 else 'NOT met'})")


if __name__ == "__main__":
    main()
