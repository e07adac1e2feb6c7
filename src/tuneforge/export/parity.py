"""Running a GGUF through llama.cpp (llama-cpp-python) and checking it against the torch model."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge.export.gguf_file import require_llama_cpp

if TYPE_CHECKING:  # torch stays out of processes that only run llama.cpp
    from tuneforge.export.fidelity import Probe


def open_gguf(path: Path, lora: Path | None = None, *, logits_all: bool = False, n_ctx: int = 2048) -> Any:
    llama_cpp = require_llama_cpp()
    kwargs: dict[str, Any] = {"model_path": str(path), "n_ctx": n_ctx, "n_threads": os.cpu_count() or 1,
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


def gguf_parity(llm: Any, probes: list[Probe], tokenizer: Any) -> dict[str, Any]:
    """Greedy-token agreement with the torch model's answers, and whether llama.cpp tokenizes the prompts alike."""
    agree = total = same_tokens = 0
    for probe in probes:
        if probe.answer_ids:
            choices = teacher_forced_argmax(llm, probe)
            agree += int((choices == np.asarray(probe.answer_ids)).sum())
            total += len(probe.answer_ids)
        native = list(llm.tokenize(probe.text.encode("utf-8"), add_bos=False, special=True))
        same_tokens += int(native == without_added_bos(probe, tokenizer))
    return {"positions": total, "greedy_token_agreement": agree / total if total else None,
            "same_prompt_tokens": same_tokens / len(probes) if probes else None}


def without_added_bos(probe: Probe, tokenizer: Any) -> list[int]:
    """The prompt ids minus a BOS the HF tokenizer added itself (not one written in the text)."""
    ids = probe.prompt_ids
    bos = tokenizer.bos_token
    if ids and ids[0] == tokenizer.bos_token_id and not (bos and probe.text.startswith(bos)):
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
