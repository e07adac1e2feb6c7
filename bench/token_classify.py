"""Benchmark: tuneforge token classification vs a plain HF Trainer + AutoModelForTokenClassification +
DataCollatorForTokenClassification script, in one invocation.

Same data (the demo entity files: training, validation, and the held-out file whose phrasings training never saw),
same encoder (the bundled MiniLM-L6), same epochs, batch size, learning rate, warmup, linear schedule, fp32, and the
same words and tags on both sides (the span rows are split into words once, by tuneforge's reader; the baseline then
tokenizes and aligns labels the way HF's token-classification example does). Each side is scored on the held-out
file the same way: a word's tag from its first subword, entities read strictly, micro F1.

Printed per side: held-out entity F1, real (non-pad) tokens per second of training (every labelled or not real token
of every training step, over the seconds spent in training steps: validation and start-up excluded on both sides),
and the ratios. Targets: tuneforge's F1 not lower, tokens/s ratio >= 1.0.

    .venv/bin/python bench/token_classify.py [--epochs 4] [--threads 1]

With every core given to torch (the default), tuneforge's Ray worker shares the cores with Ray's own processes
(the train controller and its helper actors, the event queue, the agents: ~6-9 % of 2 cores, each Python one waking
100 times a second); `--threads 1` leaves them a core of their own on a 2-core machine and measures the loops alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN, VALID, HELD_OUT = (ROOT / "data" / "demo" / f"entities_{name}.jsonl" for name in ("train", "valid", "heldout"))
BATCH, LR, WARMUP, SEED, CONTEXT = 16, 5e-4, 5, 42, 64


def tuneforge_side(epochs: int, out: Path, threads: int | None) -> dict:
    from tuneforge.config import load_config
    from tuneforge.evaluate import evaluate_tagger
    from tuneforge.rundir import RunDir
    from tuneforge.train import train

    config = load_config(ROOT / "configs" / "entities.yaml", [
        f"num_epochs={epochs}", f"train_batch_size_per_device={BATCH}", f"learning_rate={LR}",
        f"num_warmup_steps={WARMUP}", f"seed={SEED}", f"context_length={CONTEXT}", "precision=fp32",
        f"output_dir={out}", "run_name=tuneforge", *([f"worker_resources={{CPU: {threads}}}"] if threads else [])])
    result = train(config)
    steps = [row for row in RunDir(result.run_dir).metrics() if row["type"] == "step"]
    seconds = sum(row["step_seconds"] for row in steps)
    report = evaluate_tagger(result.run_dir, HELD_OUT, output_dir=out / "eval")
    return {"f1": report.results["f1"], "tokens_per_s": sum(row["tokens"] for row in steps) / seconds,
            "train_seconds": seconds}


def baseline_side(epochs: int, out: Path, threads: int | None) -> dict:
    """What a user writes with transformers alone."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from tuneforge.data.tokens import entity_scores, label_set, read_tagged
    from tuneforge.models.sources import resolve_model

    torch.manual_seed(SEED)
    train, _ = read_tagged(TRAIN)
    held_out, _ = read_tagged(HELD_OUT)
    labels = label_set(train, "IOB2")
    index = {label: i for i, label in enumerate(labels)}
    source = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(source)

    def tokenize_and_align(words: list[str], tags: list[str]) -> dict:
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=CONTEXT)
        previous, aligned = None, []
        for word in encoded.word_ids():
            aligned.append(-100 if word is None or word == previous else index[tags[word]])
            previous = word
        return {**encoded, "labels": aligned}

    dataset = [tokenize_and_align(s.words, s.tags) for s in train]
    model = AutoModelForTokenClassification.from_pretrained(
        source, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index)

    class StepTimer(TrainerCallback):
        """Seconds inside training steps and the real tokens they saw (the same accounting as tuneforge's)."""

        def __init__(self) -> None:
            self.seconds, self.started = 0.0, 0.0

        def on_step_begin(self, *_args, **_kwargs) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs) -> None:
            self.seconds += time.perf_counter() - self.started

    timer = StepTimer()
    arguments = TrainingArguments(
        output_dir=str(out / "hf"), num_train_epochs=epochs, per_device_train_batch_size=BATCH, learning_rate=LR,
        warmup_steps=WARMUP, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0, seed=SEED,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0)
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=[timer],
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    trainer.train()
    real_tokens = sum(len(row["input_ids"]) for row in dataset) * epochs
    model.eval()
    predicted = []
    with torch.no_grad():
        for sentence in held_out:
            encoded = tokenizer(sentence.words, is_split_into_words=True, return_tensors="pt")
            choices = model(**encoded).logits[0].argmax(-1).tolist()
            first = {}
            for position, word in enumerate(encoded.word_ids()):
                if word is not None and word not in first:
                    first[word] = labels[choices[position]]
            predicted.append([first.get(word, "O") for word in range(len(sentence.words))])
    scores = entity_scores([s.tags for s in held_out], predicted, "IOB2")
    return {"f1": scores["f1"], "tokens_per_s": real_tokens / timer.seconds, "train_seconds": timer.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads on both sides (default: every core); with fewer threads than cores, "
                        "Ray's helper processes get a core of their own")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-token-bench-") as tmp:
        baseline = baseline_side(args.epochs, Path(tmp), args.threads)
        tuneforge = tuneforge_side(args.epochs, Path(tmp), args.threads)
    print("| side | held-out entity F1 | real tokens/s | seconds in training steps |")
    print("|---|---|---|---|")
    for name, side in (("HF Trainer script", baseline), ("tuneforge", tuneforge)):
        print(f"| {name} | {side['f1']:.4f} | {side['tokens_per_s']:.1f} | {side['train_seconds']:.1f} |")
    ratio = tuneforge["tokens_per_s"] / baseline["tokens_per_s"]
    print(f"entity F1 tuneforge {tuneforge['f1']:.4f} vs HF {baseline['f1']:.4f} "
          f"({'not lower: met' if tuneforge['f1'] >= baseline['f1'] else 'LOWER: NOT met'}); "
          f"tokens/s ratio {ratio:.2f}× (target 1.0×: {'met' if ratio >= 1.0 else 'NOT met'})")


if __name__ == "__main__":
    main()
