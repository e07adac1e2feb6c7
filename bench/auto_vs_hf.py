"""Benchmark: does `tuneforge tune --auto` find a good model without hand-tuning? On bench/hard_extraction.py's task
(several meetings per message, numbers as digits, words, ordinals and Roman numerals, distractor numbers, messages
with nothing to book, 40 % of test rows in unseen phrasings), in one invocation:

    (a) a plain HF Trainer + PEFT script at the origin notes' settings (LoRA r=8, alpha 16, dropout 0.05, all linear
        layers, lr 2e-4 cosine, batch 8, 3 epochs)  -- bench/quality_vs_hf.py's plain side
    (b) `tuneforge train` at the same settings (its defaults otherwise)
    (c) `tuneforge tune CONFIG --auto --budget 30m`, CONFIG being (b)'s settings

Each is scored on the same held-out rows the same way (base model + adapter in fp32, greedy, stop at <|im_end|>):
exact match of the parsed JSON, valid JSON, run-on (text after the JSON value). (b) and (c) are also scored with
answers constrained to the run's inferred answer schema (`--constrain schema`). Prints the table and (c)'s trials.

    .venv/bin/python bench/auto_vs_hf.py [--budget 30m] [--seed 42]
    .venv/bin/python bench/auto_vs_hf.py --quick      # smoke run: 48/16 rows, 1 epoch, a 4-minute search

Every training and scoring runs in a process of its own; results go to bench/results/auto_vs_hf[.quick].json.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import hard_extraction
import quality_vs_hf

NOTES_SETTINGS = {"epochs": 3, "lr": 2e-4, "warmup": 10, "tuneforge_set": []}
GEN_BATCH, MAX_NEW_TOKENS = 8, 128


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judge(answer: str, reference: dict) -> dict:
    """valid: the whole answer is one JSON value; exact: it equals the reference; run_on: text after a JSON value."""
    decoder = json.JSONDecoder()
    try:
        value, end = decoder.raw_decode(answer)
    except json.JSONDecodeError:
        return {"valid": False, "exact": False, "run_on": False}
    valid = not answer[end:].strip()
    return {"valid": valid, "exact": valid and value == reference, "run_on": not valid}


def summary(results: list[dict]) -> dict:
    rate = lambda rows, key: round(sum(r[key] for r in rows) / len(rows), 4) if rows else None
    return {"exact_match": rate(results, "exact"), "valid_json": rate(results, "valid"), "run_on": rate(results, "run_on"),
            "exact_seen": rate([r for r in results if r["seen"]], "exact"),
            "exact_unseen": rate([r for r in results if not r["seen"]], "exact"),
            "exact_empty": rate([r for r in results if not r["reference"]["meetings"]], "exact"),
            "exact_two": rate([r for r in results if len(r["reference"]["meetings"]) == 2], "exact"),
            "misses": [r for r in results if not r["exact"]][:6]}


def score_free(work: Path, adapter: str) -> dict:
    """Plain transformers + PEFT generation, the same for every side."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models import resolve_model

    path = str(resolve_model(quality_vs_hf.MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), adapter).eval()
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows, results = read_jsonl(work / "test.jsonl"), []
    for start in range(0, len(rows), GEN_BATCH):
        batch = rows[start : start + GEN_BATCH]
        texts = [tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
                 for r in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=stop,
                                       pad_token_id=tokenizer.pad_token_id)
        for row, ids in zip(batch, generated[:, encoded["input_ids"].shape[1]:].tolist(), strict=True):
            answer = tokenizer.decode(ids[: ids.index(stop)] if stop in ids else ids, skip_special_tokens=True).strip()
            results.append({"seen": row["seen_phrasing"], "answer": answer, "reference": row["reference"],
                            **judge(answer, row["reference"])})
    return summary(results)


def score_schema(work: Path, checkpoint: str) -> dict:
    """tuneforge's generator with answers constrained to the run's inferred answer schema."""
    from tuneforge.constrain import constraint_for
    from tuneforge.generate import GenerationSettings, Generator

    generator = Generator.from_path(checkpoint)
    constraint = constraint_for(run_schema=True, answer_schema=generator.meta.answer_schema, source=checkpoint)
    rows = read_jsonl(work / "test.jsonl")
    completions = generator.complete([r["messages"][:-1] for r in rows],
                                     GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=GEN_BATCH),
                                     constraint=constraint)
    results = [{"seen": r["seen_phrasing"], "answer": c.text, "reference": r["reference"], **judge(c.text.strip(), r["reference"])}
               for r, c in zip(rows, completions, strict=True)]
    return summary(results)


def child(args: argparse.Namespace) -> None:
    work = args.workdir
    settings = json.loads((work / "settings.json").read_text(encoding="utf-8"))
    if args.child == "score":
        result = score_free(work, args.adapter)
    elif args.child == "score-schema":
        result = score_schema(work, args.adapter)
    else:
        train = quality_vs_hf.train_plain if args.child == "plain" else quality_vs_hf.train_tuneforge
        result = train(work, settings, args.seed, work / f"{args.child}-seed{args.seed}")
    args.result.write_text(json.dumps(result), encoding="utf-8")


def launch(work: Path, name: str, *extra: str) -> tuple[dict, float]:
    """A child process of this script (quality_vs_hf's launcher): its result dict and wall seconds."""
    return quality_vs_hf.launch(work, name, *extra, script=__file__)


def auto_search(work: Path, seed: int, budget: str) -> tuple[dict, float, list[dict]]:
    """(c): the CLI, as a user runs it, on a config holding (b)'s settings."""
    config = {"model_id": quality_vs_hf.MODEL, "train_path": str(work / "train.jsonl"),
              "valid_path": str(work / "valid.jsonl"), "context_length": quality_vs_hf.CONTEXT,
              "train_batch_size_per_device": quality_vs_hf.BATCH, "num_epochs": NOTES_SETTINGS["epochs"],
              "learning_rate": NOTES_SETTINGS["lr"], "lr_scheduler_type": "cosine",
              "num_warmup_steps": NOTES_SETTINGS["warmup"], "lora_config": dict(quality_vs_hf.LORA), "seed": seed,
              "output_dir": str(work / "auto-runs"), "tune": {"experiment_name": "auto"}}
    path = work / "auto.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log = work / "auto-search.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call([str(Path(sys.executable).parent / "tuneforge"), "tune", str(path), "--auto",
                                "--budget", budget], stdout=handle, stderr=subprocess.STDOUT,
                               env={**__import__("os").environ, "COLUMNS": "160"})
    seconds = time.perf_counter() - started
    if code:
        sys.stdout.write(log.read_text(errors="replace")[-6000:])
        raise SystemExit(f"tune --auto failed (exit code {code}); its log is above")
    experiment = work / "auto-runs" / "auto"
    best = json.loads((experiment / "best_run.json").read_text(encoding="utf-8"))
    with (experiment / "trials.csv").open(encoding="utf-8") as handle:
        trials = list(csv.DictReader(handle))
    best["best_dir"] = str(experiment / best["run_id"] / "best")
    best["plan_log"] = [line for line in log.read_text(errors="replace").splitlines() if "│" in line or "┃" in line]
    return best, seconds, trials


def row_line(label: str, scored: dict, seconds: float) -> str:
    return (f"| {label} | {scored['exact_match']:.3f} | {scored['valid_json']:.3f} | {scored['run_on']:.3f} | "
            f"{scored['exact_seen']:.3f} / {scored['exact_unseen']:.3f} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="30m")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-seed", type=int, default=2027)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sides", default="plain,tuneforge,auto")
    parser.add_argument("--keep", action="store_true")
    for name, kind in (("--child", str), ("--adapter", str), ("--workdir", Path), ("--result", Path)):
        parser.add_argument(name, type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    sizes = (48, 16, 16) if args.quick else (400, 48, 120)
    settings = dict(NOTES_SETTINGS, **({"epochs": 1, "warmup": 1} if args.quick else {}))
    budget = "4m" if args.quick else args.budget
    NOTES_SETTINGS.update(settings)
    work = Path(tempfile.mkdtemp(prefix="tuneforge-auto-bench-"))
    hard_extraction.write(work, hard_extraction.build(args.data_seed, *sizes))
    for name in ("train", "valid", "test"):  # quality_vs_hf's children read these names
        assert (work / f"{name}.jsonl").is_file()
    (work / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    print(f"data (seed {args.data_seed}) in {work}: {sizes[0]} train / {sizes[1]} valid / {sizes[2]} test rows; "
          f"settings {settings}, LoRA {quality_vs_hf.LORA}, batch {quality_vs_hf.BATCH}; budget {budget}", flush=True)
    saved = BENCH / "results" / ("auto_vs_hf.quick.json" if args.quick else "auto_vs_hf.json")
    record: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "sides": {}}
    lines = ["| side | exact match | valid JSON | run-on | exact seen / unseen phrasings | time |", "|---|---|---|---|---|---|"]
    sides = [s.strip() for s in args.sides.split(",")]
    for side in ("plain", "tuneforge"):
        if side not in sides:
            continue
        trained, seconds = launch(work, f"{side}-train", "--child", side, "--seed", str(args.seed))
        free, _ = launch(work, f"{side}-score", "--child", "score", "--adapter", trained["adapter"])
        entry = {"train": trained, "train_seconds": seconds, "free": free}
        label = "(a) plain HF Trainer + PEFT" if side == "plain" else "(b) tuneforge train, same settings"
        lines.append(row_line(label, free, seconds))
        if side == "tuneforge":
            entry["schema"], _ = launch(work, f"{side}-score-schema", "--child", "score-schema", "--adapter",
                                        trained["adapter"])
            lines.append(row_line("(b) + `--constrain schema`", entry["schema"], seconds))
        record["sides"][side] = entry
        saved.write_text(json.dumps(record, indent=1), encoding="utf-8")
        print(lines[-1], flush=True)
    if "auto" in sides:
        best, seconds, trials = auto_search(work, args.seed, budget)
        free, _ = launch(work, "auto-score", "--child", "score", "--adapter", best["best_dir"])
        schema, _ = launch(work, "auto-score-schema", "--child", "score-schema", "--adapter", best["best_dir"])
        record["sides"]["auto"] = {"best": best, "search_seconds": seconds, "free": free, "schema": schema,
                                   "trials": trials}
        lines.append(row_line(f"(c) tune --auto --budget {budget}", free, seconds))
        lines.append(row_line("(c) + `--constrain schema`", schema, seconds))
        saved.write_text(json.dumps(record, indent=1), encoding="utf-8")
    print("\n" + "\n".join(lines))
    if "auto" in record["sides"]:
        auto = record["sides"]["auto"]
        print("\n(c)'s plan:\n" + "\n".join(auto["best"]["plan_log"]))
        print("\n(c)'s trials:")
        print("| trial | status | learning_rate | r | epochs | events | best eval_json_exact |")
        print("|---|---|---|---|---|---|---|")
        for t in auto["trials"]:
            print(f"| {t['run_id']} | {t['status']} | {float(t.get('param.learning_rate') or 0):.2e} | "
                  f"{t.get('param.lora_config.r', '')} | {t.get('param.num_epochs', '')} | {t['iterations']} | "
                  f"{t['best_objective']} |")
        print(f"best: {auto['best']['run_id']} {auto['best']['hyperparameters']}")
    sides_done = record["sides"]
    if {"tuneforge", "auto"} <= sides_done.keys():
        gain = sides_done["auto"]["free"]["exact_match"] - sides_done["tuneforge"]["free"]["exact_match"]
        print(f"(c) - (b) exact match: {gain:+.3f} (target +0.25, and (c) >= 0.90 where the task allows it)")
    if {"plain", "tuneforge"} <= sides_done.keys():
        gap = sides_done["tuneforge"]["free"]["exact_match"] - sides_done["plain"]["free"]["exact_match"]
        print(f"(b) - (a) exact match: {gap:+.3f} (target >= -0.02)")
    print(f"raw results: {saved}; work dir {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
