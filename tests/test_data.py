from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import chat_row, write_jsonl
from tuneforge.config import TrainConfig
from tuneforge.data import causal
from tuneforge.data.prepare import prepare_causal
from tuneforge.data.records import read_records
from tuneforge.errors import DataError


def tokenize(rows, tokenizer, tmp_path, train_on_inputs=False):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    records = read_records(path)
    shape = causal.detect_shape(records, path)
    causal.validate_rows(records, path, shape)
    return causal.tokenize_records(records, path, shape, tokenizer, train_on_inputs)


def targets_text(example, tokenizer) -> str:
    return tokenizer.decode(example.input_ids[example.target_mask])


def test_chat_trains_assistant_reply_and_its_end_of_turn_only(smol_tokenizer, tmp_path):
    rows = [chat_row("What is 2+2?", "4, of course.", system="Be brief.")]
    [example] = tokenize(rows, smol_tokenizer, tmp_path)
    assert targets_text(example, smol_tokenizer) == "4, of course.<|im_end|>"
    # The EOS is trained although this tokenizer shipped with pad == eos: masks go by position, not token id.
    eos = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained_ids = example.input_ids[example.target_mask]
    assert trained_ids[-1] == eos
    assert (example.input_ids == eos).sum() == 3  # system, user and assistant turns all end in <|im_end|>


def test_every_assistant_turn_is_trained_in_multi_turn_chats(smol_tokenizer, tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]}
    [example] = tokenize([row], smol_tokenizer, tmp_path)
    assert targets_text(example, smol_tokenizer) == "hello<|im_end|>see you<|im_end|>"


def test_train_on_inputs_trains_the_prompt_too(smol_tokenizer, tmp_path):
    [example] = tokenize([chat_row("Question?", "Answer.")], smol_tokenizer, tmp_path, train_on_inputs=True)
    assert "Question?" in targets_text(example, smol_tokenizer)
    assert targets_text(example, smol_tokenizer).endswith("Answer.<|im_end|>")


def test_prompt_completion_trains_completion_plus_eos(smol_tokenizer, tmp_path):
    [example] = tokenize([{"prompt": "Capital of France:", "completion": " Paris"}], smol_tokenizer, tmp_path)
    assert targets_text(example, smol_tokenizer) == " Paris<|im_end|>"


def test_text_rows_train_every_token_and_end_with_eos(smol_tokenizer, tmp_path):
    [example] = tokenize([{"text": "A quiet morning."}], smol_tokenizer, tmp_path)
    assert example.target_mask.all()
    assert smol_tokenizer.decode(example.input_ids) == "A quiet morning.<|im_end|>"


def test_distinct_pad_token_is_chosen_when_pad_equals_eos(smol_tokenizer):
    assert smol_tokenizer.pad_token == "<|endoftext|>"
    assert smol_tokenizer.pad_token_id != smol_tokenizer.eos_token_id


def test_end_of_turn_ids_are_the_chat_template_marker(smol_tokenizer):
    assert causal.end_of_turn_token_ids(smol_tokenizer) == [smol_tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"text": "ok"}', '{"text": "broken"'], r"rows\.jsonl:2: invalid JSON"),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], r"rows\.jsonl:1: no assistant message"),
        (['{"messages": [{"role": "robot", "content": "hi"}]}'], r"rows\.jsonl:1: messages\[0\] has role 'robot'"),
        (['{"messages": [{"role": "user"}]}'], r"rows\.jsonl:1: messages\[0\] needs 'role' and 'content'"),
        (['{"prompt": "only a prompt"}'], r"rows\.jsonl:1: 'completion' is missing"),
        (['{"prompt": "p", "completion": "c"}', '{"prompt": "p", "completion": " "}'],
         r"rows\.jsonl:2: 'completion' is empty, so nothing to learn from"),
        (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}'],
         r"rows\.jsonl:1: messages\[1\] is an empty assistant reply, so nothing to learn from; write the reply"),
        (['{"question": "?"}'], r"rows\.jsonl:1: row has none of 'messages'.*keys found: question"),
        (['{"text": "a"}', '{"prompt": "p", "completion": "c"}'], r"rows\.jsonl:2: row is prompt_completion but"),
        (['[1, 2]'], r"rows\.jsonl:1: expected a JSON object"),
        ([], r"rows\.jsonl: data file is empty"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, smol_tokenizer, lines, expected):
    with pytest.raises(DataError, match=expected):
        tokenize(lines, smol_tokenizer, tmp_path)


def test_non_utf8_bytes_name_line_and_column(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 14\)"):
        read_records(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: train_path file not found"):
        read_records(tmp_path / "nope.jsonl", "train_path")


def test_a_directory_is_not_called_missing(tmp_path):
    with pytest.raises(DataError, match=r": train_path is a directory, not a file; give a \.jsonl or \.csv file"):
        read_records(tmp_path, "train_path")


def prepared(tmp_path: Path, tokenizer, rows, **overrides):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    config = TrainConfig(model_id="m", train_path=str(path), **overrides)
    return prepare_causal(config, tokenizer, model_max_length=8192)


def test_long_rows_are_truncated_and_counted(tmp_path, smol_tokenizer):
    rows = [chat_row("short", "yes")] * 4 + [chat_row("word " * 200, "long answer " * 50)] * 2
    data = prepared(tmp_path, smol_tokenizer, rows, context_length=64, valid_split=0)
    assert data.stats["train"].truncated == 2
    assert all(len(example) <= 64 for example in data.train)
    assert any("truncated" in note for note in data.notes)


def test_an_empty_user_message_is_a_note_naming_file_and_line(tmp_path, smol_tokenizer):
    rows = [chat_row("hi", "yes"), chat_row("", "yes"), chat_row("hello", "no"), chat_row(" ", "no")]
    data = prepared(tmp_path, smol_tokenizer, rows, valid_split=0)
    assert len(data.train) == 4
    assert any(note.startswith(f"{tmp_path / 'train.jsonl'}:2: empty user message (and 1 more row(s))")
               for note in data.notes), data.notes


def test_rows_left_without_targets_are_dropped_and_not_counted(tmp_path, smol_tokenizer):
    rows = [chat_row("short", "yes")] * 4 + [chat_row("word " * 200, "the answer")] * 2  # answer beyond 64 tokens
    data = prepared(tmp_path, smol_tokenizer, rows, context_length=64, valid_split=0)
    assert len(data.train) == 4 and data.stats["train"].rows == 4  # what steps/epoch and `plan` both use
    assert data.stats["train"].max > 64  # the length statistics still describe every row read
    assert any("2 row(s) dropped" in note for note in data.notes)


def test_long_rows_are_refused_when_configured(tmp_path, smol_tokenizer):
    rows = [chat_row("short", "yes"), chat_row("word " * 200, "x")]
    with pytest.raises(DataError, match=r"train\.jsonl:2: row is \d+ tokens, longer than context_length 64"):
        prepared(tmp_path, smol_tokenizer, rows, context_length=64, truncation="refuse", valid_split=0)


def test_context_length_defaults_to_the_longest_row(tmp_path, smol_tokenizer):
    rows = [chat_row("a", "b"), chat_row("a longer question here", "and a longer answer")]
    data = prepared(tmp_path, smol_tokenizer, rows, valid_split=0)
    assert data.context_length == max(len(e) for e in data.train)


def test_valid_split_is_seeded_and_disjoint(tmp_path, smol_tokenizer):
    rows = [chat_row(f"question {i}", f"answer {i}") for i in range(40)]
    first = prepared(tmp_path, smol_tokenizer, rows, valid_split=0.25, seed=3)
    again = prepared(tmp_path, smol_tokenizer, rows, valid_split=0.25, seed=3)
    assert len(first.valid) == 10 and len(first.train) == 30
    assert [e.source for e in first.valid] == [e.source for e in again.valid]
    assert not {e.source for e in first.valid} & {e.source for e in first.train}


def test_collate_pads_right_and_masks_pads(smol_tokenizer, tmp_path):
    from tuneforge.data.collate import IGNORE_INDEX, collate_causal

    examples = tokenize([chat_row("a", "b"), chat_row("a much longer question", "b")], smol_tokenizer, tmp_path)
    batch = collate_causal(examples, smol_tokenizer.pad_token_id, context_length=512)
    short = len(examples[0])
    assert batch["input_ids"].shape == (2, len(examples[1]))
    assert batch["attention_mask"][0, short:].sum() == 0
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert np.array_equal(batch["labels"][0, :short].numpy() != IGNORE_INDEX, examples[0].target_mask)
