"""The folded inference copy of a LoRA model: PEFT's answers, the original untouched, only the adapted weights new."""

from __future__ import annotations

import pytest
import torch

from tuneforge.models.inference import folded_copy


def lora_model(tiny_llama_dir, targets="all-linear"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)).eval()


def test_the_folded_copy_gives_the_adapters_logits_and_leaves_the_model_as_it_was(tiny_llama_dir):
    model = lora_model(tiny_llama_dir)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    input_ids = torch.randint(0, 1000, (2, 13))
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
        folded = folded_copy(model)
        torch.testing.assert_close(folded(input_ids=input_ids).logits, expected, rtol=1e-4, atol=1e-4)
        with model.disable_adapter():  # the base is still there, unchanged, for `--compare-base` and `base`
            base_logits = model(input_ids=input_ids).logits
    assert not torch.allclose(base_logits, expected, atol=1e-3)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert not any("lora" in name for name, _ in folded.named_parameters())


def test_only_the_adapted_weights_are_copied(tiny_llama_dir):
    model = lora_model(tiny_llama_dir, targets=["q_proj", "v_proj"])
    folded = folded_copy(model)
    original = dict(model.get_base_model().named_parameters())
    for name, parameter in folded.named_parameters():
        adapted = name.endswith(("q_proj.weight", "v_proj.weight"))
        source = original[name.replace(".weight", ".base_layer.weight")] if adapted else original[name]
        assert (parameter.data_ptr() == source.data_ptr()) != adapted, name


def test_a_base_stored_in_bf16_is_not_folded(tiny_llama_dir):
    # W + BA rounded to bf16 would lose the adapter's small updates: generate unmerged instead
    model = lora_model(tiny_llama_dir)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            module.to(torch.bfloat16)
    assert folded_copy(model) is None


def test_generate_answers_through_the_folded_copy_as_it_did_unmerged(tiny_lora_run):
    from tuneforge.generate import GenerationSettings, Generator

    generator = Generator.from_path(tiny_lora_run)
    prompts = ["Meet Ana in Porto on 3 May about the budget.", "Lunch with Bo, Oslo, 9 June, hiring."]
    settings = GenerationSettings(max_new_tokens=12)
    folded = generator.complete(prompts, settings)
    assert generator.runner(use_base=False) is not generator.model  # the folded copy answered
    unmerged = Generator(generator.model, generator.tokenizer, generator.meta, fold_adapter=False)
    assert [c.text for c in unmerged.complete(prompts, settings)] == [c.text for c in folded]
    base = generator.complete(prompts, settings, use_base=True)
    assert [c.text for c in base] != [c.text for c in folded]


bf16_kernels = pytest.mark.skipif(not (torch.backends.mkldnn.is_available()
                                       and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                                  reason="oneDNN has no bf16 kernels on this CPU")


@bf16_kernels
def test_a_packed_bf16_linear_computes_the_linear_in_bf16():
    from tuneforge.models.inference import PackedBf16Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(2, 5, 64)
    packed = PackedBf16Linear(linear)
    out = packed(x)
    expected = torch.nn.functional.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16())
    assert out.dtype == torch.float32 and out.shape == (2, 5, 48)
    torch.testing.assert_close(out, expected.float(), rtol=1e-2, atol=1e-2)


@bf16_kernels
def test_the_bf16_inference_copy_keeps_the_adapters_answers_and_the_model_untouched(tiny_llama_dir):
    from tuneforge.models.inference import PackedBf16Linear, inference_copy

    model = lora_model(tiny_llama_dir)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    input_ids = torch.randint(0, 1000, (2, 13))
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
        copy = inference_copy(model, pack_bf16=True)
        logits = copy(input_ids=input_ids).logits
    assert not any(type(module) is torch.nn.Linear for module in copy.modules())
    assert any(isinstance(module, PackedBf16Linear) for module in copy.modules())
    assert logits.dtype == torch.float32
    assert (logits - expected).norm() / expected.norm() < 0.02  # bf16 rounding, not a different model
    assert (logits.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


def test_bf16_packing_is_chosen_only_for_fp32_models_on_cpus_with_native_bf16(tiny_llama_dir, monkeypatch):
    from tuneforge import hardware
    from tuneforge.models import inference

    model = lora_model(tiny_llama_dir)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert not inference.bf16_packing_pays(model)
    assert not any(isinstance(m, inference.PackedBf16Linear) for m in inference.inference_copy(model).modules())
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert not inference.bf16_packing_pays(model.to(torch.bfloat16))


def test_a_command_refuses_a_checkpoint_without_the_capability_it_needs(tmp_path):
    from tuneforge.errors import TuneforgeError
    from tuneforge.generate import Generator
    from tuneforge.predict_tokens import Tagger
    from tuneforge.rundir import CheckpointMeta

    CheckpointMeta(task="classification", model_id="minilm-l6", labels=["a", "b"]).write(tmp_path)
    with pytest.raises(TuneforgeError, match=r"this is a classification run; the command needs a run that generates "
                                             r"text"):
        Generator.from_path(tmp_path)  # refused from tuneforge.json, before any weights load
    with pytest.raises(TuneforgeError, match="needs a token classification run"):
        Tagger.from_path(tmp_path)
