"""Behavioural tests of a classifier (CheckList-style), from a YAML spec:

    invariance:              # inputs that differ only in what should not matter get one label
      - name: dataset name does not matter
        inputs: ["Sentiment of tweets with BERT", "Sentiment of reviews with BERT"]
        expected: natural-language-processing   # optional
    directional:             # changing the words that matter moves the label where expected
      - input: "Image segmentation with U-Net"
        expected: computer-vision
    minimum_functionality:   # simple, unambiguous inputs get the obvious label
      - input: "Machine translation with transformers"
        expected: natural-language-processing
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tuneforge.config import describe_validation_error, entry_error, nearest_source, parse_yaml_with_lines
from tuneforge.errors import ConfigError


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    input: str | None = None
    inputs: list[str] | None = None
    expected: str | None = None

    @model_validator(mode="after")
    def _one_input_form(self) -> Case:
        if (self.input is None) == (self.inputs is None):
            raise ValueError("give either 'input' or 'inputs'")
        return self

    @property
    def texts(self) -> list[str]:
        return [self.input] if self.input is not None else list(self.inputs or [])


class CheckSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    invariance: list[Case] = Field(default_factory=list)
    directional: list[Case] = Field(default_factory=list)
    minimum_functionality: list[Case] = Field(default_factory=list)

    @field_validator("invariance")
    @classmethod
    def _two_inputs(cls, cases: list[Case]) -> list[Case]:
        for index, case in enumerate(cases):
            if len(case.texts) < 2:
                raise entry_error(index, f"invariance[{index}] needs at least two inputs")
        return cases

    @field_validator("directional", "minimum_functionality")
    @classmethod
    def _expected(cls, cases: list[Case], info: ValidationInfo) -> list[Case]:
        for index, case in enumerate(cases):
            if case.expected is None:
                raise entry_error(index, f"{info.field_name}[{index}] needs 'expected' (the label it should get)")
        return cases

    @model_validator(mode="after")
    def _has_tests(self) -> CheckSpec:
        if not (self.invariance or self.directional or self.minimum_functionality):
            raise ValueError("the spec has no tests; add invariance, directional or minimum_functionality cases")
        return self


@dataclass
class CheckResult:
    kind: str
    name: str
    passed: bool
    detail: str


def load_spec(path: str | Path, labels: list[str]) -> CheckSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"check spec not found: {path}")
    raw, lines = parse_yaml_with_lines(path.read_text(encoding="utf-8"), path)
    sources = {key: f"{path}:{line}" for key, line in lines.items()}
    try:
        spec = CheckSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, sources, str(path), CheckSpec)) from None
    for kind in ("invariance", "directional", "minimum_functionality"):
        for index, case in enumerate(getattr(spec, kind)):
            if case.expected is not None and case.expected not in labels:
                at = nearest_source((kind, str(index), "expected"), sources, str(path))
                raise ConfigError(f"{at}: {kind}[{index}] expects '{case.expected}', which is not a label of this "
                                  f"model ({', '.join(labels)})")
    return spec


def run_checks(predictor: Any, spec: CheckSpec) -> list[CheckResult]:
    results = []
    for kind in ("invariance", "directional", "minimum_functionality"):
        for index, case in enumerate(getattr(spec, kind)):
            predicted = [p.label for p in predictor.predict(case.texts)]
            name = case.name or case.texts[0]
            if kind == "invariance":
                same = len(set(predicted)) == 1
                passed = same and (case.expected is None or predicted[0] == case.expected)
                detail = " / ".join(predicted)
            else:
                passed = all(label == case.expected for label in predicted)
                detail = f"got {', '.join(predicted)}; expected {case.expected}"
            results.append(CheckResult(kind, name, passed, detail))
    return results
