"""Benchmark: where does training accuracy go under bf16 autocast? Each fast path, trained in one process on the
same rows in the same order from the same LoRA initialisation, against PEFT's own path under the same autocast.

The end-to-end bench (bench/train_vs_hf.py) compares two whole programs: their data order, dropout draws and
start-up differ, so a few per cent of eval loss there can be any of them. Here only the training arithmetic
differs. Every variant trains `--steps` optimizer steps of a `bench/train_vs_hf.py` shape with tuneforge's own
optimizer and schedule (AdamW, cosine, warm-up 2, gradient clipping 1.0), then is scored by one shared evaluation
(PEFT's unfused forward, padded batches, bf16 autocast as in train_vs_hf's baseline).

    fp32      PEFT, the model's own loss, no autocast: the reference with no bf16 rounding at all
    peft      PEFT, the model's own loss, bf16 autocast: what a plain HF Trainer + PEFT script trains
    head      + tuneforge's objective (loss on target positions only, frozen-head cross-entropy)
    frozen    + frozen linear weights stored in bf16 (tuneforge.models.training.freeze_linears_in_bf16)
    shared    + shared LoRA dropout masks (tuneforge.models.lora_dropout)
    free      + padding-free batches (tuneforge.models.padding_free)
    fused16   + fused LoRA forward/backward with the adapter's output added in bf16, as autocast (and PEFT) add it
    fused     + fused LoRA with the adapter's output added to the base output in fp32: tuneforge's default

Variants are cumulative in that order; `--variants` picks any subset. With `--dropout 0` the runs are deterministic
and every difference is arithmetic; with dropout the masks differ between variants, so give several `--seeds`.

    .venv/bin/python bench/bf16_accuracy.py [--shape short] [--steps 24] [--seeds 7,1,42] [--dropout 0.05]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = ("fp32", "peft", "head", "frozen", "shared", "free", "fused16", "fused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("long", "short", "mixed"), default="short")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seeds", default="7")
    parser.add_argument("--dropout", type=float, help="LoRA dropout (default: the shape's)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]

    import torch
    import train_vs_hf as shapes

    from tuneforge.hardware import cpu_has_bf16
    from tuneforge.train import prepare_run

    if not cpu_has_bf16():
        raise SystemExit("this CPU has no bf16: every variant but fp32 would train in fp32; run it on a bf16 machine")
    with tempfile.TemporaryDirectory(prefix="tuneforge-bf16-") as tmp:
        train, valid = shapes.write_data(Path(tmp), args.shape, args.steps)
        config = shapes.tuneforge_config(train, valid, Path(tmp), args.shape, args.steps)
        prepared = prepare_run(config)
    dropout = shapes.SHAPES[args.shape]["lora_dropout"] if args.dropout is None else args.dropout
    print(f"{args.shape} shape, {args.steps} steps, LoRA dropout {dropout}, seeds {seeds}, "
          f"{torch.get_num_threads()} threads")
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    for seed in seeds:
        for variant in variants:
            started = time.perf_counter()
            loss = train_variant(variant, prepared, config, shapes.lora(args.shape) | {"lora_dropout": dropout}, seed)
            results[variant].append(loss)
            print(f"  seed {seed:>3} {variant:7} eval loss {loss:.5f}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    reference = statistics.mean(results["peft"]) if "peft" in results else None
    print("\nvariant   mean eval loss   vs peft (bf16 autocast)")
    for variant, losses in results.items():
        mean = statistics.mean(losses)
        against = f"{100 * (mean / reference - 1):+6.2f} %" if reference else ""
        print(f"  {variant:7} {mean:12.5f}      {against}")
    saved = Path(__file__).parent / "results" / f"bf16_accuracy.{args.shape}.dropout{dropout}.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"steps": args.steps, "dropout": dropout, "seeds": seeds, "eval_loss": results},
                                indent=2))


def train_variant(variant: str, prepared, config, lora: dict, seed: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collate import collate_causal, collate_causal_padding_free
    from tuneforge.models.fused_lora import fuse_lora
    from tuneforge.models.lora_dropout import share_lora_dropout
    from tuneforge.models.objectives import CausalLMObjective
    from tuneforge.models.training import freeze_linears_in_bf16
    from tuneforge.plan import make_scheduler
    from tuneforge.train.loop import build_optimizer

    rank = VARIANTS.index(variant)
    model = AutoModelForCausalLM.from_pretrained(prepared.model_source, dtype=torch.float32)
    torch.manual_seed(seed)  # the same LoRA initialisation for every variant of a seed
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    if rank >= VARIANTS.index("shared"):
        share_lora_dropout(model)
    if rank >= VARIANTS.index("fused16"):
        fuse_lora(model)
    if variant == "fused16":
        for module in model.modules():
            module._sum_in_fp32 = False  # the fused layers' switch back to autocast's bf16 sum
    if rank >= VARIANTS.index("frozen"):
        freeze_linears_in_bf16(model)
    objective = CausalLMObjective(model)
    optimizer = build_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, prepared.plan)
    rows, pad_id = prepared.data.train, prepared.tokenizer.pad_token_id
    batch_size = config.train_batch_size_per_device
    model.train()
    torch.manual_seed(seed)  # the same dropout stream where the variants draw alike
    for step in range(prepared.plan.total_steps):
        group = rows[step * batch_size:(step + 1) * batch_size]
        if rank >= VARIANTS.index("free"):
            batch = collate_causal_padding_free(group)
        else:
            batch = collate_causal(group, pad_id, context_length=prepared.data.context_length)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant != "fp32"):
            if rank >= VARIANTS.index("head"):
                loss_sum, count = objective(**batch)
                loss = loss_sum / count
            else:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return shared_eval_loss(model, prepared)


def shared_eval_loss(model, prepared) -> float:
    """PEFT's own forward (fused layers put back), padded batches, bf16 autocast: train_vs_hf's yardstick for all."""
    from train_vs_hf import weighted_eval_loss

    from tuneforge.data.collate import collate_causal

    for module in model.modules():
        if hasattr(module, "_peft_forward"):
            module.forward = module._peft_forward

    def pad_longest(examples):
        return collate_causal(examples, prepared.tokenizer.pad_token_id, context_length=prepared.data.context_length)

    return weighted_eval_loss(model, prepared.data.valid, pad_longest, list, bf16=True)


if __name__ == "__main__":
    main()
