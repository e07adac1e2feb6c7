from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import chat_row, write_jsonl
from tuneforge.config import TrainConfig
from tuneforge.data import causal
from tuneforge.data.collate import IGNORE_INDEX
from tuneforge.data.preference import PreferencePair, UnpairedExample, collate_preference, prepare_preference
from tuneforge.data.records import read_records
from tuneforge.errors import DataError

SYSTEM = {"role": "system", "content": "Answer in JSON."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def pair(question: str, chosen, rejected, system: bool = True) -> dict:
    return {"prompt": [SYSTEM, user(question)] if system else [user(question)], "chosen": chosen, "rejected": rejected}


def openai_row(question: str, chosen: str, rejected: str) -> dict:
    return {"input": {"messages": [SYSTEM, user(question)], "tools": [], "parallel_tool_calls": False},
            "preferred_output": [assistant(chosen)], "non_preferred_output": [assistant(rejected)]}


def kto(prompt, completion: str, label) -> dict:
    return {"prompt": prompt, "completion": completion, "label": label}


def prepared(tmp_path: Path, tokenizer, rows, name="train.jsonl", unpaired=False, **overrides):
    path = write_jsonl(tmp_path / name, rows)
    config = TrainConfig(model_id="m", train_path=str(path), **{"valid_split": 0, **overrides})
    return prepare_preference(config, tokenizer, model_max_length=8192, unpaired=unpaired)


def sft_example(row: dict, tokenizer, tmp_path: Path) -> causal.Example:
    """What SFT makes of the same conversation, through causal's own functions."""
    path = write_jsonl(tmp_path / "sft.jsonl", [row])
    records = read_records(path)
    shape = causal.detect_shape(records, path)
    causal.validate_rows(records, path, shape)
    [example] = causal.tokenize_records(records, path, shape, tokenizer, train_on_inputs=False)
    return example


def same_tokens(a: causal.Example, b: causal.Example) -> bool:
    return np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.target_mask, b.target_mask)


def targets(example: causal.Example, tokenizer) -> str:
    return tokenizer.decode(example.input_ids[example.target_mask])


# ------------------------------------------------------------------------------------------------------------
# Formats and tokenization
# ------------------------------------------------------------------------------------------------------------


def test_chat_pairs_and_openai_rows_give_the_same_tokens(smol_tokenizer, tmp_path):
    answer_shapes = [pair("Name?", "{\"a\": 1}", "{\"a\": 2}"),
                     pair("Name?", assistant("{\"a\": 1}"), [assistant("{\"a\": 2}")]),
                     pair("Name?", [assistant("{\"a\": 1}")], assistant("{\"a\": 2}"))]
    pairs = [prepared(tmp_path, smol_tokenizer, [row], f"pairs{i}.jsonl").train[0] for i, row in enumerate(answer_shapes)]
    [openai] = prepared(tmp_path, smol_tokenizer, [openai_row("Name?", "{\"a\": 1}", "{\"a\": 2}")], "oa.jsonl").train
    for other in [*pairs[1:], openai]:
        assert same_tokens(other.chosen, pairs[0].chosen) and same_tokens(other.rejected, pairs[0].rejected)
        assert other.prompt_tokens == pairs[0].prompt_tokens


def test_each_answer_is_tokenized_as_sft_renders_the_conversation(smol_tokenizer, tmp_path):
    [item] = prepared(tmp_path, smol_tokenizer, [pair("What is 2+2?", "4", "5")]).train
    assert same_tokens(item.chosen, sft_example(chat_row("What is 2+2?", "4", system=SYSTEM["content"]),
                                                smol_tokenizer, tmp_path))
    assert same_tokens(item.rejected, sft_example(chat_row("What is 2+2?", "5", system=SYSTEM["content"]),
                                                  smol_tokenizer, tmp_path))
    plain = {"prompt": "Capital of France:", "chosen": " Paris", "rejected": " Lyon"}
    [item] = prepared(tmp_path, smol_tokenizer, [plain], "plain.jsonl").train
    assert same_tokens(item.chosen, sft_example({"prompt": "Capital of France:", "completion": " Paris"},
                                                smol_tokenizer, tmp_path))


def test_targets_are_the_answer_and_its_end_of_turn_never_the_prompt(smol_tokenizer, tmp_path):
    [item] = prepared(tmp_path, smol_tokenizer, [pair("Say yes.", "yes", "no way")]).train
    assert targets(item.chosen, smol_tokenizer) == "yes<|im_end|>"
    assert targets(item.rejected, smol_tokenizer) == "no way<|im_end|>"
    for example in (item.chosen, item.rejected):
        assert not example.target_mask[: item.prompt_tokens].any() and example.target_mask[item.prompt_tokens]
        assert example.input_ids[example.target_mask][-1] in causal.end_of_turn_token_ids(smol_tokenizer)
    assert np.array_equal(item.chosen.input_ids[: item.prompt_tokens], item.rejected.input_ids[: item.prompt_tokens])
    assert smol_tokenizer.decode(item.chosen.input_ids[: item.prompt_tokens]).endswith("<|im_start|>assistant\n")
    assert item.line == f"{tmp_path / 'train.jsonl'}:1" and len(item) == len(item.chosen) + len(item.rejected)


def test_kto_rows_load_from_jsonl_and_from_csv_with_text_labels(smol_tokenizer, tmp_path):
    rows = [kto("Q1:", " yes", True), kto("Q2:", " no", False)]
    jsonl = prepared(tmp_path, smol_tokenizer, rows, unpaired=True)
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("prompt,completion,label\nQ1:, yes,1\nQ2:, no,FALSE\n", encoding="utf-8")
    config = TrainConfig(model_id="m", train_path=str(csv_path), valid_split=0)
    from_csv = prepare_preference(config, smol_tokenizer, 8192, unpaired=True)
    assert jsonl.shape == from_csv.shape == "prompt_completion"  # how the run renders prompts when it generates
    assert [e.desirable for e in jsonl.train] == [e.desirable for e in from_csv.train] == [True, False]
    assert all(same_tokens(a.completion, b.completion) for a, b in zip(jsonl.train, from_csv.train, strict=True))


# ------------------------------------------------------------------------------------------------------------
# Bad rows: one line naming file:line, what is wrong and the fix
# ------------------------------------------------------------------------------------------------------------

GOOD = json.dumps(pair("q", "a", "b"))
GOOD_PLAIN = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([GOOD, json.dumps({"prompt": "q", "chosen": "a"})],
         r"train\.jsonl:2: 'rejected' is missing; pair rows need prompt, chosen, rejected"),
        ([json.dumps({"input": {"messages": [user("q")]}, "preferred_output": [assistant("a")]})],
         r"train\.jsonl:1: 'non_preferred_output' is missing; OpenAI preference rows need input, preferred_output"),
        ([json.dumps({"prompt": "q", "answer": "a"})],
         r"train\.jsonl:1: row is in none of the preference formats \(keys found: answer, prompt\); OpenAI preference "
         r"rows need input, preferred_output, non_preferred_output; pair rows need prompt, chosen, rejected; KTO rows "
         r"need prompt, completion, label"),
        ([GOOD, json.dumps(pair("q", " ", "b"))], r"train\.jsonl:2: 'chosen' is an empty answer, so nothing to learn"),
        ([GOOD, GOOD, json.dumps(pair("q", "same", [assistant("same ")]))],
         r"train\.jsonl:3: 'chosen' and 'rejected' are the same answer, so there is nothing to prefer"),
        ([json.dumps({"prompt": [user("q"), assistant("a")], "chosen": "a", "rejected": "b"})],
         r"train\.jsonl:1: 'prompt' ends with a assistant turn; a prompt must end with the user turn"),
        ([json.dumps({"input": {"messages": [user("q"), SYSTEM]}, "preferred_output": [assistant("a")],
                      "non_preferred_output": [assistant("b")]})],
         r"train\.jsonl:1: 'input\.messages' ends with a system turn; a prompt must end with the user turn"),
        ([GOOD, json.dumps(pair("q", "a", {"role": "user", "content": "b"}))],
         r"train\.jsonl:2: 'rejected' has role 'user'; an answer is the assistant's"),
        ([json.dumps(pair("q", [assistant("a"), assistant("b")], "c"))],
         r"train\.jsonl:1: 'chosen' holds 2 messages; an answer is one assistant message"),
        ([json.dumps({"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"})],
         r"train\.jsonl:1: prompt\[0\] has role 'robot'; allowed roles: system, user, assistant"),
        ([json.dumps({"input": {"messages": [user("q")]}, "non_preferred_output": [assistant("b")],
                      "preferred_output": [{"role": "assistant", "content": None,
                                            "tool_calls": [{"id": "1", "type": "function"}]}]})],
         r"train\.jsonl:1: 'preferred_output' is a tool call; preference tuning learns text answers only"),
        ([GOOD, json.dumps(kto([user("q")], "a", True))],
         r"train\.jsonl:2: row is KTO \(chat\) but the file's first row is pair \(chat\) .*; one format per file"),
        ([GOOD, GOOD_PLAIN], r"train\.jsonl:2: row is pair \(plain text\) but the file's first row is pair \(chat\)"),
        ([json.dumps(kto("q", "a", True))],
         r"train\.jsonl:1: a KTO row \(prompt, completion, label\) has one answer and this objective compares two"),
    ],
)
def test_bad_pair_rows_name_file_and_line(smol_tokenizer, tmp_path, lines, expected):
    with pytest.raises(DataError, match=expected):
        prepared(tmp_path, smol_tokenizer, lines)


@pytest.mark.parametrize("label", ['"yes"', "1", "null"])
def test_a_kto_label_must_be_a_boolean(smol_tokenizer, tmp_path, label):
    lines = [json.dumps(kto("q", "a", True)), f'{{"prompt": "q", "completion": "b", "label": {label}}}']
    with pytest.raises(DataError, match=r"train\.jsonl:2: 'label' is .*; a KTO label is true \(a desirable completion\) "
                                        r"or false \(an undesirable one\), in CSV also 1 or 0"):
        prepared(tmp_path, smol_tokenizer, lines, unpaired=True)


def test_a_bad_csv_label_names_its_line(smol_tokenizer, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,completion,label\nq,a,true\nq,b,maybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:3: 'label' is 'maybe'"):
        prepare_preference(TrainConfig(model_id="m", train_path=str(path), valid_split=0), smol_tokenizer, 8192,
                           unpaired=True)


def test_a_bad_row_in_valid_path_names_that_file(smol_tokenizer, tmp_path):
    valid = write_jsonl(tmp_path / "valid.jsonl", [GOOD, GOOD, json.dumps(pair("q", "a", ""))])
    with pytest.raises(DataError, match=r"valid\.jsonl:3: 'rejected' is an empty answer"):
        prepared(tmp_path, smol_tokenizer, [GOOD], valid_path=str(valid))


def test_long_rows_are_refused_with_their_token_count(smol_tokenizer, tmp_path):
    rows = [pair("short", "a", "b"), pair("short", "a", "b " * 100)]
    with pytest.raises(DataError, match=r"train\.jsonl:2: row is (\d+) tokens with its rejected answer, longer than "
                                        r"context_length 64; raise context_length or set truncation: truncate") as err:
        prepared(tmp_path, smol_tokenizer, rows, context_length=64, truncation="refuse")
    [item] = prepared(tmp_path, smol_tokenizer, rows[1:], "one.jsonl").train
    assert f" is {len(item.rejected)} tokens " in str(err.value)


# ------------------------------------------------------------------------------------------------------------
# Context length, truncation, statistics and the SFT-shaped rows
# ------------------------------------------------------------------------------------------------------------


def test_long_pairs_are_cut_at_the_end_and_pairs_without_targets_dropped(smol_tokenizer, tmp_path):
    rows = ([pair("short", "yes", "no")] * 3 + [pair("short", "yes", "long answer " * 60)] * 2
            + [pair("word " * 100, "yes", "no")])  # a prompt past 64 tokens: no answer token left
    data = prepared(tmp_path, smol_tokenizer, rows, context_length=64)
    assert len(data.train) == 5 and all(len(e) <= 64 for item in data.train for e in (item.chosen, item.rejected))
    long = data.train[3]
    assert len(long.rejected) == 64 and long.rejected.target_mask[-1]  # cut at the end: the answer's start is kept
    assert data.stats["train"].truncated == 3 and data.stats["train"].dropped == 1 and data.stats["train"].rows == 5
    assert data.stats["rejected"].truncated == 3 and data.stats["chosen"].truncated == 1
    assert data.stats["prompt"].truncated == 1 and data.stats["prompt"].max > 64
    assert "train: 1 row(s) dropped: no target tokens left within context_length 64" in data.notes
    assert "train: 3 row(s) truncated to context_length 64" in data.notes


def test_context_length_defaults_to_the_longest_sequence(smol_tokenizer, tmp_path):
    data = prepared(tmp_path, smol_tokenizer, [pair("a", "b", "a much longer rejected answer"), pair("c", "d", "e")])
    assert data.context_length == max(len(item.rejected) for item in data.train)
    assert data.stats["chosen"].max < data.stats["rejected"].max == data.context_length


def test_stats_valid_rows_system_prompt_and_answer_schema_follow_sft(smol_tokenizer, tmp_path):
    rows = [pair(f"meeting {i}", json.dumps({"day": f"d{i}"}), json.dumps({"day": f"d{i}"}) + " and more")
            for i in range(10)]
    data = prepared(tmp_path, smol_tokenizer, rows, valid_split=0.2, seed=1)
    assert data.shape == "chat" and len(data.train) == 8 and len(data.valid) == 2
    assert set(data.stats) == {"train", "valid", "prompt", "chosen", "rejected"}
    assert data.stats["chosen"].rows == 8 and data.stats["prompt"].max == data.train[0].prompt_tokens
    valid_lines = [int(item.line.rsplit(":", 1)[1]) for item in data.valid]
    assert data.valid_rows == [{"messages": [*rows[n - 1]["prompt"], assistant(rows[n - 1]["chosen"])]}
                               for n in valid_lines]
    assert data.system_prompt == SYSTEM["content"]
    assert data.answer_schema["required"] == ["day"]  # from the chosen answers: the rejected ones are not JSON


def test_plain_text_valid_rows_are_prompt_completion(smol_tokenizer, tmp_path):
    data = prepared(tmp_path, smol_tokenizer, [{"prompt": "Q:", "chosen": " A", "rejected": " B"}])
    assert data.valid_rows == [{"prompt": "Q:", "completion": " A"}] and data.system_prompt is None


# ------------------------------------------------------------------------------------------------------------
# KTO: KL rows and unpairing
# ------------------------------------------------------------------------------------------------------------


def test_kto_kl_rows_take_the_next_rows_completion_wrapping_around(smol_tokenizer, tmp_path):
    rows = [kto([user(f"question {i}")], f"answer {i}", i % 2 == 0) for i in range(4)]
    data = prepared(tmp_path, smol_tokenizer, rows, unpaired=True)
    assert [e.desirable for e in data.train] == [True, False, True, False]
    for i, item in enumerate(data.train):
        assert targets(item.completion, smol_tokenizer) == f"answer {i}<|im_end|>"
        assert targets(item.kl, smol_tokenizer) == f"answer {(i + 1) % 4}<|im_end|>"
        prompt = item.kl.input_ids[: item.prompt_tokens]
        assert np.array_equal(prompt, item.completion.input_ids[: item.prompt_tokens])
        assert f"question {i}" in smol_tokenizer.decode(prompt)
    assert set(data.stats) == {"train", "valid", "prompt", "completion"}
    assert data.valid_rows == [{"messages": [user(f"question {i}"), assistant(f"answer {i}")]} for i in (0, 2)]


def test_kto_kl_rotation_is_over_the_training_rows_after_the_split(smol_tokenizer, tmp_path):
    rows = [kto(f"question {i}:", f" answer {i}", True) for i in range(10)]
    data = prepared(tmp_path, smol_tokenizer, rows, unpaired=True, valid_split=0.3, seed=5)
    for split in (data.train, data.valid):
        completions = [targets(item.completion, smol_tokenizer) for item in split]
        assert [targets(item.kl, smol_tokenizer) for item in split] == completions[1:] + completions[:1]


def test_unpairing_turns_each_pair_into_a_desirable_and_an_undesirable_row(smol_tokenizer, tmp_path):
    rows = [pair(f"question {i}", f"good {i}", f"bad {i}") for i in range(3)]
    data = prepared(tmp_path, smol_tokenizer, rows, unpaired=True)
    assert data.shape == "chat"
    assert [(e.desirable, targets(e.completion, smol_tokenizer)) for e in data.train] == [
        (True, "good 0<|im_end|>"), (True, "good 1<|im_end|>"), (True, "good 2<|im_end|>"),
        (False, "bad 0<|im_end|>"), (False, "bad 1<|im_end|>"), (False, "bad 2<|im_end|>")]
    for item in data.train:  # the KL row never pairs a prompt with its own answers
        own = int(item.line.rsplit(":", 1)[1]) - 1
        assert targets(item.kl, smol_tokenizer) not in (f"good {own}<|im_end|>", f"bad {own}<|im_end|>")
    assert [e.line for e in data.train[:3]] == [e.line for e in data.train[3:]]


# ------------------------------------------------------------------------------------------------------------
# Collation
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def pairs(smol_tokenizer, tmp_path) -> list[PreferencePair]:
    rows = [pair("a", "yes", "no, and a longer answer"), pair("a much longer question here", "sure", "nope")]
    return prepared(tmp_path, smol_tokenizer, rows).train


def test_padded_collation_puts_every_chosen_row_then_every_rejected_row(pairs, smol_tokenizer):
    batch = collate_preference(pairs, smol_tokenizer.pad_token_id, padding="longest", context_length=512,
                               multiple_of=8)
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert batch["input_ids"].shape == (4, -(-max(len(r) for r in rows) // 8) * 8)
    for index, row in enumerate(rows):
        assert np.array_equal(batch["input_ids"][index, : len(row)].numpy(), row.input_ids)
        assert np.array_equal(batch["labels"][index, : len(row)].numpy() != IGNORE_INDEX, row.target_mask)
        assert batch["attention_mask"][index].sum() == len(row)
    assert "ref_chosen_logps" not in batch and "ref_rejected_logps" not in batch


def test_padding_free_collation_lays_chosen_then_rejected_end_to_end(pairs, smol_tokenizer):
    batch = collate_preference(pairs, smol_tokenizer.pad_token_id, padding="free", context_length=512,
                               multiple_of=None)
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert batch["row_lengths"].tolist() == [len(r) for r in rows]
    assert np.array_equal(batch["input_ids"][0].numpy(), np.concatenate([r.input_ids for r in rows]))
    assert batch["position_ids"][0, len(rows[0])] == 0


def test_reference_log_probs_ride_along_only_when_every_pair_has_them(pairs, smol_tokenizer):
    import torch

    def collate(examples):
        return collate_preference(examples, smol_tokenizer.pad_token_id, padding="longest", context_length=512,
                                  multiple_of=None)

    filled = [replace(p, ref_chosen=-1.5 - i, ref_rejected=-2.5 - i) for i, p in enumerate(pairs)]
    batch = collate(filled)
    assert batch["ref_chosen_logps"].dtype == batch["ref_rejected_logps"].dtype == torch.float32
    assert batch["ref_chosen_logps"].tolist() == [-1.5, -2.5] and batch["ref_rejected_logps"].tolist() == [-2.5, -3.5]
    assert "ref_chosen_logps" not in collate([filled[0], replace(filled[1], ref_rejected=math.nan)])


def test_kto_collation_carries_desirable_always_and_references_when_filled(smol_tokenizer, tmp_path):
    import torch

    rows = [kto("q1:", " yes", True), kto("a longer question 2:", " no", False)]
    examples: list[UnpairedExample] = prepared(tmp_path, smol_tokenizer, rows, unpaired=True).train
    batch = collate_preference(examples, smol_tokenizer.pad_token_id, padding="longest", context_length=512,
                               multiple_of=None)
    assert batch["input_ids"].shape[0] == 4 and batch["desirable"].tolist() == [True, False]
    assert batch["desirable"].dtype == torch.bool and "ref_logps" not in batch
    assert np.array_equal(batch["input_ids"][2, : len(examples[0].kl)].numpy(), examples[0].kl.input_ids)
    filled = [replace(e, ref=-1.0, ref_kl=-2.0) for e in examples]
    batch = collate_preference(filled, smol_tokenizer.pad_token_id, padding="free", context_length=512,
                               multiple_of=None)
    assert batch["ref_logps"].dtype == batch["ref_kl_logps"].dtype == torch.float32
    assert batch["ref_kl_logps"].shape == (2,) and batch["desirable"].tolist() == [True, False]
    assert batch["row_lengths"].tolist() == [len(e.completion) for e in examples] + [len(e.kl) for e in examples]
