"""Shared fixtures: the bundled SmolLM2 (converted once into the repo's cache), tiny models built from its real
tokenizer, one Ray instance for the whole session, and helpers to write data and configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TUNEFORGE_HOME", str(REPO / ".cache" / "tuneforge"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from tuneforge.models import resolve_model

    return Path(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from tuneforge.models import ensure_distinct_pad, load_tokenizer

    tokenizer = load_tokenizer(str(smol_dir))
    ensure_distinct_pad(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_dir) -> Path:
    """A 2-layer Llama with SmolLM2's real tokenizer and chat template: trains in milliseconds per step. Embeddings
    are initialised wide (std 0.2) so that LoRA alone, with the tied output layer frozen, can make logits peaky."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(smol_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, initializer_range=0.2, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(config)
    # Like SmolLM2, the config says pad = EOS, so the EOS embedding row was initialised to zeros; a real checkpoint
    # has a trained row there.
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=config.initializer_range)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ray_session():
    from tuneforge.cluster import ensure_ray

    info = ensure_ray(dashboard=True)  # the dashboard serves the State API Ray Train needs to clean up
    yield info
    import ray

    ray.shutdown()
