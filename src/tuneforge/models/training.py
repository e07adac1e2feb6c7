"""Building the model to train: base weights, LoRA / QLoRA adapters, gradient checkpointing, bf16 storage of frozen
layers, torch.compile; and checking LoRA targets on a weightless copy before anything loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tuneforge.models.fused_lora import fuse_lora
from tuneforge.models.lora_dropout import share_lora_dropout
from tuneforge.models.sources import ModelError
from tuneforge.models.tokenizers import match_vocab, use_pad_token
from tuneforge.taskspec import get_spec


def lora_settings(lora_config: dict[str, Any], task: str) -> dict[str, Any]:
    """The user's LoraConfig fields plus tuneforge's defaults: every linear layer, the right task type."""
    settings = dict(lora_config)
    settings.setdefault("target_modules", "all-linear")
    settings.setdefault("task_type", get_spec(task).lora_task_type)
    return settings


def make_lora_config(lora_config: dict[str, Any], task: str) -> Any:
    from peft import LoraConfig

    try:
        return LoraConfig(**lora_settings(lora_config, task))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"lora_config: {exc}") from None


def load_model_for_training(
    config: Any, source: str, tokenizer: Any, *, labels: list[str], device: Any, precision: str,
    resume_dir: Path | None = None, init_adapter: Path | None = None,
) -> Any:
    """The model to train: base weights (or a full-FT checkpoint when resuming), vocab matched to the tokenizer,
    gradient checkpointing as configured, LoRA adapters (restored when resuming; `init_adapter`'s, init_from, when
    starting)."""
    import torch

    from tuneforge.hardware import gradient_checkpointing_wanted

    full_resume = resume_dir is not None and not config.uses_lora
    kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    if config.load_in_4bit:
        kwargs.update(quantization_config=four_bit_config(), device_map={"": device})
    # A frozen LoRA base on a bf16 GPU can live in bf16; trained weights stay fp32 (the optimizer's master copy).
    frozen_bf16 = config.uses_lora and device.type == "cuda" and precision == "bf16"
    kwargs["dtype"] = torch.bfloat16 if frozen_bf16 else torch.float32
    model = load_pretrained(config.task, str(resume_dir) if full_resume else source, labels, kwargs)
    match_vocab(model, tokenizer)
    use_pad_token(model, tokenizer)
    checkpointing = gradient_checkpointing_wanted(config.no_gradient_checkpoint, device)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.uses_lora:
        model = attach_lora(model, config, resume_dir or init_adapter)
        if config.shared_lora_dropout:
            share_lora_dropout(model)
        if config.fused_lora and not config.torch_compile:  # compile fuses by itself; keep its graphs PEFT's
            fuse_lora(model)
        if precision == "bf16" and not config.load_in_4bit:
            freeze_linears_in_bf16(model)
    if config.torch_compile:
        compile_layers(model)
    return model.to(device) if not config.load_in_4bit else model


def compile_layers(model: Any) -> int:
    """torch.compile every transformer block in place (LoRA layers included), with dynamic shapes so that batches
    of different lengths reuse one graph. Blocks rather than the whole model: the loss, the PEFT wrapper and
    gradient checkpointing stay eager, and the compiled graphs are small. Returns how many were compiled."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    if not blocks:
        raise ModelError(f"torch_compile: no transformer blocks found in {type(model).__name__}; "
                         "set torch_compile: false")
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def freeze_linears_in_bf16(model: Any) -> None:
    """Store frozen Linear weights in bf16. Under bf16 autocast every matmul casts its weight to bf16 anyway, so
    the arithmetic is unchanged; what goes is a cast per layer per step and half the weights' memory. Embeddings,
    norms and the (tied) output layer stay fp32."""
    import torch

    output = model.get_output_embeddings()
    for module in model.modules():
        if (isinstance(module, torch.nn.Linear) and module is not output and not module.weight.requires_grad
                and module.weight.dtype == torch.float32):
            module.to(torch.bfloat16)


def load_pretrained(task: str, source: str, labels: list[str], kwargs: dict[str, Any]) -> Any:
    from tuneforge.models.loading import head_kwargs, model_class

    spec = get_spec(task)
    return model_class(spec).from_pretrained(source, **head_kwargs(spec, labels), **kwargs)


def attach_lora(model: Any, config: Any, adapter_dir: Path | None) -> Any:
    """A new adapter as lora_config says, or the one saved in `adapter_dir` (resumed, or init_from) to train on."""
    from peft import PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    return get_peft_model(model, make_lora_config(config.lora_config, config.task))


def four_bit_config() -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("load_in_4bit needs bitsandbytes: pip install 'tuneforge[qlora]'")
    compute = torch.bfloat16 if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def check_lora_targets(config: Any, model_config: Any, labels: list[str]) -> None:
    """Build the model on the meta device (no memory, no weights) to catch bad target_modules before Ray starts."""
    if not config.uses_lora:
        return
    import torch
    from peft import get_peft_model

    at = config.source_of("lora_config")
    try:
        lora = make_lora_config(config.lora_config, config.task)
    except ModelError as exc:
        raise ModelError(f"{at}: {exc}") from None
    from tuneforge.models.loading import model_class, skeleton_config

    spec = get_spec(config.task)
    with torch.device("meta"):
        skeleton = model_class(spec).from_config(skeleton_config(spec, model_config, labels),
                                                 trust_remote_code=config.trust_remote_code)
    check_target_modules(config, skeleton)
    try:
        get_peft_model(skeleton, lora)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{at}: lora_config: {str(exc).splitlines()[0]}") from None


def check_target_modules(config: Any, model: Any) -> None:
    """Every listed target names a module of the model (PEFT itself refuses only a list that matches nothing)."""
    targets = config.lora_config.get("target_modules")
    if not isinstance(targets, (list, tuple)):
        return  # "all-linear", or a regex that PEFT matches itself
    names = [name for name, _ in model.named_modules()]
    missing = [str(target) for target in targets if not any(n == target or n.endswith(f".{target}") for n in names)]
    if missing:
        raise ModelError(
            f"{config.source_of('lora_config', 'target_modules')}: lora_config.target_modules: {', '.join(missing)} "
            f"not in {type(model).__name__}; its layers LoRA can target: {', '.join(lora_target_names(model))}"
        )


def lora_target_names(model: Any) -> list[str]:
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, Conv1D)
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, kinds)})


def trainable_counts(model: Any) -> dict[str, int]:
    """PEFT's count for adapters (it counts 4-bit packed weights at their real size); a plain sum for full FT."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
