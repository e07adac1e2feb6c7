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

The result equals PEFT's to rounding: same weights, same dropout draw, same gradients (tests/test_fused_lora.py).
Layers it does not cover keep PEFT's forward: quantized or non-`nn.Linear` bases (QLoRA), DoRA and other variants,
several active adapters, merged or disabled adapters, a trainable base weight or bias, `lora_bias`.
`fused_lora: false` in the config keeps PEFT's forward everywhere.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class _LoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dropped: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
        leading = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1])
        dropped_rows = rows if dropped is x else dropped.reshape(-1, x.shape[-1])
        hidden = dropped_rows @ lora_a.t()
        out = torch.addmm(bias, rows, weight.t()) if bias is not None else rows @ weight.t()
        out.addmm_(hidden, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(dropped_rows, hidden, weight, lora_a, lora_b)
        ctx.scaling, ctx.same_input, ctx.input_shape = scaling, dropped is x, x.shape
        return out.view(*leading, out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        dropped_rows, hidden, weight, lora_a, lora_b = ctx.saved_tensors
        needs_x, needs_dropped, _, _, needs_a, needs_b, _ = ctx.needs_input_grad
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = (grad_rows @ lora_b).mul_(ctx.scaling)
        grad_a = grad_hidden.t() @ dropped_rows if needs_a else None
        grad_b = (hidden.t() @ grad_rows).mul_(ctx.scaling).t() if needs_b else None
        grad_x = grad_dropped = None
        if ctx.same_input:
            if needs_x:
                grad_x = (grad_rows @ weight).addmm_(grad_hidden, lora_a).view(ctx.input_shape)
        else:
            if needs_x:
                grad_x = (grad_rows @ weight).view(ctx.input_shape)
            if needs_dropped:
                grad_dropped = (grad_hidden @ lora_a).view(ctx.input_shape)
        return grad_x, grad_dropped, None, None, grad_a, grad_b, None


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


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapter = _fusable_adapter(self, args, kwargs)
    if adapter is None:
        return self._peft_forward(x, *args, **kwargs)
    base = self.base_layer
    tensors = [base.weight, base.bias, self.lora_A[adapter].weight, self.lora_B[adapter].weight]
    dropped = self.lora_dropout[adapter](x)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # What autocast would do op by op: every matmul operand in the autocast dtype, the casts differentiable.
        dtype = torch.get_autocast_dtype(device_type)
        cast_x = x.to(dtype)
        dropped = cast_x if dropped is x else dropped.to(dtype)
        tensors = [None if t is None else t.to(dtype) for t in tensors]
        with torch.autocast(device_type, enabled=False):
            return _LoRALinear.apply(cast_x, dropped, *tensors, self.scaling[adapter])
    if any(t is not None and t.dtype != x.dtype for t in tensors) or dropped.dtype != x.dtype:
        return self._peft_forward(x, *args, **kwargs)
    return _LoRALinear.apply(x, dropped, *tensors, self.scaling[adapter])


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
