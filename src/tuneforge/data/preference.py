"""Preference rows: validate, tokenize each answer exactly as SFT renders it, fit to the context, collate.

Three row formats, detected per row, one per file:
- pair: `{"prompt", "chosen", "rejected"}`, plain text, or chat: `prompt` a list of messages ending with a user turn,
  each answer a string, one assistant message or a list holding one;
- OpenAI preference: `{"input": {"messages": [...]}, "preferred_output": [assistant], "non_preferred_output": [...]}`;
- KTO (unpaired): `{"prompt", "completion", "label"}`, label true (desirable) or false.

Each answer becomes the `causal.Example` SFT would make of the prompt followed by that answer (through
`causal.tokenize_records`), so what preference tuning compares is exactly what SFT taught.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from tuneforge.data import causal, prepare
from tuneforge.data.collate import collate_causal, collate_causal_padding_free
from tuneforge.data.prepare import LengthStats, PreparedData
from tuneforge.data.records import Record, read_dataset
from tuneforge.data.schema import infer_answer_schema
from tuneforge.errors import DataError, where

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig

Prompt = str | list[dict[str, str]]  # plain text, or chat messages ending with a user turn
LABELS = {"true": True, "false": False, "1": True, "0": False}  # CSV cells are text


@dataclass
class PreferencePair:
    """A prompt with a chosen and a rejected answer, each tokenized as SFT renders prompt + answer."""

    SEQUENCES: ClassVar[dict[str, str]] = {"chosen": "its chosen answer", "rejected": "its rejected answer"}
    REFERENCES: ClassVar[dict[str, str]] = {"ref_chosen_logps": "ref_chosen", "ref_rejected_logps": "ref_rejected"}

    chosen: causal.Example
    rejected: causal.Example
    prompt_tokens: int  # tokens before the first answer token
    line: str  # file:line
    ref_chosen: float = math.nan  # filled by training (reference log-probs)
    ref_rejected: float = math.nan

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)  # tokens the pair costs in one forward

    def sequences(self) -> tuple[causal.Example, causal.Example]:
        return self.chosen, self.rejected

    def set_reference(self, chosen: float, rejected: float) -> None:
        self.ref_chosen, self.ref_rejected = chosen, rejected


@dataclass
class UnpairedExample:
    """KTO: a prompt and one completion, desirable or not, plus its KL row (this prompt, the next row's completion)."""

    SEQUENCES: ClassVar[dict[str, str]] = {"completion": "its completion",
                                           "kl": "the next row's completion (its KL row)"}
    REFERENCES: ClassVar[dict[str, str]] = {"ref_logps": "ref", "ref_kl_logps": "ref_kl"}

    completion: causal.Example
    kl: causal.Example
    desirable: bool
    prompt_tokens: int
    line: str
    ref: float = math.nan
    ref_kl: float = math.nan

    def __len__(self) -> int:
        return len(self.completion) + len(self.kl)

    def sequences(self) -> tuple[causal.Example, causal.Example]:
        return self.completion, self.kl

    def set_reference(self, completion: float, kl: float) -> None:
        self.ref, self.ref_kl = completion, kl


# ------------------------------------------------------------------------------------------------------------
# Rows: detect the format, validate, normalize
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One validated row. A KTO row fills only the side its label names (chosen if desirable, else rejected)."""

    file: str
    line: int
    kind: str  # its format as messages name it: "pair (chat)", "KTO (plain text)", ...
    prompt: Prompt
    chosen: str | None
    rejected: str | None

    @property
    def at(self) -> str:
        return where(self.file, self.line)

    @property
    def chat(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass(frozen=True)
class Format:
    name: str
    keys: tuple[str, ...]  # every key its rows need
    parse: Callable[[dict[str, Any], str], tuple[Prompt, str | None, str | None]]


def parse_pair(data: dict[str, Any], at: str) -> tuple[Prompt, str | None, str | None]:
    return parse_prompt(data["prompt"], "prompt", at), *distinct_answers(data, ("chosen", "rejected"), at)


def parse_openai(data: dict[str, Any], at: str) -> tuple[Prompt, str | None, str | None]:
    given = data["input"]  # its `tools` and `parallel_tool_calls` say nothing about the answers: ignored
    if not isinstance(given, dict) or "messages" not in given:
        raise DataError(f"{at}: 'input' must be an object with 'messages', the conversation the outputs answer")
    prompt = parse_messages(given["messages"], "input.messages", at)
    return prompt, *distinct_answers(data, ("preferred_output", "non_preferred_output"), at)


def parse_kto(data: dict[str, Any], at: str) -> tuple[Prompt, str | None, str | None]:
    prompt = parse_prompt(data["prompt"], "prompt", at)
    completion = parse_answer(data["completion"], "completion", at)
    return (prompt, completion, None) if parse_label(data["label"], at) else (prompt, None, completion)


FORMATS = (
    Format("OpenAI preference", ("input", "preferred_output", "non_preferred_output"), parse_openai),
    Format("pair", ("prompt", "chosen", "rejected"), parse_pair),
    Format("KTO", ("prompt", "completion", "label"), parse_kto),
)
NEEDS = "; ".join(f"{f.name} rows need {', '.join(f.keys)}" for f in FORMATS)


def parse_parts(parts: prepare.Parts) -> list[Row]:
    return [row for label, records in parts for row in parse_file(label, records)]


def parse_file(label: str, records: list[Record]) -> list[Row]:
    rows: list[Row] = []
    for record in records:
        row = parse_row(record.data, label, record.line)
        if rows and row.kind != rows[0].kind:
            raise DataError(f"{row.at}: row is {row.kind} but the file's first row is {rows[0].kind} "
                            f"(keys found: {keys_found(record.data)}); one format per file")
        rows.append(row)
    return rows


def parse_row(data: dict[str, Any], file: str, line: int) -> Row:
    at = where(file, line)
    fmt = row_format(data)
    if fmt is None:
        raise DataError(f"{at}: row is in none of the preference formats (keys found: {keys_found(data)}); {NEEDS}")
    missing = [key for key in fmt.keys if key not in data]
    if missing:
        raise DataError(f"{at}: '{missing[0]}' is missing; {fmt.name} rows need {', '.join(fmt.keys)}")
    prompt, chosen, rejected = fmt.parse(data, at)
    kind = f"{fmt.name} ({'chat' if isinstance(prompt, list) else 'plain text'})"
    return Row(file, line, kind, prompt, chosen, rejected)


def row_format(data: dict[str, Any]) -> Format | None:
    """The format with a key of its own in the row (every key but `prompt` belongs to one format)."""
    return next((f for f in FORMATS if any(key in data for key in f.keys if key != "prompt")), None)


def keys_found(data: dict[str, Any]) -> str:
    return ", ".join(sorted(data)) or "none"


def parse_prompt(value: Any, key: str, at: str) -> Prompt:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return parse_messages(value, key, at)
    raise DataError(f"{at}: '{key}' must be a string (plain text) or a list of {{role, content}} messages")


def parse_messages(messages: Any, key: str, at: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{at}: '{key}' must be a non-empty list of {{role, content}} objects")
    for index, message in enumerate(messages):
        check_message(message, f"{key}[{index}]", at)
    if messages[-1]["role"] != "user":
        raise DataError(f"{at}: '{key}' ends with a {messages[-1]['role']} turn; a prompt must end with the user turn "
                        "the answers reply to")
    # Only role and content: what SFT's chat template sees of a message.
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def check_message(message: Any, name: str, at: str) -> None:
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise DataError(f"{at}: {name} needs 'role' and 'content'")
    if message["role"] not in causal.ROLES:
        raise DataError(f"{at}: {name} has role '{message['role']}'; allowed roles: {', '.join(causal.ROLES)}")
    if not isinstance(message["content"], str):
        raise DataError(f"{at}: {name}.content must be a string")


def parse_answer(value: Any, key: str, at: str) -> str:
    """A string, one assistant message, or a list holding one: the answer's text."""
    if isinstance(value, list):
        if any(is_tool_call(item) for item in value):
            raise tool_call_error(key, at)
        if len(value) != 1:
            raise DataError(f"{at}: '{key}' holds {len(value)} messages; an answer is one assistant message")
        value = value[0]
    if isinstance(value, dict):
        if is_tool_call(value):
            raise tool_call_error(key, at)
        if value.get("role") != "assistant":
            raise DataError(f"{at}: '{key}' has role '{value.get('role')}'; an answer is the assistant's: "
                            '{"role": "assistant", "content": ...} or a string')
        value = value.get("content")
    if not isinstance(value, str):
        raise DataError(f"{at}: '{key}' must be a string or one {{\"role\": \"assistant\", \"content\": ...}} message")
    if not value.strip():
        raise DataError(f"{at}: '{key}' is an empty answer, so nothing to learn from; write the answer or remove the row")
    return value


def is_tool_call(message: Any) -> bool:
    return isinstance(message, dict) and bool(message.get("tool_calls") or message.get("function_call"))


def tool_call_error(key: str, at: str) -> DataError:
    return DataError(f"{at}: '{key}' is a tool call; preference tuning learns text answers only, remove the row")


def distinct_answers(data: dict[str, Any], keys: tuple[str, str], at: str) -> tuple[str, str]:
    chosen, rejected = (parse_answer(data[key], key, at) for key in keys)
    if chosen.strip() == rejected.strip():
        raise DataError(f"{at}: '{keys[0]}' and '{keys[1]}' are the same answer, so there is nothing to prefer; "
                        "make them differ or remove the row")
    return chosen, rejected


def parse_label(value: Any, at: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return LABELS[value.strip().lower()]
    raise DataError(f"{at}: 'label' is {value!r}; a KTO label is true (a desirable completion) or false (an "
                    "undesirable one), in CSV also 1 or 0")


def check_rows(rows: list[Row], unpaired: bool) -> None:
    """What holds across files: one kind of prompt (chat or plain text); pairs unless the objective is unpaired."""
    first = rows[0]
    for row in rows:
        if row.chat != first.chat:
            raise DataError(f"{row.at}: row is {row.kind} but {first.at} is {first.kind}; use chat prompts "
                            "everywhere or plain text everywhere")
        if not unpaired and (row.chosen is None or row.rejected is None):
            raise DataError(f"{row.at}: a KTO row (prompt, completion, label) has one answer and this objective "
                            "compares two; give prompt, chosen and rejected, or train with an unpaired objective (KTO)")


# ------------------------------------------------------------------------------------------------------------
# Tokenizing: each answer as the SFT row of prompt + answer
# ------------------------------------------------------------------------------------------------------------


def sft_row(prompt: Prompt, answer: str) -> dict[str, Any]:
    """The row SFT trains on for this prompt and answer."""
    if isinstance(prompt, list):
        return {"messages": [*prompt, {"role": "assistant", "content": answer}]}
    return {"prompt": prompt, "completion": answer}


def tokenize_answers(rows: list[Row], answers: list[str], tokenizer: Any) -> list[causal.Example]:
    """Each row's prompt followed by the answer at its index, through SFT's own tokenization."""
    if not rows:
        return []
    shape = "chat" if rows[0].chat else "prompt_completion"
    located = [(row.file, Record(row.line, sft_row(row.prompt, answer)))
               for row, answer in zip(rows, answers, strict=True)]
    return [example for label, records in prepare.group_by_file(located)
            for example in causal.tokenize_records(records, Path(label), shape, tokenizer, train_on_inputs=False)]


def first_target(example: causal.Example) -> int:
    return int(np.argmax(example.target_mask))


def make_pairs(rows: list[Row], tokenizer: Any) -> list[PreferencePair]:
    chosen = tokenize_answers(rows, [row.chosen for row in rows], tokenizer)
    rejected = tokenize_answers(rows, [row.rejected for row in rows], tokenizer)
    return [PreferencePair(c, r, min(first_target(c), first_target(r)), row.at)
            for row, c, r in zip(rows, chosen, rejected, strict=True)]


def unpair(rows: list[Row]) -> list[tuple[Row, str, bool]]:
    """(row, completion, desirable): KTO rows as they are; pair rows as TRL unpairs them, every chosen answer
    (desirable) first, then every rejected one, so the next row, whose completion the KL row borrows, has another
    prompt."""
    first = [(row, row.chosen, True) if row.chosen is not None else (row, row.rejected, False) for row in rows]
    second = [(row, row.rejected, False) for row in rows if row.chosen is not None and row.rejected is not None]
    return first + second


def make_unpaired(rows: list[Row], tokenizer: Any) -> list[UnpairedExample]:
    singles = unpair(rows)
    prompts = [row for row, _, _ in singles]
    answers = [answer for _, answer, _ in singles]
    completions = tokenize_answers(prompts, answers, tokenizer)
    # TRL pairs each prompt with another completion of its batch; a pairing fixed here (the next row's, wrapping
    # around) lets the reference log-probs of the KL rows be computed once.
    kl = tokenize_answers(prompts, answers[1:] + answers[:1], tokenizer)
    return [UnpairedExample(c, k, desirable, first_target(c), row.at)
            for (row, _, desirable), c, k in zip(singles, completions, kl, strict=True)]


# ------------------------------------------------------------------------------------------------------------
# From config to PreparedData
# ------------------------------------------------------------------------------------------------------------


def prepare_preference(config: TrainConfig, tokenizer: Any, model_max_length: int | None, *,
                       unpaired: bool) -> PreparedData:
    """Pairs or, `unpaired`, KTO rows (pair rows unpaired into both kinds). The shape is the SFT shape the rows
    render as (chat or prompt_completion): how a trained run renders prompts when it generates."""
    train_rows, valid_rows = read_rows(config, unpaired)
    build = make_unpaired if unpaired else make_pairs
    train, valid = build(train_rows, tokenizer), build(valid_rows, tokenizer)
    lengths = [len(getattr(item, name)) for item in train + valid for name in item.SEQUENCES]
    context_length = prepare.choose_context_length(config.context_length, lengths, model_max_length)
    kept, stats, notes = {}, {}, []
    for name, items in (("train", train), ("valid", valid)):
        kept[name], truncated = fit_items(items, context_length, config.truncation)
        stats[name] = split_stats(items, kept[name], truncated)
        notes += prepare.fit_notes(name, len(items) - len(kept[name]), truncated, context_length)
    if not kept["train"]:
        raise DataError(f"{config.train_path}: no row has target tokens within context_length {context_length}")
    stats |= answer_stats(train, kept["train"], context_length, ("completion",) if unpaired else ("chosen", "rejected"))
    sft_train = sft_rows(train_rows)
    inferred = infer_answer_schema([causal.answer_target(row) for row in sft_train])
    shape = "chat" if train_rows[0].chat else "prompt_completion"
    return PreparedData(shape, kept["train"], kept["valid"], context_length, stats,
                        notes=notes + inferred.notes,
                        valid_rows=sft_rows(valid_rows or train_rows)[:prepare.rows_kept(config)],
                        system_prompt=causal.shared_system_prompt(sft_train), answer_schema=inferred.schema)


def read_rows(config: TrainConfig, unpaired: bool) -> tuple[list[Row], list[Row]]:
    """Every row validated (before the split, so a file's first row is its first row), then train and valid."""
    train = parse_parts(read_dataset(config.train_path, "train_path"))
    if config.valid_path:
        valid = parse_parts(read_dataset(config.valid_path, "valid_path"))
    else:
        train, valid = prepare.split_records(train, config.valid_split, config.seed, Path(config.train_path))
    check_rows(train + valid, unpaired)
    return train, valid


def sft_rows(rows: list[Row]) -> list[dict[str, Any]]:
    """The SFT rows of the chosen (KTO: desirable) answers: what generation at validation and export check on."""
    return [sft_row(row.prompt, row.chosen) for row in rows if row.chosen is not None]


def fit_items(items: list[Any], context_length: int, policy: str) -> tuple[list[Any], int]:
    """Cut the end of every sequence longer than the context (or refuse); drop an item whose answer keeps no target.
    Returns the items kept and how many had a sequence cut."""
    long = [item for item in items if any(len(getattr(item, name)) > context_length for name in item.SEQUENCES)]
    if long and policy == "refuse":
        raise too_long(long, context_length)
    kept = []
    for item in items:
        cut = {name: clip(getattr(item, name), context_length) for name in item.SEQUENCES}
        # A target at position 0 has no preceding token to be predicted from, so it does not count.
        if all(example.target_mask[1:].any() for example in cut.values()):
            kept.append(replace(item, **cut))
    return kept, len(long)


def clip(example: causal.Example, context_length: int) -> causal.Example:
    if len(example) <= context_length:
        return example
    return causal.Example(example.input_ids[:context_length], example.target_mask[:context_length], example.source)


def too_long(long: list[Any], context_length: int) -> DataError:
    first = long[0]
    name = max(first.SEQUENCES, key=lambda sequence: len(getattr(first, sequence)))
    others = f" (and {len(long) - 1} more row(s))" if len(long) > 1 else ""
    return DataError(f"{first.line}: row is {len(getattr(first, name))} tokens with {first.SEQUENCES[name]}, longer "
                     f"than context_length {context_length}{others}; raise context_length or set truncation: truncate")


def split_stats(items: list[Any], kept: list[Any], truncated: int) -> LengthStats:
    """Tokens per item (all its sequences, one forward), for all items read; rows are those training uses."""
    target_tokens = int(sum(getattr(item, name).target_mask.sum() for item in kept for name in item.SEQUENCES))
    stats = LengthStats.of([len(item) for item in items], target_tokens, truncated)
    return replace(stats, rows=len(kept), dropped=len(items) - len(kept))


def answer_stats(items: list[Any], kept: list[Any], context_length: int,
                 names: tuple[str, ...]) -> dict[str, LengthStats]:
    """Training rows' prompts, and each answer's sequence (prompt + answer: what context_length bounds)."""
    counts = {"rows": len(kept), "dropped": len(items) - len(kept)}
    prompts = [item.prompt_tokens for item in items]
    stats = {"prompt": LengthStats.of(prompts, 0, sum(n > context_length for n in prompts))}
    for name in names:
        lengths = [len(getattr(item, name)) for item in items]
        target_tokens = int(sum(getattr(item, name).target_mask.sum() for item in kept))
        stats[name] = LengthStats.of(lengths, target_tokens, sum(n > context_length for n in lengths))
    return {name: replace(value, **counts) for name, value in stats.items()}


# ------------------------------------------------------------------------------------------------------------
# Collation
# ------------------------------------------------------------------------------------------------------------


def collate_preference(examples: list[Any], pad_id: int, *, padding: str, context_length: int,
                       multiple_of: int | None) -> dict[str, torch.Tensor]:
    """Every example's first sequence, then every second one (chosen then rejected; KTO: completions then KL rows),
    so the loss splits the batch in halves. Reference log-probs ride along once every example has them."""
    first, second = examples[0].SEQUENCES
    rows = [getattr(example, first) for example in examples] + [getattr(example, second) for example in examples]
    if padding == "free":
        batch = collate_causal_padding_free(rows)
    else:
        batch = collate_causal(rows, pad_id, padding=padding, context_length=context_length, multiple_of=multiple_of)
    references = {key: [getattr(example, name) for example in examples] for key, name in examples[0].REFERENCES.items()}
    if not any(math.isnan(value) for values in references.values() for value in values):
        batch.update({key: torch.tensor(values, dtype=torch.float32) for key, values in references.items()})
    if isinstance(examples[0], UnpairedExample):
        batch["desirable"] = torch.tensor([example.desirable for example in examples], dtype=torch.bool)
    return batch
