"""What an exported model is checked against: the run's validation prompts, and the torch model's own greedy
answers to them. Comparisons are teacher-forced on [prompt + reference answer], so one early disagreement does not
cascade into a meaningless string diff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tuneforge.config import load_config
from tuneforge.data.records import read_records
from tuneforge.errors import TuneforgeError
from tuneforge.export.parity import Probe


def validation_prompts(run_dir: Path, limit: int) -> list[Any]:
    """Up to `limit` prompts from the run's validation data (valid_path, or the same seeded split training used)."""
    from tuneforge.data.prepare import split_records
    from tuneforge.generate import read_prompt_rows

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise TuneforgeError(f"{run_dir}: no config.yaml, so no validation prompts to check the export against")
    config = load_config(saved)
    path = Path(config.valid_path or config.train_path)
    pairs = read_prompt_rows(path)
    if not config.valid_path:
        records = read_records(path)
        _, held_out = split_records(records, config.valid_split or 0.1, config.seed, path)
        lines = {record.line for record in held_out}
        pairs = [pair for pair, record in zip(pairs, records, strict=True) if record.line in lines] or pairs
    return [prompt for prompt, _ in pairs[:limit]]


def make_probes(generator: Any, prompts: list[Any], max_new_tokens: int) -> list[Probe]:
    from tuneforge.generate import GenerationSettings

    probes = []
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=1)
    for prompt in prompts:
        text = generator.render(prompt)
        prompt_ids = generator.encode([text])["input_ids"][0].tolist()
        with torch.no_grad():
            output = generator.model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                              **generator.generate_kwargs(settings))
        probes.append(Probe(prompt_ids, output[0, len(prompt_ids):].tolist(), text))
    return probes


@torch.no_grad()
def answer_logits(model: Any, probe: Probe) -> torch.Tensor:
    """Logits that predict each answer token (teacher-forced), fp32."""
    ids = torch.tensor([probe.ids])
    logits = model(input_ids=ids).logits[0].float()
    start = len(probe.prompt_ids) - 1
    return logits[start : start + len(probe.answer_ids)]


def compare_models(reference: Any, candidate: Any, probes: list[Probe]) -> dict[str, Any]:
    """max |Δlogit| and greedy-token agreement of `candidate` against `reference` on the answer positions."""
    max_delta, agree, total = 0.0, 0, 0
    for probe in probes:
        if not probe.answer_ids:
            continue
        ref, cand = answer_logits(reference, probe), answer_logits(candidate, probe)
        max_delta = max(max_delta, float((ref - cand).abs().max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += len(probe.answer_ids)
    return {"prompts": len(probes), "positions": total, "max_abs_logit_diff": max_delta,
            "greedy_token_agreement": agree / total if total else None}
