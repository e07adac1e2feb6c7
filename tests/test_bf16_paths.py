"""Every training fast path under bf16 autocast, against PEFT's unfused path under the same autocast.

Under bf16 the two cannot agree to fp32 rounding, so each test says what "the same" means: the frozen-bf16 storage
is bit-identical; the head loss, padding-free batches and shared dropout agree with PEFT to bf16 rounding (measured
as each side's distance from the fp32 computation); the fused LoRA layer is *closer* to fp32 than PEFT is, because
it adds the adapter's output to the base output in fp32 where autocast rounds the sum to bf16 and loses the
adapter's small early updates (bench/bf16_accuracy.py: eval loss after 24 steps 0.1319 with PEFT under autocast,
0.1199 fused, 0.1187 in fp32).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tuneforge.data.collate import collate_causal, collate_causal_padding_free
from tuneforge.hardware import cpu_has_bf16
from tuneforge.models.fused_lora import fuse_lora
from tuneforge.models.lora_dropout import share_lora_dropout
from tuneforge.models.objectives import CausalLMObjective
from tuneforge.models.training import freeze_linears_in_bf16

from .test_padding_free import rows

pytestmark = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions (avx512_bf16 / AMX): "
                                "tuneforge trains in fp32 here, and emulated bf16 is not what users run")

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_model(tiny_llama_dir, dropout: float = 0.0, init_scale: float = 1.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=PROJECTIONS, lora_dropout=dropout,
                                      init_lora_weights=False)).train()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(init_scale)
    return model


def model_loss(model, batch) -> torch.Tensor:
    """What a plain HF Trainer + PEFT script trains on: the model's own loss."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def objective_loss(model, batch) -> torch.Tensor:
    loss_sum, count = CausalLMObjective(model)(**batch)
    return loss_sum / count


def loss_and_grads(model, batch, loss_fn, bf16: bool = True, seed: int = 1) -> tuple[float, torch.Tensor]:
    """The loss and every LoRA gradient laid end to end in one vector."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, batch)
    loss.backward()
    grads = [p.grad.flatten() for _, p in sorted(model.named_parameters()) if p.requires_grad]
    return float(loss.detach()), torch.cat(grads)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def padded(examples):
    return collate_causal(examples, 0, context_length=64)


@pytest.fixture
def examples():
    return rows([9, 23, 5, 16, 12, 7])


def test_target_only_head_loss_matches_the_models_loss_under_bf16(tiny_llama_dir, examples):
    model = peft_model(tiny_llama_dir)
    batch = padded(examples)
    exact_loss, exact = loss_and_grads(model, batch, model_loss, bf16=False)
    peft_loss, peft = loss_and_grads(model, batch, model_loss)
    ours_loss, ours = loss_and_grads(model, batch, objective_loss)
    assert ours_loss == pytest.approx(peft_loss, rel=2e-3)
    assert distance(ours, peft) < 1.5 * distance(peft, exact)
    # the head's gradient formed chunk by chunk is no further from fp32 than autocast's own
    assert distance(ours, exact) <= 1.1 * distance(peft, exact) + 1e-3
    assert abs(ours_loss - exact_loss) <= 1.1 * abs(peft_loss - exact_loss) + 1e-3


def test_frozen_linears_stored_in_bf16_change_nothing_under_bf16(tiny_llama_dir, examples):
    model = peft_model(tiny_llama_dir)
    stored = copy.deepcopy(model)
    freeze_linears_in_bf16(stored)
    kinds = {m.weight.dtype for n, m in stored.named_modules() if n.endswith("base_layer")}
    assert kinds == {torch.bfloat16}
    batch = padded(examples)
    for loss_fn in (model_loss, objective_loss):
        loss, grads = loss_and_grads(model, batch, loss_fn)
        stored_loss, stored_grads = loss_and_grads(stored, batch, loss_fn)
        assert stored_loss == loss  # autocast casts each fp32 weight to these very bf16 values
        assert torch.equal(stored_grads, grads)


def test_padding_free_batches_match_padded_ones_under_bf16(tiny_llama_dir, examples):
    model = peft_model(tiny_llama_dir)
    _, exact = loss_and_grads(model, padded(examples), objective_loss, bf16=False)
    padded_loss, padded_grads = loss_and_grads(model, padded(examples), objective_loss)
    packed_loss, packed_grads = loss_and_grads(model, collate_causal_padding_free(examples), objective_loss)
    assert packed_loss == pytest.approx(padded_loss, rel=5e-3)
    assert distance(packed_grads, padded_grads) < 1.5 * distance(padded_grads, exact)
    assert distance(packed_grads, exact) <= 1.5 * distance(padded_grads, exact) + 1e-3


def test_shared_dropout_trains_on_the_same_expected_gradient_under_bf16(tiny_llama_dir, examples):
    peft = peft_model(tiny_llama_dir, dropout=0.1)
    shared = copy.deepcopy(peft)
    assert share_lora_dropout(shared) == 2 * len(PROJECTIONS)
    batch = padded(examples)

    def mean_gradient(model, seeds) -> torch.Tensor:
        return torch.stack([loss_and_grads(model, batch, model_loss, seed=seed)[1] for seed in seeds]).mean(0)

    # Masks cannot be drawn alike, so compare expectations: the mean gradient over 48 draws. Two PEFT means over
    # different draws set the scale of the sampling noise (~0.25 here); shared masks must sit within it.
    peft_mean, peft_again = mean_gradient(peft, range(48)), mean_gradient(peft, range(100, 148))
    shared_mean = mean_gradient(shared, range(48))
    noise = distance(peft_again, peft_mean)
    assert distance(shared_mean, peft_mean) < 1.3 * noise
    assert distance(shared_mean, peft_again) < 1.3 * noise


def test_fused_lora_matches_peft_under_bf16_and_sits_closer_to_fp32(tiny_llama_dir, examples):
    peft = peft_model(tiny_llama_dir)
    fused = copy.deepcopy(peft)
    fuse_lora(fused)
    batch = padded(examples)
    exact_loss, exact = loss_and_grads(peft, batch, objective_loss, bf16=False)
    peft_loss, peft_grads = loss_and_grads(peft, batch, objective_loss)
    fused_loss, fused_grads = loss_and_grads(fused, batch, objective_loss)
    rounding = distance(peft_grads, exact)  # how far bf16 puts PEFT's own gradients from fp32's (~4 % here)
    assert fused_loss == pytest.approx(peft_loss, rel=2e-3) and fused_loss == pytest.approx(exact_loss, rel=2e-3)
    assert distance(fused_grads, peft_grads) < 1.5 * rounding
    assert distance(fused_grads, exact) <= rounding


def test_a_small_adapter_update_survives_the_fused_layer_but_not_autocasts_bf16_sum(tiny_llama_dir):
    # An adapter early in training: its output is ~1e-4 of the base output's, below half a bf16 step.
    peft = peft_model(tiny_llama_dir, init_scale=1e-3)
    fused = copy.deepcopy(peft)
    fuse_lora(fused)
    layer = "base_model.model.model.layers.0.self_attn.o_proj"
    peft_layer, fused_layer = peft.get_submodule(layer), fused.get_submodule(layer)
    x = torch.randn(64, 64)
    with torch.no_grad():
        exact_delta = peft_layer(x) - peft_layer.base_layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base = peft_layer.base_layer(x).float()
            peft_delta = peft_layer(x).float() - base
            fused_delta = fused_layer(x).float() - base
    assert distance(fused_delta, exact_delta) < 0.05  # the adapter's contribution, to bf16 input rounding
    assert distance(peft_delta, exact_delta) > 0.5  # mostly rounded away


def test_a_fresh_adapters_reference_pass_equals_its_policy_under_bf16(tiny_llama_dir):
    """Preference tuning with reference: base — the adapter switched off — must see the very model the policy is
    at step 0 (a fresh adapter adds nothing): then DPO starts at ln 2. The fused layer returns fp32 under autocast,
    so its switched-off path must too, or the rest of the model runs in another precision and every reward starts
    biased."""
    from tuneforge.models.preference import PreferenceObjective
    from tuneforge.models.preference_losses import PreferenceLossSettings, pair_losses

    model = peft_model(tiny_llama_dir, init_scale=0.0)  # lora_B = 0: the adapter adds nothing yet
    freeze_linears_in_bf16(model)
    fuse_lora(model)
    examples = rows([12, 20, 9, 16])
    batch = collate_causal(examples, 0, context_length=64)  # two pairs: chosen rows 0 and 1, rejected rows 2 and 3  # chosen rows, then rejected rows
    objective = PreferenceObjective(model, PreferenceLossSettings(), reference="base")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        policy = objective.reference_logps(batch)
        with objective.reference_model():
            reference = objective.reference_logps(batch)
    assert torch.equal(policy, reference)
    count = torch.ones(len(policy))  # token counts matter to ipo, orpo and simpo only
    loss = pair_losses(PreferenceLossSettings(), policy[:, 0], policy[:, 1], count, count, reference[:, 0],
                       reference[:, 1]).losses
    assert torch.allclose(loss, torch.full_like(loss, torch.log(torch.tensor(2.0)).item()), atol=1e-6)
