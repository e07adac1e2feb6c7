"""A LoRA linear layer's forward and backward in one autograd function, with the matmul layouts chosen by hand.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as four autograd nodes. On CPU that costs more than
the FLOPs say: the rank-r matmuls are memory-bound, and autograd's weight gradients `grad_out.T @ input` read a
[tokens, features] activation column by column (4.8 GFLOP/s for lora_B of gate_proj, torch.profiler on a SmolLM2
step, against ~100 for the base matmuls), plus a separate scale and add over the whole output. `fuse_lora(model)`
gives each plain LoRA linear layer a forward that

- adds the adapter's output into the base output in place (`addmm_` with alpha = scaling: no scaled copy, no add),
- computes lora_B's gradient as `(h.T @ grad_out).T`, reading grad_out row by row,
- folds the adapter's input gradient into the base layer's (`addmm_`) when there is no dropout between them,
- skips the input gradient entirely where nothing upstream needs it (the first block's q/k/v).
- under autocast, casts an input to bf16 once for all the layers that read it (q/k/v, gate/up): +4-10 % per
  step on an AMX CPU (A/B in one process, short and long shapes of bench/train_vs_hf.py).

In fp32 the result equals PEFT's to rounding: same weights, same dropout draw, same gradients
(tests/test_fused_lora.py). Under bf16 autocast it is more accurate than PEFT: the base matmul runs in bf16 as
autocast would run it, but the adapter's output is added to the base output in fp32 and the layer returns fp32.
Autocast (and so PEFT) rounds that sum to bf16, and an adapter early in training changes its layer's output by less
than half a bf16 step (2^-8 of the value): the update is rounded away in the forward pass. That cost a plain
bf16 LoRA run ~10 % of eval loss after 24 steps, all of bf16's gap to fp32 (bench/bf16_accuracy.py: 0.1319 under
autocast, 0.1199 with the fp32 sum, 0.1187 in fp32; tests/test_bf16_paths.py). The fp32 outputs cost ~6-11 % of a
step on an AMX CPU (old and new layer A/B in one process). A layer with `_sum_in_fp32 = False` sums in the autocast
dtype as PEFT does (the benchmark's `fused16` variant).
Layers it does not cover keep PEFT's forward: quantized or non-`nn.Linear` bases (QLoRA), DoRA and other variants,
several active adapters, merged or disabled adapters, a trainable base weight or bias, `lora_bias`.
`fused_lora: false` in the config keeps PEFT's forward everywhere.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class _RecentCasts:
    """The last two inputs cast to the compute dtype, kept until the next ones. q/k/v read one input, gate/up
    another (and with shared dropout, one dropped copy each): cast once instead of per layer. A tensor written in
    place since (its version moved) is cast again."""

    def __init__(self) -> None:
        self.entries: list[tuple[torch.Tensor, int, torch.dtype, torch.Tensor]] = []

    def rows(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if tensor.is_inference():  # no version counter to trust (generation under inference_mode)
            return self.cast(tensor, dtype)
        for source, version, cast_dtype, cast in self.entries:
            if source is tensor and version == tensor._version and cast_dtype == dtype:
                return cast
        cast = self.cast(tensor, dtype)
        self.entries = [(tensor, tensor._version, dtype, cast), *self.entries[:1]]
        return cast

    @staticmethod
    def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return tensor.reshape(-1, tensor.shape[-1]).to(dtype)


_LAST_CASTS = _RecentCasts()


class _LoRALinear(torch.autograd.Function):
    """`base(x) + scaling * B(A(dropped))`: the base matmul in the `compute` dtype (bf16 under bf16 autocast), the
    adapter and the sum in the adapter's own dtype (fp32)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dropped: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, compute: torch.dtype,
                summed: torch.dtype) -> torch.Tensor:
        leading = x.shape[:-1]
        rows = _LAST_CASTS.rows(x, compute)
        dropped_rows = rows if dropped is x else _LAST_CASTS.rows(dropped, compute)
        weight = weight.to(compute)
        out = rows @ weight.t() if bias is None else torch.addmm(bias.to(compute), rows, weight.t())
        out = out.to(summed)
        hidden = (dropped_rows @ lora_a.to(compute).t()).to(summed)
        out.addmm_(hidden, lora_b.to(summed).t(), alpha=scaling)
        ctx.save_for_backward(dropped_rows, hidden, weight, lora_a, lora_b)
        ctx.scaling, ctx.same_input, ctx.dtypes = scaling, dropped is x, (x.dtype, dropped.dtype)
        ctx.input_shape = x.shape
        return out.view(*leading, out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        dropped_rows, hidden, weight, lora_a, lora_b = ctx.saved_tensors
        needs_x, needs_dropped, _, _, needs_a, needs_b, _, _, _ = ctx.needs_input_grad
        x_dtype, dropped_dtype = ctx.dtypes
        compute = weight.dtype
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = (grad_rows @ lora_b.to(grad_rows.dtype)).mul_(ctx.scaling)
        grad_a = (grad_hidden.to(compute).t() @ dropped_rows).to(lora_a.dtype) if needs_a else None
        grad_b = (hidden.t() @ grad_rows).mul_(ctx.scaling).t().to(lora_b.dtype) if needs_b else None
        grad_x = grad_dropped = None
        if needs_x:
            grad_x = (grad_rows.to(compute) @ weight).to(x_dtype)
            if ctx.same_input:
                grad_x.addmm_(grad_hidden.to(x_dtype), lora_a.to(x_dtype))
            grad_x = grad_x.view(ctx.input_shape)
        if needs_dropped and not ctx.same_input:
            grad_dropped = (grad_hidden.to(compute) @ lora_a.to(compute)).to(dropped_dtype).view(ctx.input_shape)
        return grad_x, grad_dropped, None, None, grad_a, grad_b, None, None, None


def _fusable_adapter(layer: Any, args: tuple, kwargs: dict) -> str | None:
    """The one adapter this call can run fused, or None for PEFT's own forward."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}):
        return None
    base, lora_a, lora_b = layer.base_layer, layer.lora_A[adapter], layer.lora_B[adapter]
    if type(base) is not nn.Linear or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    if lora_a.bias is not None or lora_b.bias is not None:
        return None
    return adapter


def _summed_dtype(layer: Any, device_type: str) -> torch.dtype:
    """The dtype the fused layer returns under autocast: the adapter's (fp32), or autocast's with the switch off."""
    if not getattr(layer, "_sum_in_fp32", True) or not layer.active_adapters:
        return torch.get_autocast_dtype(device_type)
    return layer.lora_B[layer.active_adapters[0]].weight.dtype


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapter = _fusable_adapter(self, args, kwargs)
    if adapter is None:
        if self.disable_adapters and not (args or kwargs) and torch.is_autocast_enabled(x.device.type):
            # The base alone (a preference run's reference pass, adapter off) with the fused path's output dtype:
            # the rest of the model then runs with the same numerics as the policy's forward, so a fresh adapter's
            # policy and its reference agree (DPO's first loss is ln 2, not biased by fp32-vs-bf16 residuals).
            return self._peft_forward(x).to(_summed_dtype(self, x.device.type))
        return self._peft_forward(x, *args, **kwargs)
    base, lora_a, lora_b = self.base_layer, self.lora_A[adapter].weight, self.lora_B[adapter].weight
    dropped = self.lora_dropout[adapter](x)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # The base matmul in the autocast dtype, as autocast would run it; the adapter's output is added to it in
        # fp32, where autocast (and PEFT) would round the sum to bf16 and lose the adapter's small early updates.
        with torch.autocast(device_type, enabled=False):
            compute = torch.get_autocast_dtype(device_type)
            summed = _summed_dtype(self, device_type)
            return _LoRALinear.apply(x, dropped, base.weight, base.bias, lora_a, lora_b, self.scaling[adapter],
                                     compute, summed)
    if any(t is not None and t.dtype != x.dtype for t in (base.weight, base.bias, lora_a, lora_b, dropped)):
        return self._peft_forward(x, *args, **kwargs)
    return _LoRALinear.apply(x, dropped, base.weight, base.bias, lora_a, lora_b, self.scaling[adapter], x.dtype,
                             x.dtype)


def fuse_lora(model: nn.Module) -> int:
    """Give every PEFT LoRA linear layer the fused forward (it falls back to PEFT's per call where it does not
    apply). Returns how many layers got it."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused
