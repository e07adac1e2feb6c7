"""A LoRA model folded for inference: a copy of the base in which each adapted layer's weight is replaced by
`W + scaling * B @ A`, every other tensor shared with the original rather than copied.

Generating one token at a time, PEFT's unmerged forward pays for each adapted layer a wrapper, a dropout module
and two rank-r matmuls: ~200 small calls per token on a 30-block model. Folded, SmolLM2 generated 1.26x faster per
request and 1.19x batched on an AMX CPU, same answers (bench/genmetrics.py); fp32 decode is otherwise bound by
reading the weights. PEFT's own `merge_adapter()` folds the adapter *in place* and
`unmerge_adapter()` subtracts it again, which leaves the base weights a rounding step off after every switch and
cannot run while training continues; this copy leaves the model it came from untouched, so the base (adapters off)
and other adapters keep serving from it.

The fold is exact only where the weights are stored in the adapter's dtype: a bf16 base (QLoRA, bf16 storage of
frozen layers during training) would round the adapter's small updates away, so such models are not folded.

On CPUs with native bf16 (AVX512-BF16 / AMX) the folded copy's linear layers are then cast to bf16 once and laid out
for oneDNN's kernels once (`PackedBf16Linear`), as the model trained there under bf16 autocast computed them:
batched decoding of SmolLM2 ran 1.7x faster than the fp32 fold (2.1x PEFT unmerged), answers unchanged on the
demo's held-out rows. One request at a time gains little more (~1.07x): that is bound by reading the weights, and
oneDNN's bf16 matrix-vector kernel reads half the bytes at ~60 % of fp32's bandwidth. Packing fp32 weights the same
way was slower than plain fp32, so other CPUs keep the fp32 fold.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def foldable_adapter(model: nn.Module) -> str | None:
    """The active adapter of a PEFT LoRA model when it can be folded exactly, else None."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    if not hasattr(model, "get_base_model") or getattr(model, "active_adapters", None) is None:
        return None
    adapters = list(model.active_adapters)
    if len(adapters) != 1:
        return None
    adapter = adapters[0]
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    for layer in layers:
        if type(layer) is not LoraLinear or layer.disable_adapters or layer.merged:
            return None
        if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}) or layer.lora_bias.get(adapter):
            return None
        if type(layer.base_layer) is not nn.Linear or layer.base_layer.weight.dtype != layer.lora_A[adapter].weight.dtype:
            return None
    return adapter if layers else None


class PackedBf16Linear(nn.Module):
    """An inference-only linear layer: its weight cast to bf16 and reordered for oneDNN once, not at every call.
    Takes and returns the caller's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, 1), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("packed_bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.packed_bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def bf16_packing_pays(model: nn.Module) -> bool:
    """True on a CPU with native bf16 for an fp32 model: see the module's docstring for the measurements."""
    from tuneforge.hardware import cpu_has_bf16

    weight = next(model.parameters(), None)
    return (weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32 and cpu_has_bf16()
            and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_linears_bf16(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (an inference copy) with a PackedBf16Linear, in place."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, PackedBf16Linear(module))
    return model


def inference_copy(model: nn.Module, pack_bf16: bool | None = None) -> nn.Module | None:
    """The folded copy (None where folding is not exact), with bf16-packed linears where that pays (pack_bf16 None)
    or as pack_bf16 says."""
    folded = folded_copy(model)
    if folded is not None and (bf16_packing_pays(folded) if pack_bf16 is None else pack_bf16):
        folded = pack_linears_bf16(folded)
    return folded


@torch.no_grad()
def folded_copy(model: nn.Module) -> nn.Module | None:
    """The base model with the active adapter folded into copies of the adapted weights, or None where that would
    not be exact (see foldable_adapter). The result is in eval mode and shares every unadapted tensor."""
    from peft.tuners.lora import LoraLayer

    adapter = foldable_adapter(model)
    if adapter is None:
        return None
    base = model.get_base_model()
    shared = {id(tensor): tensor for tensor in [*base.parameters(), *base.buffers()]}
    folded = copy.deepcopy(base, memo=shared)  # new modules around the same tensors
    for name, layer in list(folded.named_modules()):
        if not isinstance(layer, LoraLayer):
            continue
        inner = layer.base_layer
        linear = nn.Linear(inner.in_features, inner.out_features, bias=inner.bias is not None,
                           device=inner.weight.device, dtype=inner.weight.dtype)
        linear.weight = nn.Parameter(inner.weight + layer.get_delta_weight(adapter), requires_grad=False)
        if inner.bias is not None:
            linear.bias = inner.bias
        parent, _, child = name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, child, linear)
    return folded.eval()
