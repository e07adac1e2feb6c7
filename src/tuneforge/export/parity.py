"""Running a GGUF through llama.cpp (llama-cpp-python) and checking it against the torch model.

`llama_cpp_checks` and `quantize_file` are the entry points of the child process that runs llama.cpp (see
`tuneforge.native`), so this module imports no torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import ExportError
from tuneforge.probes import Probe


@dataclass
class BosToken:
    """What `without_added_bos` needs of the HF tokenizer, as plain data for the child process."""

    text: str | None
    id: int | None


def llama_cpp_checks(path: Path, lora: Path | None, probes: list[Probe], bos: BosToken,
                     max_new_tokens: int) -> dict[str, Any]:
    """Parity with the torch model's answers, then llama.cpp's greedy tokens/s (run in a child process)."""
    llm = open_gguf(path, lora, logits_all=True)
    parity = gguf_parity(llm, probes, bos)
    del llm
    fast = open_gguf(path, lora)
    speed = gguf_speed(fast, [probe.prompt_ids for probe in probes[:4]], max_new_tokens)
    return {"parity": parity, "llama_cpp_tokens_per_second": round(speed, 1)}


def quantize_file(source: Path, target: Path, ftype: str) -> None:
    """llama.cpp's quantizer, e.g. ftype "LLAMA_FTYPE_MOSTLY_Q4_K_M" (run in a child process)."""
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise ExportError(f"llama.cpp could not quantize {source} ({ftype})")


def open_gguf(path: Path, lora: Path | None = None, *, logits_all: bool = False, n_ctx: int = 2048,
              n_threads: int | None = None) -> Any:
    llama_cpp = require_llama_cpp()
    kwargs: dict[str, Any] = {"model_path": str(path), "n_ctx": n_ctx, "n_threads": n_threads or os.cpu_count() or 1,
                              "logits_all": logits_all, "verbose": False}
    if lora:
        kwargs["lora_path"] = str(lora)
    return llama_cpp.Llama(**kwargs)


def teacher_forced_argmax(llm: Any, probe: Probe) -> np.ndarray:
    """llama.cpp's greedy choice at every answer position, fed the reference tokens."""
    llm.reset()
    llm.eval(probe.ids)
    start = len(probe.prompt_ids) - 1
    scores = np.asarray(llm.scores[start : start + len(probe.answer_ids)])
    return scores.argmax(-1)


def gguf_parity(llm: Any, probes: list[Probe], bos: BosToken) -> dict[str, Any]:
    """Greedy-token agreement with the torch model's answers, and whether llama.cpp tokenizes the prompts alike."""
    agree = total = same_tokens = 0
    for probe in probes:
        if probe.answer_ids:
            choices = teacher_forced_argmax(llm, probe)
            agree += int((choices == np.asarray(probe.answer_ids)).sum())
            total += len(probe.answer_ids)
        native = list(llm.tokenize(probe.text.encode("utf-8"), add_bos=False, special=True))
        same_tokens += int(native == without_added_bos(probe, bos))
    return {"positions": total, "greedy_token_agreement": agree / total if total else None,
            "same_prompt_tokens": same_tokens / len(probes) if probes else None}


def without_added_bos(probe: Probe, bos: BosToken) -> list[int]:
    """The prompt ids minus a BOS the HF tokenizer added itself (not one written in the text)."""
    ids = probe.prompt_ids
    if ids and ids[0] == bos.id and not (bos.text and probe.text.startswith(bos.text)):
        return ids[1:]
    return ids


def gguf_speed(llm: Any, prompts: list[list[int]], max_new_tokens: int) -> float:
    """Greedy generation tokens/s of llama.cpp on the prompts (token ids)."""
    tokens, seconds = 0, 0.0
    for prompt_ids in prompts:
        llm.reset()
        started = time.perf_counter()
        generated = 0
        for _ in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
            generated += 1
            if generated >= max_new_tokens:
                break
        seconds += time.perf_counter() - started
        tokens += generated
    return tokens / seconds if seconds else 0.0


def torch_speed(model: Any, probes: list[Probe], max_new_tokens: int, pad_id: int) -> float:
    """Greedy generation tokens/s of the torch model (fp32, no early stop) on the same prompts."""
    import torch

    tokens, seconds = 0, 0.0
    for probe in probes:
        ids = torch.tensor([probe.prompt_ids])
        started = time.perf_counter()
        with torch.no_grad():
            output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        seconds += time.perf_counter() - started
        tokens += output.shape[1] - ids.shape[1]
    return tokens / seconds if seconds else 0.0


def require_llama_cpp(*, load: bool = True) -> Any:
    """llama.cpp's bindings; `load=False` only checks they are installed (the parent of a native child process
    never loads llama.cpp itself)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise ExportError("this needs llama.cpp's Python bindings: pip install 'tuneforge[gguf]' (make install-dev)")
    if not load:
        return None
    import llama_cpp

    return llama_cpp
