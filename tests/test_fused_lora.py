"""The fused LoRA layer: PEFT's numbers through one autograd function, and PEFT's own forward wherever it cannot."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneforge.models.fused_lora import fuse_lora
from tuneforge.models.lora_dropout import share_lora_dropout

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_pair(tiny_llama_dir, dropout: float, **lora_kwargs):
    """The same LoRA model twice: PEFT's forward, and the fused one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=PROJECTIONS, lora_dropout=dropout, init_lora_weights=False,
                        **lora_kwargs)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config).train()
    fused_model = copy.deepcopy(peft_model)
    for model in (peft_model, fused_model):
        share_lora_dropout(model)
    return peft_model, fused_model


def loss_and_grads(model, input_ids) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same dropout draw on both sides
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    return float(loss.detach()), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_gives_peft_loss_and_every_gradient(tiny_llama_dir, dropout):
    peft_model, fused_model = lora_pair(tiny_llama_dir, dropout)
    assert fuse_lora(fused_model) == 2 * len(PROJECTIONS)
    input_ids = torch.randint(0, 1000, (3, 11))
    peft_loss, peft_grads = loss_and_grads(peft_model, input_ids)
    fused_loss, fused_grads = loss_and_grads(fused_model, input_ids)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    assert peft_grads.keys() == fused_grads.keys() and len(peft_grads) == 4 * len(PROJECTIONS)
    for name, grad in peft_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lora_follows_autocast_like_peft(tiny_llama_dir):
    peft_model, fused_model = lora_pair(tiny_llama_dir, 0.0)
    fuse_lora(fused_model)
    input_ids = torch.randint(0, 1000, (2, 9))
    exact = peft_model(input_ids=input_ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        peft_logits = peft_model(input_ids=input_ids).logits
        fused_logits = fused_model(input_ids=input_ids).logits
        fused_model(input_ids=input_ids, labels=input_ids).loss.backward()
    assert fused_logits.dtype == peft_logits.dtype
    # bf16 rounding, not a different computation: both land as far from the fp32 logits
    peft_error = (peft_logits.float() - exact).abs().mean()
    assert (fused_logits.float() - exact).abs().mean() <= 1.5 * peft_error
    grads = [p.grad for p in fused_model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


def test_layers_reading_one_input_cast_it_once_under_autocast(tiny_llama_dir, monkeypatch):
    """q/k/v share their input, gate/up theirs: one bf16 cast per input per block, not one per layer; a tensor
    written in place after its cast is cast again."""
    from tuneforge.models import fused_lora

    casts = []
    real_cast = fused_lora._RecentCasts.cast
    monkeypatch.setattr(fused_lora._RecentCasts, "cast",
                        staticmethod(lambda t, d: (casts.append(t.shape), real_cast(t, d))[1]))
    monkeypatch.setattr(fused_lora, "_LAST_CASTS", fused_lora._RecentCasts())
    _, fused_model = lora_pair(tiny_llama_dir, 0.1)
    fuse_lora(fused_model)
    blocks = fused_model.config.num_hidden_layers
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused_model(input_ids=torch.randint(0, 1000, (2, 9)))
    # per block: the input and its dropped copy for q/k/v, o_proj, gate/up and down_proj: 8 casts, not 14
    assert len(casts) == 8 * blocks

    recent = fused_lora._RecentCasts()
    x = torch.randn(3, 8)
    first = recent.rows(x, torch.bfloat16)
    assert recent.rows(x, torch.bfloat16) is first
    x.mul_(2)
    assert torch.equal(recent.rows(x, torch.bfloat16).float(), first.float() * 2)


def test_fused_lora_hands_what_it_cannot_do_back_to_peft(tiny_llama_dir):
    peft_model, fused_model = lora_pair(tiny_llama_dir, 0.0)
    fuse_lora(fused_model)
    input_ids = torch.randint(0, 1000, (2, 9))
    with fused_model.disable_adapter(), peft_model.disable_adapter():  # adapters off: the base model's output
        torch.testing.assert_close(fused_model(input_ids=input_ids).logits, peft_model(input_ids=input_ids).logits)
    fused_model.merge_adapter()  # merged: PEFT's own forward over the merged weights
    torch.testing.assert_close(fused_model(input_ids=input_ids).logits, peft_model(input_ids=input_ids).logits,
                               rtol=1e-4, atol=1e-4)


def test_fused_lora_is_the_default_and_can_be_turned_off(tiny_llama_dir):
    from tuneforge.config import TrainConfig
    from tuneforge.models import load_model_for_training, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    for fused in (True, False):
        config = TrainConfig(model_id=str(tiny_llama_dir), train_path="x.jsonl", lora_config={"r": 4},
                             fused_lora=fused)
        model = load_model_for_training(config, str(tiny_llama_dir), tokenizer, labels=[],
                                        device=torch.device("cpu"), precision="fp32")
        layers = [m for m in model.modules() if hasattr(m, "lora_A")]
        assert layers and all(hasattr(m, "_peft_forward") == fused for m in layers)
