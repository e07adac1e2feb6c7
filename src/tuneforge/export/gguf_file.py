"""Writing GGUF files with the `gguf` package's writer: a whole model (f16, q8_0, q4_0; q4_k_m through
llama.cpp's quantizer) or a LoRA adapter that llama.cpp applies on top of an unchanged base GGUF.

Supported: llama-architecture models (Llama, SmolLM, Mistral) and Qwen2, with byte-level BPE tokenizers; for
Llama, plain, linear and Llama-3.1-style ("llama3") rotary scaling. llama.cpp stores Llama's Q/K projection rows in
the interleaved rotary layout, so those rows (and a LoRA's B rows for them) are permuted; Qwen2 uses the NeoX layout
and is written as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import ExportError

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
QUANT_TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


@dataclass(frozen=True)
class ModelShape:
    arch: str
    heads: int
    kv_heads: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        arch_name = (getattr(config, "architectures", None) or ["?"])[0]
        arch = ARCHITECTURES.get(arch_name)
        if arch is None:
            raise ExportError(f"GGUF export does not support {arch_name}; supported: {', '.join(sorted(ARCHITECTURES))}")
        kind = rope_type(config)
        allowed = ("default", *SCALED_ROPE_TYPES) if arch == "llama" else ("default",)
        if kind not in allowed:
            raise ExportError(f"GGUF export of {arch_name} does not support rope scaling '{kind}'; "
                              f"supported: {', '.join(allowed)}")
        heads = config.num_attention_heads
        return cls(arch, heads, getattr(config, "num_key_value_heads", None) or heads)

    def needs_rotary_permute(self, gguf_name: str) -> int | None:
        """Head count to permute rows by, for tensors llama.cpp keeps in the interleaved rotary layout."""
        if self.arch != "llama":
            return None
        if ".attn_q." in gguf_name:
            return self.heads
        if ".attn_k." in gguf_name:
            return self.kv_heads
        return None


SCALED_ROPE_TYPES = ("linear", "llama3")  # both are per-dimension frequency divisors: llama.cpp's rope_freqs tensor


def rope_type(config: Any) -> str:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope.get("rope_type") or rope.get("type") or "default"


def rope_frequency_factors(config: Any) -> np.ndarray | None:
    """For scaled rotary embeddings, what llama.cpp divides each dimension's base frequency by: the plain
    frequencies over the scaled ones that transformers itself computes for this config."""
    kind = rope_type(config)
    if kind == "default":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, attention_factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    if attention_factor != 1.0:
        raise ExportError(f"GGUF export does not support rope scaling '{kind}' with an attention factor")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    plain = 1.0 / rope_theta(config) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return (plain / scaled.double().numpy()).astype(np.float32)


def rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def rotary_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """HF keeps each head's rotary halves as [x0..x(d/2-1), y0..]; llama.cpp wants pairs (x0, y0, x1, y1, ...)."""
    head_dim = rows.shape[0] // heads
    grouped = rows.reshape(heads, 2, head_dim // 2, *rows.shape[1:])
    return grouped.swapaxes(1, 2).reshape(rows.shape)


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Write to a temporary name beside `path`, rename on success; on any failure (a full disk included) the
    partial file is removed and a one-line error names the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial")
    try:
        yield staged
        os.replace(staged, path)
    except OSError as exc:
        raise ExportError(f"writing {path} failed ({exc.strerror or exc}); the partial file was removed") from None
    finally:
        staged.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------------------------------------


def write_model_gguf(model_dir: Path, path: Path, quant: str, *, name: str, tokenizer_pre: str | None) -> dict[str, Any]:
    """An HF safetensors directory (merged or fully fine-tuned model, with its tokenizer) as a GGUF file."""
    if quant not in QUANT_TYPES:
        raise ExportError(f"unknown quant type '{quant}'; choose one of {', '.join(QUANT_TYPES)}")
    if quant == "q4_k_m":
        return quantize_with_llama_cpp(model_dir, path, name=name, tokenizer_pre=tokenizer_pre)
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    shape = ModelShape.of(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with staged_file(path) as staged:
        writer = gguf.GGUFWriter(str(staged), shape.arch)
        add_model_metadata(writer, config, name, quant)
        pre = add_tokenizer(writer, model_dir, tokenizer, config, tokenizer_pre)
        counts = add_model_tensors(writer, model_dir, config, shape, quant)
        finish(writer)
    return {"path": str(path), "quant": quant, "bytes": path.stat().st_size, "tokenizer_pre": pre, "tensor_types": counts}


def add_model_metadata(writer: Any, config: Any, name: str, quant: str) -> None:
    import gguf

    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_types[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer(writer: Any, model_dir: Path, tokenizer: Any, config: Any, tokenizer_pre: str | None) -> str:
    """Byte-level BPE vocabulary, token types, merges, special tokens and chat template."""
    import gguf

    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE" or (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        kind = model.get("type") or "unknown"
        raise ExportError(f"GGUF export supports byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM); this model's is "
                          f"{kind}{' without byte-level decoding (SentencePiece style: Llama 2, Mistral 7B, TinyLlama)' if kind == 'BPE' else ''}")
    vocab = tokenizer.get_vocab()
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]  # ids the tokenizer never produces (embedding rows beyond it)
    types = [TOKEN_USER_DEFINED] * size
    for text, index in vocab.items():
        tokens[index], types[index] = text, TOKEN_NORMAL
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = TOKEN_CONTROL if added.special else TOKEN_USER_DEFINED
    pre = tokenizer_pre or guess_pre_tokenizer(config)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size)
    special.add_to_gguf(writer)
    if tokenizer.chat_template and not special.chat_template:  # transformers 5 keeps it in chat_template.jinja
        writer.add_chat_template(tokenizer.chat_template)
    return pre


def guess_pre_tokenizer(config: Any) -> str:
    """llama.cpp picks its pre-tokenizer (how text is split before BPE) by name; HF files do not say it."""
    if config.model_type == "qwen2":
        return "qwen2"
    if config.model_type == "llama" and config.vocab_size >= 128000:
        return "llama-bpe"
    return "default"


def add_model_tensors(writer: Any, model_dir: Path, config: Any, shape: ModelShape, quant: str) -> dict[str, int]:
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if shape.arch == "qwen2" else gguf.MODEL_ARCH.LLAMA,
                                     config.num_hidden_layers)
    counts: dict[str, int] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for hf_name in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ExportError(f"no GGUF name for tensor '{hf_name}' of {model_dir}")
                data = handle.get_tensor(hf_name).float().numpy()
                heads = shape.needs_rotary_permute(gguf_name)
                if heads:
                    data = rotary_permute(data, heads)
                stored, qtype = encode_tensor(gguf_name, data, quant)
                writer.add_tensor(gguf_name, stored, raw_dtype=qtype)
                counts[qtype.name] = counts.get(qtype.name, 0) + 1
    factors = rope_frequency_factors(config)
    if factors is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors,
                          raw_dtype=gguf.GGMLQuantizationType.F32)
        counts["F32"] = counts.get("F32", 0) + 1
    return counts


def encode_tensor(gguf_name: str, data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """Vectors stay f32; matrices get the requested type where their rows split into whole blocks (else f16).
    With q4_0 the token embedding (also the tied output layer) keeps q8_0, as llama.cpp's own quantizer does for
    the output layer."""
    import gguf

    if data.ndim < 2:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    wanted = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
              "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    if quant == "q4_0" and gguf_name.startswith(("token_embd", "output.")):
        wanted = gguf.GGMLQuantizationType.Q8_0
    if wanted == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), wanted
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, wanted), wanted


def finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_with_llama_cpp(model_dir: Path, path: Path, *, name: str, tokenizer_pre: str | None) -> dict[str, Any]:
    """K-quants need llama.cpp's quantizer (importance-aware block scales): write f16, then quantize in a child
    process, where a crash of llama.cpp cannot take tuneforge down."""
    from tuneforge.export.parity import quantize_file, require_llama_cpp
    from tuneforge.native import run_isolated

    require_llama_cpp(load=False)
    f16 = path.with_name(f".{path.stem}-f16.gguf")
    try:
        info = write_model_gguf(model_dir, f16, "f16", name=name, tokenizer_pre=tokenizer_pre)
        with staged_file(path) as staged:
            run_isolated("q4_k_m quantization", quantize_file, f16, staged, "LLAMA_FTYPE_MOSTLY_Q4_K_M")
    finally:
        f16.unlink(missing_ok=True)
    return {**info, "path": str(path), "quant": "q4_k_m", "bytes": path.stat().st_size, "tensor_types": "llama.cpp"}


# ----------------------------------------------------------------------------------------------------------------
# LoRA adapters
# ----------------------------------------------------------------------------------------------------------------


def write_lora_gguf(checkpoint: Path, base_config: Any, path: Path, *, dtype: str = "f16") -> dict[str, Any]:
    """A PEFT LoRA adapter as a llama.cpp LoRA GGUF: `<base tensor>.lora_a` ([r, in]) and `.lora_b` ([out, r])
    per adapted matrix, with adapter.lora.alpha set so that llama.cpp's alpha/r scale equals PEFT's scale."""
    import gguf
    from safetensors.torch import load_file

    settings = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
    refuse_unsupported_adapter(settings)
    shape = ModelShape.of(base_config)
    rank = int(settings["r"])
    scale = settings["lora_alpha"] / (rank ** 0.5 if settings.get("use_rslora") else rank)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if shape.arch == "qwen2" else gguf.MODEL_ARCH.LLAMA,
                                     base_config.num_hidden_layers)
    pairs = lora_pairs(load_file(str(checkpoint / "adapter_model.safetensors")))
    kind = gguf.GGMLQuantizationType.F16 if dtype == "f16" else gguf.GGMLQuantizationType.F32
    with staged_file(path) as staged:
        writer = gguf.GGUFWriter(str(staged), shape.arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(scale * rank))
        for hf_name, (lora_a, lora_b) in sorted(pairs.items()):
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
            if gguf_name is None:
                raise ExportError(f"LoRA on '{hf_name}' has no llama.cpp counterpart; drop it from target_modules")
            heads = shape.needs_rotary_permute(gguf_name)
            lora_b = rotary_permute(lora_b, heads) if heads else lora_b
            numpy_type = np.float16 if dtype == "f16" else np.float32
            writer.add_tensor(f"{gguf_name}.lora_a", lora_a.astype(numpy_type), raw_dtype=kind)
            writer.add_tensor(f"{gguf_name}.lora_b", lora_b.astype(numpy_type), raw_dtype=kind)
        finish(writer)
    return {"path": str(path), "bytes": path.stat().st_size, "rank": rank, "alpha": scale * rank,
            "matrices": len(pairs), "dtype": dtype}


def refuse_unsupported_adapter(settings: dict[str, Any]) -> None:
    problems = []
    if settings.get("use_dora"):
        problems.append("DoRA (use_dora)")
    if settings.get("bias", "none") != "none":
        problems.append(f"trained biases (bias: {settings['bias']})")
    if settings.get("alpha_pattern") or settings.get("rank_pattern"):
        problems.append("per-module alpha/rank patterns")
    if settings.get("modules_to_save"):
        problems.append(f"fully trained modules ({', '.join(settings['modules_to_save'])})")
    if problems:
        raise ExportError(f"llama.cpp LoRA adapters cannot hold {' or '.join(problems)}; export --format merged "
                          "or gguf instead")


def lora_pairs(state: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'model.layers.0.self_attn.q_proj.weight': (A, B)} from a PEFT adapter state dict."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in state.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                base = key.removeprefix("base_model.model.").removesuffix(marker) + ".weight"
                found.setdefault(base, {})[part] = tensor.float().numpy()
                break
        else:
            raise ExportError(f"adapter tensor '{key}' is not a LoRA A/B matrix; llama.cpp cannot apply it")
    return {name: (parts["lora_A"], parts["lora_B"]) for name, parts in found.items()}
