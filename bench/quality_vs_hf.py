"""Benchmark: answer quality of tuneforge vs a plain HF Trainer + PEFT script on a held-out extraction task.

Both sides fine-tune SmolLM2-135M-Instruct with the same LoRA (r=8, alpha=16, dropout 0.05, q/k/v/o/gate/up/down
projections), lr schedule (cosine, warm-up), batch 8, epochs and seed, on the same chat rows: meeting requests
(the domain of scripts/make_demo_data.py) with an attendee count written as digits, words or Roman numerals, answered
as one JSON object. Each side is then scored the same way on held-out rows, 40% of them in phrasings never seen in
training: greedy generation, exact match of the parsed JSON and the valid-JSON rate.

    .venv/bin/python bench/quality_vs_hf.py [--seeds 3] [--epochs 3]
        [--train-rows 400] [--test-rows 120] [--lr 2e-4] [--tuneforge-set group_by_length=false ...]
    .venv/bin/python bench/quality_vs_hf.py --quick     # smoke run: 32 train rows, 16 test rows, 1 epoch, 1 seed

Every training run and every scoring runs in a fresh Python process of its own. The plain side tokenizes with
`apply_chat_template` itself (nothing of tuneforge's data code); it uses tuneforge only to find the bundled model.
Raw results go to bench/results/quality_vs_hf.json (quality_vs_hf.quick.json for --quick).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_demo_data import CITIES, MONTHS, PEOPLE, SYSTEM, TEMPLATES, TOPICS

MODEL = "smollm2-135m-instruct"
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
BATCH, CONTEXT, GEN_BATCH, MAX_NEW_TOKENS, VALID_ROWS, UNSEEN_SHARE = 8, 512, 8, 96, 32, 0.4
SYSTEM_N = SYSTEM.replace("date and topic.", "date, topic and attendees.")
assert SYSTEM_N != SYSTEM, "scripts/make_demo_data.py changed its SYSTEM prompt"
WORDS = dict(enumerate(["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"], 2))
ROMAN = dict(enumerate(["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"], 2))
# Training phrasings: each demo template with one of four headcount sentences (32 phrasings).
COUNT_SENTENCES = ["There will be {attendees} of us.", "Expect {attendees} attendees in total.",
                   "Please book a room for {attendees} people.", "Headcount is {attendees}."]
TRAIN_TEMPLATES = [f"{t} {c}" for t in TEMPLATES for c in COUNT_SENTENCES]
# Phrasings that appear only in test rows.
UNSEEN_TEMPLATES = [
    "{person} and {attendees} colleagues in total want to gather in {city} on {date}; the agenda is the {topic}.",
    "Could you reserve something in {city} for {date}? {person} is leading a {topic} session, {attendees} seats.",
    "Note for the calendar: {date}, {city}. Subject: {topic}. Host: {person}. Party size: {attendees}.",
    "We are {attendees} people meeting {person} about the {topic} in {city}, on {date} if possible.",
    "{person} proposed {date} for the {topic} discussion in {city}, and {attendees} of us have confirmed.",
    "A workshop on the {topic} with {person} is planned for {city} on {date}; {attendees} participants signed up.",
    "Book {city} on {date}: {attendees} people, {person} presenting, topic is the {topic}.",
    "Heads-up: the {topic} meeting moves to {city} on {date}. {person} says we'll be {attendees} around the table.",
]
OPENERS = ["Hi there, hope your week is going well.", "Good morning, a quick request before the weekend rush starts.",
           "Hello, sorry for the short notice on this one.", "Hi, following up on what we discussed in the hallway.",
           "Hey, one more thing for the shared calendar.", "Hello again, another item for the planning list."]
CLOSERS = ["Let me know if anything clashes with the other plans.", "Thanks a lot for sorting this out so quickly.",
           "Coffee and a projector would be nice if the room has them.",
           "Send the invite to everyone once it's confirmed, please.",
           "If the room is taken, any nearby space works for us.", "Ping me if you need anything else from my side."]


def make_row(rng: random.Random, templates: list[str]) -> tuple[str, dict]:
    fields = {"person": rng.choice(PEOPLE), "city": rng.choice(CITIES),
              "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}", "topic": rng.choice(TOPICS),
              "attendees": rng.randint(2, 12)}
    written = rng.choice([str, WORDS.get, ROMAN.get])(fields["attendees"])
    request = rng.choice(templates).format(**{**fields, "attendees": written})
    request = " ".join([rng.choice(OPENERS)] * (rng.random() < 0.5) + [request] + [rng.choice(CLOSERS)])
    return request, fields


def chat(request: str, answer: dict | None) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM_N}, {"role": "user", "content": request}]
    return messages + ([{"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}] if answer else [])


def build_data(seed: int, n_train: int, n_valid: int, n_test: int) -> dict[str, list[dict]]:
    """Deterministic in `seed`. Train and validation rows use the training phrasings; test rows are 40% unseen
    phrasings, 60% training phrasings; no test answer (field values) appears in train or validation."""
    rng, seen = random.Random(seed), set()

    def rows(count: int, templates: list[str]) -> list[tuple[str, dict]]:
        out = []
        while len(out) < count:
            request, fields = make_row(rng, templates)
            if json.dumps(fields) not in seen:  # no two rows, in any split, with the same answer
                seen.add(json.dumps(fields))
                out.append((request, fields))
        return out

    train, valid = rows(n_train, TRAIN_TEMPLATES), rows(n_valid, TRAIN_TEMPLATES)
    n_unseen = round(n_test * UNSEEN_SHARE)
    test = [(q, a, True) for q, a in rows(n_test - n_unseen, TRAIN_TEMPLATES)]
    test += [(q, a, False) for q, a in rows(n_unseen, UNSEEN_TEMPLATES)]
    return {"train": [{"messages": chat(q, a)} for q, a in train],
            "valid": [{"messages": chat(q, a)} for q, a in valid],
            "test": [{"messages": chat(q, None), "reference": a, "seen_phrasing": s} for q, a, s in test]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_plain(work: Path, s: dict, seed: int, out: Path) -> dict:
    """A plain HF Trainer + PEFT script, as the PEFT/TRL docs have a user write it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.trainer_utils import set_seed

    from tuneforge.hardware import cpu_has_bf16
    from tuneforge.models import resolve_model

    path = str(resolve_model(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def encode(row: dict) -> dict:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
        assert ids[: len(prompt)] == prompt, "prompt tokens are not a prefix of the full conversation"
        end = ids.index(end_id, len(prompt)) + 1  # the answer and its <|im_end|>; the newline after it is not trained
        labels = [-100] * len(prompt) + ids[len(prompt):end] + [-100] * (len(ids) - end)
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    train_rows = [encode(row) for row in read_jsonl(work / "train.jsonl")]
    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    args = TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=BATCH,
                             num_train_epochs=s["epochs"], learning_rate=s["lr"], lr_scheduler_type="cosine",
                             warmup_steps=s["warmup"], bf16=cpu_has_bf16(), use_cpu=True, seed=seed,
                             save_strategy="no", report_to=[], logging_steps=10)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, processing_class=tokenizer,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
    mean_loss = trainer.train().training_loss
    model.save_pretrained(out / "adapter")
    return {"adapter": str(out / "adapter"), "steps": trainer.state.global_step, "mean_train_loss": mean_loss}


def train_tuneforge(work: Path, s: dict, seed: int, out: Path) -> dict:
    from tuneforge.config import TrainConfig, apply_override
    from tuneforge.rundir import RunDir
    from tuneforge.train import train

    raw = {"model_id": MODEL, "train_path": str(work / "train.jsonl"), "valid_path": str(work / "valid.jsonl"),
           "context_length": CONTEXT, "train_batch_size_per_device": BATCH, "num_epochs": s["epochs"],
           "learning_rate": s["lr"], "lr_scheduler_type": "cosine", "num_warmup_steps": s["warmup"],
           "lora_config": dict(LORA), "seed": seed, "output_dir": str(out), "run_name": "tuneforge",
           "max_num_checkpoints": 1}
    for override in s["tuneforge_set"]:
        apply_override(raw, override)
    config = TrainConfig(**raw)
    result = train(config)
    best, steps = Path(result.best_checkpoint), [r for r in RunDir(result.run_dir).metrics() if r["type"] == "step"]
    return {"adapter": str(best), "adapter_files": sorted(p.name for p in best.iterdir()), "steps": len(steps),
            "mean_train_loss": statistics.mean(r["loss"] for r in steps), "group_by_length": config.group_by_length}


def score(work: Path, adapter: str) -> dict:
    """Base model + adapter in fp32, greedy, batches of 8 left-padded prompts, stop at <|im_end|>."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models import resolve_model

    path = str(resolve_model(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), adapter).eval()
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows, results = read_jsonl(work / "test.jsonl"), []
    for start in range(0, len(rows), GEN_BATCH):
        batch = rows[start : start + GEN_BATCH]
        texts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False) for r in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=stop,
                                       pad_token_id=tokenizer.pad_token_id)
        for row, ids in zip(batch, generated[:, encoded["input_ids"].shape[1]:].tolist(), strict=True):
            answer = tokenizer.decode(ids[: ids.index(stop)] if stop in ids else ids, skip_special_tokens=True).strip()
            try:
                parsed, valid = json.loads(answer), True
            except json.JSONDecodeError:
                parsed, valid = None, False
            results.append({"seen": row["seen_phrasing"], "valid": valid, "exact": valid and parsed == row["reference"],
                            "answer": answer, "reference": row["reference"]})

    rate = lambda items, key: sum(r[key] for r in items) / len(items) if items else None
    return {"exact_match": rate(results, "exact"), "valid_json": rate(results, "valid"),
            "exact_match_seen": rate([r for r in results if r["seen"]], "exact"),
            "exact_match_unseen": rate([r for r in results if not r["seen"]], "exact"),
            "misses": [r for r in results if not r["exact"]][:5]}


def child(args: argparse.Namespace) -> None:
    work, settings = args.workdir, json.loads((args.workdir / "settings.json").read_text(encoding="utf-8"))
    if args.child == "score":
        result = score(work, args.adapter)
    else:
        out = work / f"{args.child}-seed{args.seed}"
        result = (train_plain if args.child == "plain" else train_tuneforge)(work, settings, args.seed, out)
    args.result.write_text(json.dumps(result), encoding="utf-8")


def launch(work: Path, name: str, *extra: str, script: str = __file__) -> tuple[dict, float]:
    """Run one child process of `script` (its output goes to a log file); its result dict and wall seconds."""
    result, log = work / f"{name}.json", work / f"{name}.log"
    started = time.perf_counter()
    # Both sides get this environment as is: on a machine shared with busy processes, OMP_WAIT_POLICY=PASSIVE
    # keeps them from slowing several times over (wall time only, not the numbers); alone, leave it unset.
    with log.open("w") as handle:
        code = subprocess.call([sys.executable, script, "--workdir", str(work), "--result", str(result), *extra],
                               stdout=handle, stderr=subprocess.STDOUT)
    if code:
        sys.stdout.write(log.read_text(errors="replace")[-6000:])
        raise SystemExit(f"{name} failed (exit code {code}); its log is above")
    return json.loads(result.read_text(encoding="utf-8")), time.perf_counter() - started


def chat_lengths(rows: list[dict]) -> tuple[float, float]:
    from transformers import AutoTokenizer

    from tuneforge.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(MODEL)))
    full = [len(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"]) for r in rows]
    answers = [len(tokenizer(r["messages"][-1]["content"])["input_ids"]) for r in rows]
    return statistics.mean(full), statistics.mean(answers)


def results_name(args: argparse.Namespace) -> str:
    """quality_vs_hf[.quick][.KEY=VALUE...]: a run with tuneforge overrides does not overwrite the defaults' results."""
    parts = ["quality_vs_hf"] + ["quick"] * args.quick + [item.replace("/", "_") for item in args.tuneforge_set]
    return ".".join(parts)


def spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}  ({min(values):.3f}-{max(values):.3f}, std {std:.3f})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("--train-rows", 400), ("--test-rows", 120), ("--epochs", 3), ("--data-seed", 2026)):
        parser.add_argument(name, type=int, default=default)
    parser.add_argument("--seeds", default="3",
                        help="training seeds per side: N for 1, 2, ... N, or a list such as 2,3 (the runs are "
                             "deterministic, so seeds measured before need not be run again)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up steps (both sides)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--tolerance", type=float, default=0.0, help="parity: tuneforge mean >= plain mean - this")
    parser.add_argument("--tuneforge-set", action="append", default=[], metavar="KEY=VALUE",
                        help="TrainConfig override for the tuneforge side (repeatable), e.g. group_by_length=false")
    parser.add_argument("--sides", default="plain,tuneforge",
                        help="which sides to run (a tuneforge-only run with --tuneforge-set compares with the saved "
                             "plain side: same data seed, same training seeds, so the same plain numbers)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32/16 rows, 1 epoch, 1 seed, 1 warm-up step")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data, adapters, logs)")
    for name, kind in (("--child", str), ("--seed", int), ("--adapter", str), ("--workdir", Path), ("--result", Path)):
        parser.add_argument(name, type=kind, help=argparse.SUPPRESS)  # set on the child processes only
    args = parser.parse_args()
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds takes a number or a comma-separated list of numbers, not {args.seeds!r}")
    args.seeds = seeds if "," in args.seeds else list(range(1, seeds[0] + 1))
    args.sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    if not args.sides or set(args.sides) - {"plain", "tuneforge"}:
        parser.error("--sides takes plain, tuneforge or both, comma-separated")
    if args.quick:  # 4 optimizer steps: one warm-up step so both schedules agree (tuneforge caps warm-up at the total)
        args.train_rows, args.test_rows, args.epochs, args.seeds, args.warmup = 32, 16, 1, [1], 1
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="tuneforge-quality-"))
    data = build_data(args.data_seed, args.train_rows, 8 if args.quick else VALID_ROWS, args.test_rows)
    for name, rows in data.items():
        write_jsonl(work / f"{name}.jsonl", rows)
    settings = {"epochs": args.epochs, "lr": args.lr, "warmup": args.warmup, "tuneforge_set": args.tuneforge_set}
    (work / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    mean_chat, mean_answer = chat_lengths(data["train"])
    unseen = sum(not r["seen_phrasing"] for r in data["test"])
    print(f"data (seed {args.data_seed}) in {work}: {len(data['train'])} train / {len(data['valid'])} valid (tuneforge "
          f"only) / {len(data['test'])} test rows, {unseen} of them unseen phrasings; mean chat length "
          f"{mean_chat:.1f} tokens (answer {mean_answer:.1f})")
    print(f"settings: {settings}, LoRA {LORA}, batch {BATCH}")
    saved = Path(__file__).parent / "results" / f"{results_name(args)}.json"
    saved.parent.mkdir(exist_ok=True)
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "mean_chat_tokens": mean_chat, "mean_answer_tokens": mean_answer, "runs": []}
    for seed in args.seeds:
        for side in args.sides:
            trained, train_s = launch(work, f"{side}-seed{seed}-train", "--child", side, "--seed", str(seed))
            scored, score_s = launch(work, f"{side}-seed{seed}-score", "--child", "score", "--adapter", trained["adapter"])
            record["runs"].append({"side": side, "seed": seed, **trained, **scored, "train_seconds": train_s,
                                   "score_seconds": score_s})
            saved.write_text(json.dumps(record, indent=1), encoding="utf-8")  # after every run: hours of work
            print(f"{side:>9} seed {seed}: train {train_s:6.1f} s ({trained['steps']} steps, mean train loss "
                  f"{trained['mean_train_loss']:.4f}), score {score_s:5.1f} s: exact match {scored['exact_match']:.3f} "
                  f"(seen {scored['exact_match_seen']:.3f}, unseen {scored['exact_match_unseen']:.3f}), valid JSON "
                  f"{scored['valid_json']:.3f}", flush=True)
            if side == "tuneforge" and seed == 1:
                print(f"          tuneforge group_by_length={trained['group_by_length']}; best/ holds: "
                      f"{', '.join(trained['adapter_files'])}")
    print(f"\nmean (min-max, std) over seed(s) {', '.join(map(str, args.seeds))}")
    means = {}
    for side, label in (("plain", "plain HF Trainer+PEFT"), ("tuneforge", "tuneforge")):
        mine = [r for r in record["runs"] if r["side"] == side]
        if not mine:
            continue
        means[side] = statistics.mean(r["exact_match"] for r in mine)
        for key in ("exact_match", "exact_match_seen", "exact_match_unseen", "valid_json"):
            print(f"  {label:22} {key:19} {spread([r[key] for r in mine])}")
    if len(means) == 2:
        met = means["tuneforge"] >= means["plain"] - args.tolerance
        print(f"tuneforge mean exact match {means['tuneforge']:.3f} vs plain script {means['plain']:.3f}: "
              f"parity {'met' if met else 'NOT met'}" + (f" (tolerance {args.tolerance})" if args.tolerance else ""))
    print(f"raw results: {saved}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
