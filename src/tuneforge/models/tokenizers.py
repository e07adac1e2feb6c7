"""Tokenizers with a pad token that is not the EOS, and models that agree with them."""

from __future__ import annotations

from typing import Any

from tuneforge.models.sources import ModelError

# Tokens that are safe to pad with when they are not the EOS and the chat template never emits them.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|pad|>", "<|endoftext|>", "<unk>")


NEW_PAD_TOKEN = "<|pad|>"


def load_tokenizer(source: str, *, trust_remote_code: bool = False, padding_side: str = "right") -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from '{source}': {str(exc).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"'{source}' has only a slow tokenizer; tuneforge needs a fast one (tokenizer.json) for offsets")
    tokenizer.padding_side = padding_side
    return tokenizer


def ensure_distinct_pad(tokenizer: Any) -> bool:
    """Give the tokenizer a pad token that is not its EOS. Returns True when a new token was added (the model's
    embeddings must then grow by one row)."""
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return False
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    for token in (*PAD_CANDIDATES, tokenizer.unk_token):
        if token and token in vocab and token not in (eos, tokenizer.bos_token) and token not in template:
            tokenizer.pad_token = token
            return False
    tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
    return True


def use_pad_token(model: Any, tokenizer: Any) -> None:
    """Point the model at the tokenizer's (distinct) pad token. Models whose config says pad = EOS build their
    embedding with padding_idx = EOS, which silently freezes the EOS row in full fine-tuning: the model could
    never get better at stopping."""
    model.config.pad_token_id = tokenizer.pad_token_id
    embedding = model.get_input_embeddings()
    if getattr(embedding, "padding_idx", None) is not None:
        embedding.padding_idx = tokenizer.pad_token_id


def match_vocab(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings for tokens the tokenizer added (the pad token). Pad rows are masked out everywhere,
    so they are zero-filled rather than randomly initialised: reloading a checkpoint gives identical weights."""
    import torch

    current = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= current:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[current:].zero_()
        output = model.get_output_embeddings()
        if output is not None and output.weight.shape[0] > current:
            output.weight[current:].zero_()
