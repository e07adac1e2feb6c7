"""Token classification rows ready for training: tagged sentences (tuneforge.data.tokens) tokenized word by word,
labels on subwords, and sentences longer than the context cut into overlapping windows — never truncated.

A validation sentence cut into windows is scored once per word: each word keeps its label only in the window where
it has the most context (the window prediction keeps), and is ignored (-100) in the others.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge.data.tokens import IGNORE, TaggedSentence, align_labels, label_set, merge_windows, read_tagged, \
    tags_to_entities, word_windows
from tuneforge.errors import DataError

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig


@dataclass
class TokenExample:
    input_ids: np.ndarray  # int32, with the tokenizer's special tokens
    labels: np.ndarray  # int64 label id per token; IGNORE where the loss and the scores skip it
    source: str  # file:line of the sentence

    def __len__(self) -> int:
        return len(self.input_ids)


def word_token_counts(tokenizer: Any, words: list[str]) -> list[int]:
    """Subword tokens per word, without special tokens."""
    word_ids = tokenizer(words, is_split_into_words=True, add_special_tokens=False).word_ids()
    counts = [0] * len(words)
    for word in word_ids:
        if word is not None:
            counts[word] += 1
    return counts


def sentence_windows(sentence: TaggedSentence, tokenizer: Any, context_length: int, overlap: int) -> list[tuple[int, int]]:
    room = context_length - tokenizer.num_special_tokens_to_add(pair=False)
    counts = word_token_counts(tokenizer, sentence.words)
    if sum(counts) <= room:
        return [(0, len(sentence.words))]
    return word_windows(counts, room, min(overlap, room // 2), words=sentence.words, source=sentence.source)


def encode_sentence(sentence: TaggedSentence, index: dict[str, int], tokenizer: Any, context_length: int, *,
                    overlap: int, label_all_tokens: bool, score_once: bool) -> list[TokenExample]:
    """One example per window. `score_once`: each word is labelled in one window only (validation, which also
    labels first subwords only, whatever label_all_tokens says: scores are per word)."""
    labels = list(index)
    windows = sentence_windows(sentence, tokenizer, context_length, overlap)
    owner = merge_windows(windows, [[n] * (end - start) for n, (start, end) in enumerate(windows)])
    examples = []
    for n, (start, end) in enumerate(windows):
        encoding = tokenizer(sentence.words[start:end], is_split_into_words=True, add_special_tokens=True)
        word_labels = [index[tag] if not score_once or owner[start + i] == n else IGNORE
                       for i, tag in enumerate(sentence.tags[start:end])]
        token_labels = align_labels(encoding.word_ids(), word_labels, label_all_tokens=label_all_tokens,
                                    labels=labels)
        examples.append(TokenExample(np.asarray(encoding["input_ids"], dtype=np.int32),
                                     np.asarray(token_labels, dtype=np.int64), sentence.source))
    return examples


def read_splits(config: TrainConfig) -> tuple[list[TaggedSentence], list[TaggedSentence], int]:
    """Training and validation sentences (valid_path, or a seeded share of train) and the tags repaired."""
    options = {"tokens_field": config.tokens_field, "tags_field": config.tags_field, "scheme": config.tag_scheme,
               "strict": config.strict_tags}
    train, repaired = read_tagged(config.train_path, **options)
    if config.valid_path:
        valid, more = read_tagged(config.valid_path, **options)
        return train, valid, repaired + more
    if config.valid_split == 0:
        return train, [], repaired
    if len(train) < 2:
        raise DataError(f"{config.train_path}: only 1 sentence; a validation split needs at least 2 (or give "
                        "valid_path)")
    order = list(range(len(train)))
    random.Random(config.seed).shuffle(order)
    held_out = set(order[: min(len(train) - 1, max(1, round(len(train) * config.valid_split)))])
    return ([s for i, s in enumerate(train) if i not in held_out], [s for i, s in enumerate(train) if i in held_out],
            repaired)


def refuse_unknown_types(valid: list[TaggedSentence], labels: list[str], path: str) -> None:
    known = set(labels)
    for sentence in valid:
        unknown = sorted({tag for tag in sentence.tags if tag not in known})
        if unknown:
            raise DataError(f"{sentence.source}: tag(s) {', '.join(unknown)} never appear in the training data "
                            f"({path}); add training sentences with them or remove them from validation")


def prepare_token_classification(config: TrainConfig, tokenizer: Any, max_length: int | None) -> Any:
    from tuneforge.data.prepare import VALID_ROWS_KEPT, LengthStats, PreparedData, choose_context_length

    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{config.model_id}: token classification needs a fast (Rust) tokenizer to map subwords "
                        "to words; this model has none")
    train, valid, repaired = read_splits(config)
    labels = label_set(train, config.tag_scheme)
    if len(labels) < 2:
        raise DataError(f"{config.train_path}: no entity in the training data (every tag is O); tag some words")
    refuse_unknown_types(valid, labels, config.train_path)
    index = {label: i for i, label in enumerate(labels)}
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    lengths = {name: [sum(word_token_counts(tokenizer, s.words)) + specials for s in sentences]
               for name, sentences in (("train", train), ("valid", valid))}
    context_length = choose_context_length(config.context_length, lengths["train"] + lengths["valid"], max_length)
    long_ones = [s for s, n in zip(train + valid, lengths["train"] + lengths["valid"], strict=True) if n > context_length]
    if long_ones and config.truncation == "refuse":
        raise DataError(f"{long_ones[0].source}: sentence is longer than context_length {context_length} "
                        f"({len(long_ones)} such); raise context_length, or set truncation: truncate to cut long "
                        "sentences into overlapping windows")
    splits, stats = {}, {}
    for name, sentences in (("train", train), ("valid", valid)):
        examples = [example for sentence in sentences
                    for example in encode_sentence(sentence, index, tokenizer, context_length,
                                                   overlap=config.window_overlap, score_once=name == "valid",
                                                   label_all_tokens=config.label_all_tokens and name == "train")]
        windowed = sum(n > context_length for n in lengths[name])
        splits[name] = examples
        targets = sum(int((example.labels != IGNORE).sum()) for example in examples)
        stats[name] = LengthStats.of(lengths[name], targets, windowed)
    notes = [f"{len(long_ones)} sentence(s) longer than context_length {context_length}: cut into overlapping "
             "windows"] if long_ones else []
    if repaired:
        notes.append(f"{repaired} tag(s) repaired (an I- that continued no entity became B-); strict_tags: true "
                     "refuses them instead")
    counts = Counter(kind for s in train for kind, _, _ in tags_to_entities(s.tags, config.tag_scheme))
    notes.append("train entities per type: " + ", ".join(f"{kind} {counts[kind]}" for kind in sorted(counts)))
    rows = [{"tokens": s.words, "tags": s.tags, **({"text": s.text} if s.text else {})}
            for s in (valid or train)[:VALID_ROWS_KEPT]]
    return PreparedData("token_classification", splits["train"], splits["valid"], context_length, stats, labels,
                        notes, valid_rows=rows, long_rows="longer than context_length: cut into windows")


def label_token_counts(examples: list[TokenExample], num_labels: int) -> list[int]:
    """Labelled tokens per label id (class weights are computed from them)."""
    counts = np.zeros(num_labels, dtype=np.int64)
    for example in examples:
        kept = example.labels[example.labels != IGNORE]
        counts += np.bincount(kept, minlength=num_labels)
    return counts.tolist()
