"""A probe: one validation prompt and the trained model's greedy answer to it, as token ids. Export compares a
converted model with the trained one on probes (tuneforge.fidelity builds them in torch; export.parity replays them
in llama.cpp, in a child process that imports no torch), so this leaf imports nothing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Probe:
    """One validation prompt and the reference model's greedy continuation of it."""

    prompt_ids: list[int]
    answer_ids: list[int]
    text: str  # the prompt as rendered for the model

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.answer_ids
