"""Padding-free batches (rows end to end) and shared LoRA dropout: what they promise, measured on a tiny Llama."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tuneforge.data.collate import IGNORE_INDEX, collate_causal, collate_causal_padding_free
from tuneforge.models.objectives import CausalLMObjective


def lora_model(tiny_llama_dir, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                          LoraConfig(r=4, target_modules="all-linear", lora_dropout=dropout, init_lora_weights=False))


class Row:
    def __init__(self, input_ids: np.ndarray, target_mask: np.ndarray):
        self.input_ids, self.target_mask = input_ids, target_mask

    def __len__(self) -> int:
        return len(self.input_ids)


def rows(lengths: list[int], seed: int = 0) -> list[Row]:
    """Chat-like rows: a prompt, then target tokens; every other row also marks its first token (as
    train_on_inputs does), which the padding-free collate must still never train the previous row to predict."""
    rng = np.random.default_rng(seed)
    made = []
    for index, length in enumerate(lengths):
        mask = np.zeros(length, dtype=bool)
        mask[length // 2:] = True
        mask[0] = index % 2 == 1
        made.append(Row(rng.integers(5, 1000, length), mask))
    return made


def loss_and_grads(model, batch) -> tuple[float, float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss_sum, count = CausalLMObjective(model)(**batch)
    (loss_sum / count).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(loss_sum.detach()), float(count), grads


@pytest.mark.parametrize(("lengths", "one_call"), [([9, 23, 5, 16], False), ([21, 23, 18, 22], True)],
                         ids=["row-by-row", "one-padded-call"])
def test_a_padding_free_batch_gives_the_padded_batchs_loss_and_gradients(tiny_llama_dir, lengths, one_call):
    from tuneforge.models.padding_free import padded_attention_pays

    assert padded_attention_pays(lengths) == one_call  # both ways rows attend are checked
    model = lora_model(tiny_llama_dir)
    examples = rows(lengths)
    padded = collate_causal(examples, 0, context_length=64)
    packed = collate_causal_padding_free(examples)
    assert packed["input_ids"].shape == (1, sum(lengths)) and padded["input_ids"].shape == (4, max(lengths))
    assert packed["position_ids"][0, :lengths[0] + 3].tolist() == list(range(lengths[0])) + [0, 1, 2]

    padded_loss, padded_count, padded_grads = loss_and_grads(model, padded)
    packed_loss, packed_count, packed_grads = loss_and_grads(model, packed)
    assert packed_count == padded_count
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert padded_grads.keys() == packed_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("lengths", [[7, 11, 4], [7, 8, 6]], ids=["row-by-row", "one-padded-call"])
def test_no_row_sees_another_in_a_padding_free_batch(tiny_llama_dir, lengths):
    """Changing one row's tokens changes no other row's loss (no attention across rows, no shared positions)."""
    from tuneforge.models.padding_free import padded_attention_pays, rows_attend_within_themselves

    assert padded_attention_pays(lengths) == (lengths[1] == 8)
    model = lora_model(tiny_llama_dir).eval()
    examples = rows(lengths)
    first, middle = lengths[0], lengths[0] + lengths[1]
    changed = [examples[0], Row(np.array(examples[1].input_ids[::-1]), examples[1].target_mask), examples[2]]

    def hidden(batch):
        with torch.no_grad(), rows_attend_within_themselves(model.config):
            return model.base_model.model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                                row_lengths=batch["row_lengths"].tolist())[0][0]

    before, after = hidden(collate_causal_padding_free(examples)), hidden(collate_causal_padding_free(changed))
    torch.testing.assert_close(after[:first], before[:first])
    torch.testing.assert_close(after[middle:], before[middle:])
    assert not torch.allclose(after[first:middle], before[first:middle])
    assert model.config._attn_implementation != "tuneforge_rows"  # switched back after the block


def test_padding_free_is_on_by_default_for_llama_and_off_where_padded_shapes_are_asked(tiny_llama_dir, tmp_path):
    from tuneforge.config import TrainConfig
    from tuneforge.errors import ConfigError
    from tuneforge.train import prepare_run

    data = tmp_path / "train.jsonl"
    data.write_text("".join('{"messages": [{"role": "user", "content": "hi %d"}, {"role": "assistant", '
                            '"content": "hello %d"}]}\n' % (i, i) for i in range(12)), encoding="utf-8")
    base = {"model_id": str(tiny_llama_dir), "train_path": str(data), "output_dir": str(tmp_path / "runs")}
    assert prepare_run(TrainConfig(**base)).config.padding_free is True
    assert prepare_run(TrainConfig(**base, pad_to_multiple_of=8)).config.padding_free is False
    assert prepare_run(TrainConfig(**base, padding_free=False)).config.padding_free is False
    with pytest.raises(ConfigError, match="padding_free: the config asks for padded batch shapes"):
        prepare_run(TrainConfig(**base, padding="max_length", padding_free=True))


def test_padding_free_refuses_a_sliding_window_shorter_than_the_context():
    from transformers import MistralConfig

    from tuneforge.models.padding_free import padding_free_blocker

    assert padding_free_blocker(MistralConfig(sliding_window=4096), 2048) is None
    assert "sliding window (128)" in padding_free_blocker(MistralConfig(sliding_window=128), 512)
    assert "not one tuneforge" in padding_free_blocker(SimpleNamespace(model_type="bert"), 512)


def test_lora_layers_reading_one_input_share_one_dropout_mask(tiny_llama_dir):
    from tuneforge.models.lora_dropout import SharedDropout, share_lora_dropout

    model = lora_model(tiny_llama_dir, dropout=0.5)
    assert share_lora_dropout(model) == 2 * 7
    attention = model.base_model.model.model.layers[0].self_attn
    q, k, o = (getattr(attention, name).lora_dropout["default"] for name in ("q_proj", "k_proj", "o_proj"))
    assert isinstance(q, SharedDropout) and q._group is k._group is o._group
    model.train()
    x = torch.ones(4, 64, requires_grad=True)
    dropped_q, dropped_k = q(x), k(x)
    assert dropped_k is dropped_q  # the same input tensor: one mask
    assert not torch.equal(o(torch.ones(4, 64)), dropped_q)  # another tensor: its own mask
    kept = dropped_q != 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(dropped_q[kept], torch.full_like(dropped_q[kept], 2.0))
    dropped_q.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * 2.0)
    model.eval()
    assert q(x) is x


def test_fast_dropout_keeps_the_asked_rate_and_the_expectation():
    from tuneforge.models.lora_dropout import fast_dropout

    torch.manual_seed(0)
    x = torch.ones(2000, 500)
    dropped = fast_dropout(x, 0.05)
    assert float((dropped == 0).float().mean()) == pytest.approx(0.05, abs=0.002)
    assert float(dropped.mean()) == pytest.approx(1.0, abs=0.005)
    assert fast_dropout(x, 1e-7) is x  # below the 1/65536 resolution: nothing to drop


def test_shared_dropout_is_the_default_and_can_be_turned_off(tiny_llama_dir, tmp_path):
    from tuneforge.config import TrainConfig
    from tuneforge.models import load_model_for_training, load_tokenizer
    from tuneforge.models.lora_dropout import SharedDropout

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    lora = {"r": 4, "lora_dropout": 0.1}
    for shared in (True, False):
        config = TrainConfig(model_id=str(tiny_llama_dir), train_path="x.jsonl", lora_config=lora,
                             shared_lora_dropout=shared)
        model = load_model_for_training(config, str(tiny_llama_dir), tokenizer, labels=[],
                                        device=torch.device("cpu"), precision="fp32")
        kinds = {type(m.lora_dropout["default"]) for m in model.modules() if hasattr(m, "lora_dropout")}
        assert kinds == ({SharedDropout} if shared else {torch.nn.Dropout})


def test_packed_labels_never_target_a_rows_first_token():
    examples = rows([4, 5, 3])
    packed = collate_causal_padding_free(examples)
    labels = packed["labels"][0]
    assert labels[[0, 4, 9]].tolist() == [IGNORE_INDEX] * 3
    assert packed["row_lengths"].tolist() == [4, 5, 3]
