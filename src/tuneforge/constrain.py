"""Constrained decoding: answers that are one JSON value, or that conform to a JSON Schema.

Torch generation masks each step's logits with llguidance (a grammar engine in Rust, also used by llama.cpp):
one matcher per batch row follows the tokens generated so far and allows only tokens that keep the answer inside
the grammar; once the JSON value is complete, only the run's stop tokens are allowed, so a constrained answer
never runs on. Chosen over xgrammar, outlines and lm-format-enforcer by bench/constrained_libs.py (per-token cost
on CPU, correctness on the demo, dependency weight). GGUF generation uses llama.cpp's own grammar support with the
same schema (`gguf_grammar`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, TuneforgeError

ANY_JSON: dict[str, Any] = {}  # the empty schema: any JSON value
# At most one space between JSON tokens: json.dumps' ", " / ": " and compact JSON both fit, but a model cannot
# pad its answer with whitespace until max_new_tokens (what a barely trained model does under llguidance's default).
JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": "[ ]?"}


def read_schema(path: str | Path) -> dict[str, Any]:
    """A JSON Schema file, checked to be one."""
    path = Path(path)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: JSON Schema file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a JSON Schema file is one JSON object") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: a JSON Schema is a JSON object, got {type(schema).__name__}")
    check_schema(schema, str(path))
    return schema


def check_schema(schema: dict[str, Any], where: str) -> None:
    """ConfigError naming `where` when `schema` is not a valid JSON Schema."""
    try:
        from jsonschema.validators import validator_for

        validator_for(schema).check_schema(schema)
    except ImportError:  # jsonschema is optional: llguidance still reports schemas it cannot compile
        pass
    except Exception as exc:  # noqa: BLE001 - jsonschema's SchemaError
        raise ConfigError(f"{where}: not a valid JSON Schema: {getattr(exc, 'message', exc)}") from None


class JsonConstraint:
    """Answers restricted to `schema` (ANY_JSON: any JSON value). The schema is compiled when the constraint is
    made, so a schema llguidance cannot use is refused before any model loads."""

    def __init__(self, schema: dict[str, Any], description: str):
        self.schema, self.description = schema, description
        self.grammar = compile_grammar(schema, description)
        self.ll_tokenizers: dict[tuple[int, tuple[int, ...]], Any] = {}

    def ll_tokenizer(self, tokenizer: Any, stop_ids: list[int]) -> Any:
        """llguidance's view of the tokenizer, with the run's stop tokens as end of answer (built once, ~1 s)."""
        import llguidance.hf

        key = (id(tokenizer), tuple(stop_ids))
        if key not in self.ll_tokenizers:
            self.ll_tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(stop_ids))
        return self.ll_tokenizers[key]

    def processor(self, tokenizer: Any, rows: int, stop_ids: list[int]) -> Any:
        """A logits processor for one generate() call over `rows` rows."""
        forbidden = sorted(set(tokenizer.all_special_ids) - set(stop_ids))
        return GrammarLogitsProcessor(self.ll_tokenizer(tokenizer, stop_ids), self.grammar, rows, forbidden)


def compile_grammar(schema: dict[str, Any], description: str) -> str:
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise ConfigError(f"{description}: cannot constrain answers to this schema: {exc}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)  # '' when the grammar is usable
    if error:
        raise ConfigError(f"{description}: cannot constrain answers to this schema: {error}")
    return grammar


class GrammarLogitsProcessor:
    """Masks the logits of every row to the tokens its matcher allows. The first call sees the prompts only; each
    later call first feeds every row's newest token to its matcher. Special tokens other than the stop tokens are
    never allowed (llguidance also offers the tokenizer's <|endoftext|>-style ids at the end, which would then put
    the matcher in an error state without ending the answer)."""

    def __init__(self, ll_tokenizer: Any, grammar: str, rows: int, forbidden: list[int]):
        import llguidance
        import llguidance.torch

        self.matchers = [llguidance.LLMatcher(ll_tokenizer, grammar) for _ in range(rows)]
        self.bitmask = llguidance.torch.allocate_token_bitmask(rows, ll_tokenizer.vocab_size)
        self.forbidden = forbidden
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import llguidance.torch

        if self.started:
            for row, matcher in enumerate(self.matchers):
                if not (matcher.is_stopped() or matcher.is_error()):  # a finished row is only padded from here on
                    matcher.consume_token(int(input_ids[row, -1]))
        self.started = True
        for row, matcher in enumerate(self.matchers):
            if matcher.is_error():  # cannot happen with masked logits; such a row goes on unconstrained, never crashes
                self.bitmask[row] = -1
            else:
                llguidance.torch.fill_next_token_bitmask(matcher, self.bitmask, row)
        return apply_bitmask(scores, self.bitmask, self.forbidden)


def apply_bitmask(scores: Any, bitmask: Any, forbidden: list[int]) -> Any:
    """-inf for every token whose bit is clear (bit j of word w is token 32w + j) and for `forbidden`. Plain torch:
    llguidance's own kernel is torch.compile'd, which needs a C compiler at run time and recompiles per batch size."""
    import torch

    rows, vocab = scores.shape
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:rows, :, None] >> shifts) & 1).bool().reshape(rows, -1)[:, :vocab]
    if allowed.shape[1] < vocab:  # logits wider than the tokenizer (padded embeddings): the extra ids are not text
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    allowed[:, forbidden] = False
    return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


def constraint_for(*, any_json: bool = False, schema_path: str | Path | None = None, run_schema: bool = False,
                   answer_schema: dict[str, Any] | None = None, source: str = "this run") -> JsonConstraint | None:
    """The constraint `--json`, `--json-schema FILE` or `--constrain schema` (eval_generate's any_json, json_schema,
    constrain) ask for. `run_schema` uses `answer_schema`, the one inferred from `source`'s training targets."""
    asked = [name for name, on in (("--json", any_json), ("--json-schema", schema_path), ("--constrain schema", run_schema))
             if on]
    if len(asked) > 1:
        raise TuneforgeError(f"give one of --json (any JSON value), --json-schema FILE or --constrain schema (the "
                             f"run's answer schema), not both {' and '.join(asked)}")
    if run_schema:
        if not answer_schema:
            raise TuneforgeError(f"{source} has no answer schema: one is inferred only when every training target is "
                                 "a JSON object; use --json (any JSON value) or --json-schema FILE")
        return JsonConstraint(answer_schema, "the run's answer schema (inferred from its training targets)")
    if schema_path:
        return JsonConstraint(read_schema(schema_path), f"JSON Schema {schema_path}")
    if any_json:
        return JsonConstraint(ANY_JSON, "any JSON value")
    return None


def gguf_grammar(*, any_json: bool = False, schema_path: str | Path | None = None) -> str | None:
    """The JSON Schema text for llama.cpp's grammar (built in the llama.cpp child process), or None."""
    constraint = constraint_for(any_json=any_json, schema_path=schema_path)
    return json.dumps(constraint.schema) if constraint else None
