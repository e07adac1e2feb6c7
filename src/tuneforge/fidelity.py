"""What an exported model is checked against: the validation rows the run kept, and the trained model's outputs on
them. Causal models are compared teacher-forced on [prompt + the trained model's greedy answer], so one early
disagreement does not cascade into a meaningless string diff; classifiers on their logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.probes import Probe

Outputs = Callable[[Any], list[torch.Tensor]]  # model -> the logits to compare, one tensor per validation row


@dataclass
class FidelityCheck:
    """How an exported copy is compared with the trained model: `outputs(model)` gives the logits to compare;
    `rows` and `agreement` name the report's keys; `probes` are the generated answers (causal models)."""

    outputs: Outputs
    rows: str
    agreement: str
    probes: list[Probe] = field(default_factory=list)

    def compare(self, reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> dict[str, Any]:
        return compare(reference, candidate, rows=self.rows, agreement=self.agreement)


def generation_check(generator: Any, samples: list[dict[str, Any]], prompts: int, max_new_tokens: int) -> FidelityCheck:
    """Teacher-forced logits on the trained model's own greedy answers to the first validation prompts."""
    from tuneforge.generate import prompt_of

    chosen = [prompt_of(row, f"validation sample {number}")[0] for number, row in enumerate(samples[:prompts], start=1)]
    probes = make_probes(generator, chosen, max_new_tokens)
    return FidelityCheck(answer_outputs(probes), "prompts", "greedy_token_agreement", probes)


def classifier_check(predictor: Any, samples: list[dict[str, Any]], limit: int = 32) -> FidelityCheck:
    """Logits of the first validation texts."""
    from tuneforge.data.classification import row_text

    texts = [row_text(row, predictor.text_fields) for row in samples[:limit]]
    return FidelityCheck(classifier_outputs(predictor.tokenizer, texts), "texts", "label_agreement")


def tagger_check(tagger: Any, samples: list[dict[str, Any]], limit: int = 32) -> FidelityCheck:
    """Per-token logits of the first validation sentences (their words, as training tokenized them)."""
    sentences = [row["tokens"] for row in samples[:limit] if row.get("tokens")]
    batch = tagger.tokenizer(sentences, is_split_into_words=True, padding=True, truncation=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(-1).tolist()

    @torch.no_grad()
    def outputs(model: Any) -> list[torch.Tensor]:
        logits = model(**batch).logits.float()
        return [row[:length] for row, length in zip(logits, lengths, strict=True)]  # real tokens only

    return FidelityCheck(outputs, "sentences", "tag_agreement")


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


def answer_outputs(probes: list[Probe]) -> Outputs:
    answered = [probe for probe in probes if probe.answer_ids]
    return lambda model: [answer_logits(model, probe) for probe in answered]


def classifier_outputs(tokenizer: Any, texts: list[str]) -> Outputs:
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")

    @torch.no_grad()
    def outputs(model: Any) -> list[torch.Tensor]:
        return list(model(**batch).logits.float())

    return outputs


def compare(reference: list[torch.Tensor], candidate: list[torch.Tensor], *, rows: str,
            agreement: str) -> dict[str, Any]:
    """max |Δlogit| and how often the top choice agrees, over every compared position; `rows` and `agreement` name
    the report's keys (prompts / greedy_token_agreement for generation, texts / label_agreement for classifiers)."""
    max_delta, agree, total = 0.0, 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        max_delta = max(max_delta, float((ref - cand).abs().max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += int(ref.argmax(-1).numel())
    return {rows: len(reference), "positions": total, "max_abs_logit_diff": max_delta,
            agreement: agree / total if total else None}
