from __future__ import annotations

import pytest
import torch

from tuneforge.data.collate import IGNORE_INDEX
from tuneforge.models import (
    ModelError,
    ensure_distinct_pad,
    load_model_config,
    load_tokenizer,
    match_vocab,
    resolve_model,
)
from tuneforge.models.objectives import CausalLMObjective


def test_fast_target_only_loss_equals_the_models_own_loss(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    input_ids = torch.randint(5, 1000, (3, 12))
    attention = torch.ones_like(input_ids)
    attention[2, 8:] = 0
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[attention == 0] = IGNORE_INDEX
    objective = CausalLMObjective(model)
    assert objective.plain_head
    adapters = {name: p for name, p in model.named_parameters() if "lora_" in name}
    reference = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    reference.backward()
    expected = {name: p.grad.clone() for name, p in adapters.items()}
    model.zero_grad(set_to_none=True)
    # Target positions only, no padding mask (right padding), the fused frozen-head loss: same loss, same gradients.
    loss_sum, count = objective(input_ids, attention, labels)
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert float(loss_sum / count) == pytest.approx(float(reference), rel=1e-5)
    (loss_sum / count).backward()
    assert all(p.grad.abs().sum() > 0 for p in adapters.values())
    for name, p in adapters.items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_tokenizer_without_a_spare_token_gets_a_new_pad_and_zeroed_embedding_row(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.unk_token = None
    vocab = tokenizer.get_vocab()
    # Pretend the spare tokens do not exist by putting them in the template.
    tokenizer.chat_template = (tokenizer.chat_template or "") + "{# <|endoftext|> <unk> #}"
    assert "<|endoftext|>" in vocab
    added = ensure_distinct_pad(tokenizer)
    assert added and tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    rows = model.get_input_embeddings().weight.shape[0]
    match_vocab(model, tokenizer)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) > rows
    assert torch.count_nonzero(weight[rows:]) == 0


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unreachable_hub_id_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        load_model_config(resolve_model("someone/not-a-real-model"), "someone/not-a-real-model", False)
    message = str(error.value)
    assert "someone/not-a-real-model" in message and "bundled alias" in message and "\n" not in message


def test_bundled_alias_is_a_cached_safetensors_directory(smol_dir):
    assert (smol_dir / "model.safetensors").is_file()
    assert not list(smol_dir.glob("*.bin"))
    config = load_model_config(str(smol_dir), "smollm2-135m-instruct", False)
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None


def test_training_model_does_not_freeze_the_eos_embedding_row(tiny_llama_dir, smol_tokenizer):
    """The tiny model's config (like SmolLM2's) says pad = EOS, so its embedding is built with padding_idx = EOS,
    whose gradient PyTorch zeroes. Full fine-tuning must still be able to update the EOS row."""
    from tuneforge.config import TrainConfig
    from tuneforge.models import load_model_for_training

    config = TrainConfig(model_id=str(tiny_llama_dir), train_path="x.jsonl", precision="fp32")
    model = load_model_for_training(config, str(tiny_llama_dir), smol_tokenizer, labels=[], device=torch.device("cpu"),
                                    precision="fp32")
    eos = smol_tokenizer.eos_token_id
    assert model.get_input_embeddings().padding_idx == smol_tokenizer.pad_token_id != eos
    ids = torch.tensor([[5, 6, eos]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.get_input_embeddings().weight.grad[eos].abs().sum() > 0


@pytest.mark.slow  # ~70 s of compiling on 2 cores; torch_compile is opt-in
def test_compiled_blocks_train_like_eager_ones(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models import compile_layers

    def loss_and_grads(compiled: bool) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                               LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        if compiled:
            assert compile_layers(model) == 2
        objective = CausalLMObjective(model)
        total = 0.0
        for width in (12, 17):  # two lengths: one dynamic-shape graph serves both
            input_ids = torch.randint(5, 1000, (2, width))
            loss_sum, count = objective(input_ids, torch.ones_like(input_ids), input_ids.clone())
            (loss_sum / count).backward()
            total += float(loss_sum / count)
        return total, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    eager_loss, eager_grads = loss_and_grads(False)
    compiled_loss, compiled_grads = loss_and_grads(True)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert eager_grads.keys() == compiled_grads.keys() and eager_grads
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
