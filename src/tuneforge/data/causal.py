"""Causal-LM rows: detect the shape of a file, validate every row, tokenize with loss masks.

Three shapes, detected per file from its first row:
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}` through the chat template;
- prompt/completion: `{"prompt": ..., "completion": ...}` as plain text;
- text: `{"text": ...}`, all tokens trained.

Targets are labelled by character position (token offsets), never by token id, so the end-of-turn/EOS token that
closes every target is always a trained label, also where the tokenizer's pad token equals its EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tuneforge.data.records import Record
from tuneforge.errors import DataError, where

Shape = Literal["chat", "prompt_completion", "text"]
ROLES = ("system", "user", "assistant")  # the chat roles: training data, generate and serve all take these
TOKENIZE_CHUNK = 512


@dataclass
class Example:
    """A tokenized row: ids, which positions are trained, and where it came from."""

    input_ids: np.ndarray  # int32
    target_mask: np.ndarray  # bool, True where the token is a label
    source: str  # file:line

    def __len__(self) -> int:
        return len(self.input_ids)


def detect_shape(records: list[Record], path: Path) -> Shape:
    first = records[0]
    shape = row_shape(first.data)
    if shape is None:
        raise DataError(
            f"{where(path, first.line)}: row has none of 'messages', 'prompt'+'completion' or 'text' "
            f"(keys found: {', '.join(sorted(first.data)) or 'none'})"
        )
    return shape


def row_shape(row: dict[str, Any]) -> Shape | None:
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


def validate_rows(records: list[Record], path: Path, shape: Shape, *, need_target: bool = True) -> list[str]:
    """Every row has the file's shape and usable fields; the first bad row raises a DataError. Returns notes on
    rows that are usable but look like a mistake (an empty user message)."""
    check = {"chat": check_chat_row, "prompt_completion": check_prompt_row, "text": check_text_row}[shape]
    empty_user = []
    for record in records:
        found = row_shape(record.data)
        if found != shape:
            raise DataError(
                f"{where(path, record.line)}: row is {found or 'of no known shape'} but the file's first row is "
                f"{shape} (keys found: {', '.join(sorted(record.data)) or 'none'}); one shape per file"
            )
        check(record.data, where(path, record.line), need_target)
        if shape == "chat" and any(m["role"] == "user" and not m["content"].strip() for m in record.data["messages"]):
            empty_user.append(record.line)
    return empty_user_note(path, empty_user)


def empty_user_note(path: Path, lines: list[int]) -> list[str]:
    if not lines:
        return []
    others = f" (and {len(lines) - 1} more row(s))" if len(lines) > 1 else ""
    return [f"{where(path, lines[0])}: empty user message{others}; its reply is learnt with no question to it, check the row"]


def check_chat_row(row: dict[str, Any], at: str, need_target: bool) -> None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{at}: 'messages' must be a non-empty list of {{role, content}} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{at}: messages[{index}] needs 'role' and 'content'")
        if message["role"] not in ROLES:
            raise DataError(
                f"{at}: messages[{index}] has role '{message['role']}'; allowed roles: {', '.join(ROLES)}"
            )
        if not isinstance(message["content"], str):
            raise DataError(f"{at}: messages[{index}].content must be a string")
    if need_target and not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{at}: no assistant message, so nothing to learn from; add the assistant's reply")
    empty_replies = [i for i, m in enumerate(messages) if m["role"] == "assistant" and not m["content"].strip()]
    if need_target and empty_replies:
        raise DataError(f"{at}: messages[{empty_replies[0]}] is an empty assistant reply, so nothing to learn from; "
                        "write the reply or remove the row")
    if not need_target and messages[-1]["role"] == "assistant":
        raise DataError(f"{at}: the last message is the assistant's; a prompt must end with a user turn")


def check_prompt_row(row: dict[str, Any], at: str, need_target: bool) -> None:
    required = ("prompt", "completion") if need_target else ("prompt",)
    for key in required:
        if not isinstance(row.get(key), str):
            problem = "is missing" if key not in row else "must be a string"
            raise DataError(f"{at}: '{key}' {problem}")
    if need_target and not row["completion"].strip():
        raise DataError(f"{at}: 'completion' is empty, so nothing to learn from; write the completion or remove the row")


def check_text_row(row: dict[str, Any], at: str, need_target: bool) -> None:
    if not isinstance(row["text"], str) or not row["text"]:
        raise DataError(f"{at}: 'text' must be a non-empty string")


# ------------------------------------------------------------------------------------------------------------
# Rendering: row -> text with character spans of the targets
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # [start, end) character spans that are trained
    add_special_tokens: bool  # False when a chat template already placed BOS and friends


def render_row(row: dict[str, Any], shape: Shape, tokenizer: Any, train_on_inputs: bool) -> Rendered:
    if shape == "chat":
        return render_chat(row["messages"], tokenizer, train_on_inputs)
    eos = tokenizer.eos_token or ""
    if shape == "text":
        text = row["text"] + eos
        return Rendered(text, [(0, len(text))], True)
    text = row["prompt"] + row["completion"] + eos
    start = 0 if train_on_inputs else len(row["prompt"])
    return Rendered(text, [(start, len(text))], True)


def render_chat(messages: list[dict[str, str]], tokenizer: Any, train_on_inputs: bool) -> Rendered:
    """Render through the chat template; each assistant turn's span runs from its content to the first special
    token after it (the end-of-turn marker). A template that closes turns without one gets the EOS inserted."""
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    rendered_upto = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = apply_template(tokenizer, messages[:index], add_generation_prompt=True)
        through = apply_template(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (through.startswith(before) and before.startswith(rendered_upto)):
            raise DataError("the chat template does not render conversations as growing prefixes; use prompt/completion rows")
        turn = through[len(before):]
        content_at = turn.find(message["content"])
        content_end = (content_at if content_at >= 0 else 0) + len(message["content"])
        marker_end = end_of_turn(turn, content_end, tokenizer)
        offset = sum(len(piece) for piece in pieces)
        pieces.append(before[len(rendered_upto):])
        if marker_end is None:
            turn = turn[:content_end] + tokenizer.eos_token + turn[content_end:]
            marker_end = content_end + len(tokenizer.eos_token)
        start = offset + len(pieces[-1])
        spans.append((start, start + marker_end))
        pieces.append(turn)
        rendered_upto = through
    full = apply_template(tokenizer, messages, add_generation_prompt=False)
    pieces.append(full[len(rendered_upto):])
    text = "".join(pieces)
    if train_on_inputs:
        spans = [(0, spans[-1][1])] if spans else [(0, len(text))]
    return Rendered(text, spans, False)


def apply_template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not messages:
        # An empty conversation renders as nothing, except templates that emit a BOS up front.
        probe = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False)
        bos = tokenizer.bos_token
        return bos if bos and probe.startswith(bos) else ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def end_of_turn(turn: str, content_end: int, tokenizer: Any) -> int | None:
    """Character index just past the first special token that follows the assistant's content."""
    best = None
    for token in special_token_strings(tokenizer):
        found = turn.find(token, content_end)
        if found >= 0 and (best is None or found < best[0]):
            best = (found, found + len(token))
    return best[1] if best else None


def special_token_strings(tokenizer: Any) -> list[str]:
    tokens = set(tokenizer.all_special_tokens)
    tokens.update(str(token) for token in getattr(tokenizer, "added_tokens_decoder", {}).values() if token.special)
    return sorted((token for token in tokens if token), key=len, reverse=True)


def end_of_turn_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the EOS plus the template's own end-of-turn marker."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if tokenizer.chat_template:
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x7q"}]
        rendered = render_chat(probe, tokenizer, train_on_inputs=False)
        start, end = rendered.spans[0]
        marker = rendered.text[rendered.text.find("x7q", start) + 3 : end]
        marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
        ids.extend(i for i in marker_ids[-1:] if i not in ids)
    return ids


# ------------------------------------------------------------------------------------------------------------
# Tokenizing
# ------------------------------------------------------------------------------------------------------------


def tokenize_records(
    records: list[Record], path: Path, shape: Shape, tokenizer: Any, train_on_inputs: bool
) -> list[Example]:
    """Tokenize rows (no truncation yet) with target masks taken from character spans."""
    if shape == "chat" and not tokenizer.chat_template:
        raise DataError(
            f"{path}: chat rows need a tokenizer with a chat template, and this model has none; "
            "use prompt/completion rows or a model with a chat template"
        )
    examples: list[Example] = []
    for start in range(0, len(records), TOKENIZE_CHUNK):
        chunk = records[start : start + TOKENIZE_CHUNK]
        rendered = [render_located(record, path, shape, tokenizer, train_on_inputs) for record in chunk]
        encoded = tokenizer(
            [item.text for item in rendered],
            add_special_tokens=rendered[0].add_special_tokens,  # one shape per file, so one setting per file
            return_offsets_mapping=True,
        )
        for record, item, ids, offsets in zip(chunk, rendered, encoded["input_ids"], encoded["offset_mapping"], strict=True):
            examples.append(make_example(ids, offsets, item.spans, where(path, record.line)))
    return examples


def render_located(record: Record, path: Path, shape: Shape, tokenizer: Any, train_on_inputs: bool) -> Rendered:
    try:
        return render_row(record.data, shape, tokenizer, train_on_inputs)
    except DataError as exc:
        raise DataError(f"{where(path, record.line)}: {exc}") from None
    except Exception as exc:  # a template raising on this row (jinja `raise_exception`, bad role order)
        raise DataError(f"{where(path, record.line)}: the chat template rejected this row: {exc}") from None


def make_example(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], source: str) -> Example:
    mask = np.zeros(len(ids), dtype=bool)
    for index, (tok_start, tok_end) in enumerate(offsets):
        if tok_end <= tok_start:
            continue  # tokens with no characters (a BOS added by the tokenizer) are never targets
        mask[index] = any(tok_start < span_end and tok_end > span_start for span_start, span_end in spans)
    return Example(np.asarray(ids, dtype=np.int32), mask, source)


def answer_target(row: dict[str, Any]) -> str | None:
    """The answer a row teaches: a chat row's closing assistant message, a completion; None for plain text."""
    messages = row.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last = messages[-1]
        return last.get("content") if last.get("role") == "assistant" else None
    completion = row.get("completion")
    return completion if isinstance(completion, str) else None


def shared_system_prompt(rows: list[dict[str, Any]]) -> str | None:
    """The system message every chat row uses, if they all use the same one (export's Modelfile sets it)."""
    systems = {next((m.get("content") for m in row.get("messages") or [] if m.get("role") == "system"), None)
               for row in rows}
    return systems.pop() if len(systems) == 1 and None not in systems else None
