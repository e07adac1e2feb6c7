"""Benchmark: one training step, variant against variant, in one process on the same model and batches.

On a noisy 2-core VM two runs of the same step minutes apart differ by 30 %; this runs the variants round-robin
(A, B, C, A, B, C, ...) over the same batches of a `bench/train_vs_hf.py` shape, so drift hits them alike.
No Ray, no optimizer: forward + backward of SmolLM2-135M with LoRA r=8 on all projections.

    hf        the model's own loss (all positions, padded batch, PEFT dropout): what the HF Trainer computes
    tf        tuneforge's objective (target positions, frozen-head loss), padded batch, PEFT dropout
    tfs       + shared LoRA dropout masks (tuneforge.models.lora_dropout)
    tfsp      + padding-free batches (tuneforge.models.padding_free)
    tfspf     + fused LoRA forward/backward (tuneforge.models.fused_lora): tuneforge's default

    .venv/bin/python bench/step_ab.py [--shape short|long|mixed] [--variants hf,tf,tfs,tfsp,tfspf] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BATCHES = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("long", "short", "mixed"), default="short")
    parser.add_argument("--variants", default="hf,tf,tfs,tfsp,tfspf")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    variants = args.variants.split(",")

    import torch
    import train_vs_hf as shapes
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collate import collate_causal, collate_causal_padding_free
    from tuneforge.models.fused_lora import fuse_lora
    from tuneforge.models.lora_dropout import share_lora_dropout
    from tuneforge.models.objectives import CausalLMObjective
    from tuneforge.train import prepare_run

    with tempfile.TemporaryDirectory(prefix="tuneforge-step-ab-") as tmp:
        train, valid = shapes.write_data(Path(tmp), args.shape, BATCHES)
        prepared = prepare_run(shapes.tuneforge_config(train, valid, Path(tmp), args.shape, BATCHES))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(prepared.model_source, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **shapes.lora(args.shape))).train()
    objective = CausalLMObjective(model)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    peft_dropouts = [m.lora_dropout["default"] for m in layers]
    share_lora_dropout(model)
    shared_dropouts = [m.lora_dropout["default"] for m in layers]
    fuse_lora(model)
    fused_forwards = [m.forward for m in layers]
    rows = prepared.data.train
    groups = [rows[i * shapes.BATCH:(i + 1) * shapes.BATCH] for i in range(BATCHES)]
    padded = [collate_causal(g, prepared.tokenizer.pad_token_id, context_length=prepared.data.context_length)
              for g in groups]
    packed = [collate_causal_padding_free(g) for g in groups]

    def step(variant: str, index: int) -> float:
        for layer, dropout in zip(layers, shared_dropouts if variant.startswith("tfs") else peft_dropouts):
            layer.lora_dropout["default"] = dropout
        for layer, fused in zip(layers, fused_forwards):
            layer.forward = fused if variant == "tfspf" else layer._peft_forward
        batch = (packed if variant.startswith("tfsp") else padded)[index]
        started = time.perf_counter()
        if variant == "hf":
            loss = model(**batch).loss
        else:
            loss_sum, count = objective(**batch)
            loss = loss_sum / count
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step(variants[0], 0)  # warm-up
    seconds = {v: [] for v in variants}
    tokens = {v: 0 for v in variants}
    for round_ in range(args.rounds):
        index = 1 + round_ % (BATCHES - 1)
        for variant in variants:
            seconds[variant].append(step(variant, index))
            tokens[variant] += int(padded[index]["attention_mask"].sum())
    base = tokens[variants[0]] / sum(seconds[variants[0]])
    print(f"{args.shape} shape, {args.rounds} rounds, {torch.get_num_threads()} threads, real tokens/s:")
    for variant in variants:
        rate = tokens[variant] / sum(seconds[variant])
        print(f"  {variant:5} {rate:8.1f}  {rate / base:5.2f}x {variants[0]}  median step "
              f"{statistics.median(seconds[variant]):.2f} s")


if __name__ == "__main__":
    main()
