"""Benchmark: how far a LoRA training step is from what this CPU's matmul units allow — the roofline behind the
"2x the plain script" target.

In one process, on the same batches of a `bench/train_vs_hf.py` shape, for the plain script's step (PEFT, padded
batches, the model's own loss over the whole vocabulary, bf16 autocast where the CPU has bf16) and tuneforge's
(target-only frozen-head loss, shared dropout, padding-free batches, fused LoRA with fp32 sums, frozen weights in
bf16):

Three steps: `plain`, `tf-before` (tuneforge before this round: the fused layers' adapter sum in bf16) and
`tuneforge` (now: the sum in fp32, see bench/bf16_accuracy.py).

- the machine's measured matmul peaks: bf16 (AMX / avx512_bf16 through oneDNN) and fp32, 2 threads, on the
  step's own matmul shapes;
- FLOP per real token of each step, counted by torch.utils.flop_counter (forward and backward, every matmul and
  attention op the step runs, pad tokens and the full-vocabulary head included where the step computes them);
- the share of the step's time spent outside matmul and attention kernels (torch.profiler, self time per op);
- the ceiling: real tokens/s if every FLOP of the step ran at the measured peak, and the plain script's speed as a
  fraction of it. When the plain script already runs at more than half of the ceiling of tuneforge's own FLOPs,
  2x is out of reach on this machine whatever the engine does.

    .venv/bin/python bench/roofline.py [--shape short|long|mixed] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BATCHES = 5
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::addmm_",
              "mkldnn::_linear_pointwise", "aten::_mkldnn_linear")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def matmul_peak(dtype, shapes: list[tuple[int, int, int]], repeats: int = 20) -> float:
    """Best GFLOP/s over the given (m, k, n) shapes."""
    import torch

    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        for _ in range(3):
            a @ b
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - started) / 1e9)
    return best


class Step:
    """One forward + backward of a step variant over the shape's batches (gradients dropped, no optimizer)."""

    def __init__(self, model, batches, loss, bf16: bool):
        self.model, self.batches, self.loss, self.bf16 = model, batches, loss, bf16

    def real_tokens(self, index: int) -> int:
        return int(self.batches[index]["attention_mask"].sum())

    def run(self, index: int) -> float:
        import torch

        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(self.batches[index])
        loss.backward()
        self.model.zero_grad(set_to_none=True)
        return time.perf_counter() - started


def build_steps(prepared, lora: dict, bf16: bool, count: int) -> dict[str, Step]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collate import collate_causal, collate_causal_padding_free
    from tuneforge.models.fused_lora import fuse_lora
    from tuneforge.models.lora_dropout import share_lora_dropout
    from tuneforge.models.objectives import CausalLMObjective
    from tuneforge.models.training import freeze_linears_in_bf16

    def lora_model():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(prepared.model_source, dtype=torch.float32)
        return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora)).train()

    rows, size = prepared.data.train, 8
    groups = [rows[i * size:(i + 1) * size] for i in range(count)]
    plain = lora_model()
    padded = [collate_causal(g, prepared.tokenizer.pad_token_id, context_length=prepared.data.context_length)
              for g in groups]
    packed = [collate_causal_padding_free(g) for g in groups]

    def tuneforge_step(sum_in_fp32: bool) -> Step:
        model = lora_model()
        share_lora_dropout(model)
        fuse_lora(model)
        for module in model.modules():
            module._sum_in_fp32 = sum_in_fp32
        if bf16:
            freeze_linears_in_bf16(model)
        objective = CausalLMObjective(model)

        def objective_loss(batch):
            loss_sum, count = objective(**batch)
            return loss_sum / count

        return Step(model, packed, objective_loss, bf16)

    return {"plain": Step(plain, padded, lambda batch: plain(**batch).loss, bf16),
            "tf-before": tuneforge_step(sum_in_fp32=False), "tuneforge": tuneforge_step(sum_in_fp32=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("long", "short", "mixed"), default="short")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--top", type=int, default=10, help="print the ops with the most self time per step")
    args = parser.parse_args()

    import torch
    import train_vs_hf as shapes
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from tuneforge.hardware import cpu_has_bf16

    bf16 = cpu_has_bf16()
    with tempfile.TemporaryDirectory(prefix="tuneforge-roofline-") as tmp:
        train, valid = shapes.write_data(Path(tmp), args.shape, BATCHES)
        from tuneforge.train import prepare_run

        prepared = prepare_run(shapes.tuneforge_config(train, valid, Path(tmp), args.shape, BATCHES))
    hidden = 576
    tokens = 1024
    step_shapes = [(tokens, hidden, hidden), (tokens, hidden, 1536), (tokens, 1536, hidden), (2048, 2048, 2048)]
    peaks = {"bf16": matmul_peak(torch.bfloat16, step_shapes) if bf16 else None,
             "fp32": matmul_peak(torch.float32, step_shapes),
             "bf16_step_shapes": matmul_peak(torch.bfloat16, step_shapes[:3]) if bf16 else None}
    steps = build_steps(prepared, shapes.lora(args.shape), bf16, BATCHES)
    results = {}
    for name, step in steps.items():
        step.run(0)  # warm-up
        with FlopCounterMode(display=False) as counter:
            step.run(1)
        flop_per_token = counter.get_total_flops() / step.real_tokens(1)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            step.run(2)
        self_time = defaultdict(float)
        for event in profiler.key_averages():
            self_time[event.key] += event.self_cpu_time_total
        total = sum(self_time.values())
        matmul = sum(t for op, t in self_time.items() if op in MATMUL_OPS)
        attention = sum(t for op, t in self_time.items() if op in ATTENTION_OPS)
        top = sorted(self_time.items(), key=lambda item: -item[1])[:args.top]
        results[name] = {"top_ops": [(op, t / total) for op, t in top], "gflop_per_token": flop_per_token / 1e9,
                         "matmul_share": matmul / total, "attention_share": attention / total,
                         "outside_share": 1 - (matmul + attention) / total}
    # Timed round-robin over the same batches, so drift on a shared machine hits both steps alike.
    seconds, real = {name: [] for name in steps}, dict.fromkeys(steps, 0)
    for round_ in range(args.rounds):
        index = 1 + round_ % (BATCHES - 1)
        for name, step in steps.items():
            seconds[name].append(step.run(index))
            real[name] += step.real_tokens(index)
    for name in steps:
        results[name].update(tokens_per_second=real[name] / sum(seconds[name]),
                             median_step_s=statistics.median(seconds[name]))
    peak = peaks["bf16"] or peaks["fp32"]
    print(f"{args.shape} shape, {torch.get_num_threads()} threads, {'bf16 autocast' if bf16 else 'fp32'}")
    print(f"measured matmul peak: bf16 {peaks['bf16'] or 0:.0f} GFLOP/s (on the step's own [1024 x 576 x 1536] "
          f"shapes: {peaks['bf16_step_shapes'] or 0:.0f}), fp32 {peaks['fp32']:.0f} GFLOP/s")
    print(f"{'step':11}{'tokens/s':>10}{'GFLOP/token':>13}{'GFLOP/s':>9}{'of peak':>9}{'matmul':>8}{'attn':>7}"
          f"{'outside':>9}{'ceiling tok/s':>15}")
    for name, row in results.items():
        achieved = row["tokens_per_second"] * row["gflop_per_token"]
        row["ceiling_tokens_per_second"] = peak / row["gflop_per_token"]
        print(f"{name:11}{row['tokens_per_second']:10.0f}{row['gflop_per_token']:13.3f}{achieved:9.0f}"
              f"{achieved / peak:9.0%}{row['matmul_share']:8.0%}{row['attention_share']:7.0%}"
              f"{row['outside_share']:9.0%}{row['ceiling_tokens_per_second']:15.0f}")
    for name, row in results.items():
        print(f"{name}: most self time: " + ", ".join(f"{op.removeprefix('aten::')} {share:.0%}"
                                                      for op, share in row["top_ops"]))
    plain, ours = results["plain"], results["tuneforge"]
    reachable = ours["ceiling_tokens_per_second"] / plain["tokens_per_second"]
    print(f"tuneforge / plain: {ours['tokens_per_second'] / plain['tokens_per_second']:.2f}x measured; the most any "
          f"engine doing tuneforge's FLOPs could reach here is {reachable:.2f}x (every FLOP at the peak)")
    saved = Path(__file__).parent / "results" / f"roofline.{args.shape}.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"peaks_gflops": peaks, "steps": results}, indent=2))


if __name__ == "__main__":
    main()
