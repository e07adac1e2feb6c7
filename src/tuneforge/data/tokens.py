"""Token classification data: tagged sentences, tag schemes, subword labels, long-sentence windows, entity scores.

Files: JSONL `{"tokens": [...], "tags": [...]}`, JSONL `{"text": ..., "entities": [{"start", "end", "label"}]}`
(split into words here, never across an entity edge), or CoNLL text (`token ... TAG` lines, blank between sentences).
Tags are IOB2 or IOBES, and entities are read as seqeval's strict mode reads them, so scores match the field's. A
badly formed sequence (`I-X` after `O`) is repaired and counted, or refused when `strict`: training never sees tags
that strict scoring would silently drop.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from tuneforge.data.records import Record, check_data_file, decode_utf8, read_records
from tuneforge.errors import DataError, where

SCHEMES = {"IOB2": ("B", "I"), "IOBES": ("B", "I", "E", "S")}
JSONL_SUFFIXES = (".jsonl", ".json")
CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio", ".tsv")
IGNORE = -100  # label id the loss skips: special tokens and (unless label_all_tokens) continuation subwords
WORD = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits/_, or any other single non-space character
TAG = re.compile(r"([A-Z])-(\S+)|O")
ENTITY_TYPE = re.compile(r"\S+")  # an entity label becomes the type in B-<type>, so it cannot hold spaces
# a sentence as read: words, tags, each word's line, and for span rows the text and each word's offsets in it
Draft = tuple[list[str], list[str], list[int], str | None, list[tuple[int, int]] | None]


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str]  # one per word, in the scheme the file was read with
    source: str  # file:line where the sentence starts
    text: str | None = None  # the original text, for span-annotated rows
    word_spans: list[tuple[int, int]] | None = None  # each word's [start, end) character offsets in `text`


def scheme_prefixes(scheme: str) -> tuple[str, ...]:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; use one of: {', '.join(SCHEMES)}")
    return SCHEMES[scheme]


def check_tag(tag: Any, scheme: str) -> tuple[str, str]:
    """(prefix, type) of a valid tag, ('O', '') for O; a ValueError naming the scheme's allowed forms otherwise."""
    prefixes = scheme_prefixes(scheme)
    match = TAG.fullmatch(tag) if isinstance(tag, str) else None
    if match is None or (match.group(1) is not None and match.group(1) not in prefixes):
        forms = ", ".join(["O", *(f"{prefix}-<type>" for prefix in prefixes)])
        raise ValueError(f"tag {tag!r} is not an {scheme} tag (allowed: {forms})")
    return (match.group(1), match.group(2)) if match.group(1) else ("O", "")


def repair_tags(tags: Sequence[str], scheme: str) -> list[str]:
    """The nearest well-formed sequence: an entity opens with B- (or S-) and, in IOBES, closes with E- (or is S-).

    A continuation (I-/E-) that continues nothing becomes an opening (B-/S-). In IOBES an entity left open (B-/I-
    not followed by I-/E- of its type) is closed where it stops (S-/E-), which also converts IOB2 data to IOBES.
    """
    parsed = [list(check_tag(tag, scheme)) for tag in tags]
    for i, (prefix, kind) in enumerate(parsed):
        before = parsed[i - 1] if i else ["O", ""]
        if prefix in ("I", "E") and not (before[0] in ("B", "I") and before[1] == kind):
            parsed[i][0] = {"I": "B", "E": "S"}[prefix]
    if scheme == "IOBES":
        for i, (prefix, kind) in enumerate(parsed):
            after = parsed[i + 1] if i + 1 < len(parsed) else ["O", ""]
            if prefix in ("B", "I") and not (after[0] in ("I", "E") and after[1] == kind):
                parsed[i][0] = {"B": "S", "I": "E"}[prefix]
    return [f"{prefix}-{kind}" if kind else "O" for prefix, kind in parsed]


def tags_to_entities(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """(type, start word, end word exclusive) of each entity, as seqeval's strict mode finds them.

    IOB2: B-X then any run of I-X. IOBES: S-X alone, or B-X, I-X..., E-X; an unclosed B-X counts for nothing.
    Stray I-/E- tags never start an entity.
    """
    parsed = [check_tag(tag, scheme) for tag in tags]
    entities, i = [], 0
    while i < len(parsed):
        prefix, kind = parsed[i]
        if prefix == "S":
            entities.append((kind, i, i + 1))
        if prefix != "B":
            i += 1
            continue
        end = i + 1
        while end < len(parsed) and parsed[end] == ("I", kind):
            end += 1
        if scheme == "IOB2":
            entities.append((kind, i, end))
        elif end < len(parsed) and parsed[end] == ("E", kind):
            end += 1
            entities.append((kind, i, end))
        i = end
    return entities


def spans_to_tags(n_words: int, entities: Sequence[tuple[str, int, int]], scheme: str) -> list[str]:
    """Tags for `n_words` words from (type, start word, end word exclusive) entities, which must not overlap."""
    scheme_prefixes(scheme)
    tags = ["O"] * n_words
    for kind, start, end in entities:
        if not 0 <= start < end <= n_words or any(tag != "O" for tag in tags[start:end]):
            raise ValueError(f"entity {(kind, start, end)} is outside {n_words} words or overlaps another")
        tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        if scheme == "IOBES":
            tags[end - 1] = f"S-{kind}" if end - start == 1 else f"E-{kind}"
    return tags


def label_set(sentences: Sequence[TaggedSentence], scheme: str | None = None) -> list[str]:
    """The labels learned from training data: "O" first, the rest sorted.

    With `scheme`, every entity type seen gets all of its scheme's forms, so that continuation subwords
    (`align_labels(label_all_tokens=True)`) and validation tags such as I-X of a type only seen as B-X have an id.
    """
    seen = {tag for sentence in sentences for tag in sentence.tags} - {"O"}
    if scheme is not None:
        kinds = {check_tag(tag, scheme)[1] for tag in seen}
        seen = {f"{prefix}-{kind}" for kind in kinds for prefix in scheme_prefixes(scheme)}
    return ["O", *sorted(seen)]


def read_tagged(path: str | Path, *, tokens_field: str = "tokens", tags_field: str = "tags", scheme: str = "IOB2",
                strict: bool = False) -> tuple[list[TaggedSentence], int]:
    """Tagged sentences of a JSONL or CoNLL file and how many tags were repaired (see `repair_tags`)."""
    path = Path(path)
    scheme_prefixes(scheme)
    check_data_file(path)
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        drafts = read_conll(path)
    elif suffix in JSONL_SUFFIXES:
        drafts = [jsonl_draft(record, path, tokens_field, tags_field, scheme) for record in read_records(path)]
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}' for token classification; use .jsonl "
                        f"(tokens+tags or text+entities rows) or CoNLL text ({', '.join(CONLL_SUFFIXES)})")
    sentences, repaired = [], 0
    for words, tags, lines, text, word_spans in drafts:
        fixed, count = checked_tags(path, words, tags, lines, scheme, strict)
        sentences.append(TaggedSentence(words, fixed, where(path, lines[0]), text, word_spans))
        repaired += count
    return sentences, repaired


def read_conll(path: Path) -> list[Draft]:
    """Sentences of `token ... TAG` lines (tag last); each word keeps its own line so errors point at it."""
    drafts: list[Draft] = []
    words, tags, lines = [], [], []  # the sentence being read
    columns, first_line = 0, 0
    for number, line in enumerate(decode_utf8(path.read_bytes(), path).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("-DOCSTART-"):  # a document marker also ends a sentence
            if words:
                drafts.append((words, tags, lines, None, None))
                words, tags, lines = [], [], []
            continue
        if not columns:
            columns, first_line = len(fields), number
            if columns < 2:
                raise DataError(f"{where(path, number)}: 1 column ({line.strip()!r}); a token line needs "
                                "'token TAG', whitespace-separated, with a blank line between sentences")
        if len(fields) != columns:
            raise DataError(f"{where(path, number)}: {len(fields)} columns but the first token line (line "
                            f"{first_line}) has {columns}; every token line needs the same columns, the tag last")
        words.append(fields[0])
        tags.append(fields[-1])
        lines.append(number)
    if words:
        drafts.append((words, tags, lines, None, None))
    if not drafts:
        raise DataError(f"{path}: no sentences; write one 'token TAG' per line, a blank line between sentences")
    return drafts


def jsonl_draft(record: Record, path: Path, tokens_field: str, tags_field: str, scheme: str) -> Draft:
    at, row = where(path, record.line), record.data
    if tokens_field in row:
        words, tags = tokens_draft(row, at, tokens_field, tags_field)
        return words, tags, [record.line] * len(words), None, None
    if "text" in row:
        return spans_draft(row, at, record.line, scheme)
    raise DataError(f"{at}: no '{tokens_field}' or 'text' field (fields found: {', '.join(row) or 'none'}); give "
                    f"'{tokens_field}'+'{tags_field}' or 'text'+'entities', or set tokens_field / tags_field")


def tokens_draft(row: dict[str, Any], at: str, tokens_field: str, tags_field: str) -> tuple[list[str], list[str]]:
    if tags_field not in row:
        raise DataError(f"{at}: missing field '{tags_field}' (fields found: {', '.join(row)}); "
                        "every row needs one tag per token, or set tags_field")
    words, tags = row[tokens_field], row[tags_field]
    for name, value in ((tokens_field, words), (tags_field, tags)):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise DataError(f"{at}: '{name}' must be a list of strings, got {json.dumps(value)[:60]}")
    if not words:
        raise DataError(f"{at}: empty sentence ('{tokens_field}' is an empty list); give it tokens or drop the row")
    if len(words) != len(tags):
        raise DataError(f"{at}: {len(words)} tokens but {len(tags)} tags; give exactly one tag per token")
    blank = next((i for i, word in enumerate(words) if not word.strip()), None)
    if blank is not None:
        raise DataError(f"{at}: token {blank + 1} is empty or only spaces; remove it and its tag")
    return words, tags


def split_words(text: str, cuts: Sequence[int] = ()) -> list[tuple[int, int]]:
    """[start, end) offsets of the words of `text` (a run of letters/digits, or one other character); no word
    crosses a position in `cuts`. Training's span rows and prediction split text the same way."""
    bounds = sorted({0, len(text), *cuts})
    return [match.span() for a, b in pairwise(bounds) for match in WORD.finditer(text, a, b)]


def spans_draft(row: dict[str, Any], at: str, line: int, scheme: str) -> Draft:
    """Words of `text` (never crossing an entity edge), with their offsets, and the entities as tags."""
    text, entities = row["text"], row.get("entities")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{at}: empty sentence ('text' is empty or not a string); give it text or drop the row")
    if not isinstance(entities, list):
        raise DataError(f"{at}: 'entities' must be a list of {{\"start\", \"end\", \"label\"}} objects "
                        "([] when the text has none)")
    spans = []
    for number, entity in enumerate(entities, start=1):
        start, end, label = (entity.get(key) if isinstance(entity, dict) else None for key in ("start", "end", "label"))
        if not (all(type(offset) is int for offset in (start, end)) and isinstance(label, str)
                and ENTITY_TYPE.fullmatch(label)):
            raise DataError(f"{at}: entity {number} must be {{\"start\": int, \"end\": int, \"label\": text without "
                            f"spaces}}, got {json.dumps(entity)[:80]}")
        if not 0 <= start < end <= len(text):
            raise DataError(f"{at}: entity {number} ({label} {start}-{end}) is empty or outside the text; "
                            f"offsets need 0 <= start < end <= {len(text)} (the text's length)")
        spans.append((start, end, label, number))
    spans.sort()
    for (start1, end1, label1, n1), (start2, end2, label2, n2) in pairwise(spans):
        if start2 < end1:
            raise DataError(f"{at}: entities {n1} ({label1} {start1}-{end1}) and {n2} ({label2} {start2}-{end2}) "
                            "overlap; tags give each word one entity, so keep one of them")
    word_spans = split_words(text, [offset for span in spans for offset in span[:2]])
    starts = [start for start, _ in word_spans]
    ranges = []
    for start, end, label, number in spans:
        first, last = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
        if first == last:
            raise DataError(f"{at}: entity {number} ({label} {start}-{end}, {text[start:end]!r}) covers no word, "
                            "only spaces; fix its offsets")
        ranges.append((label, first, last))
    words = [text[start:end] for start, end in word_spans]
    return words, spans_to_tags(len(words), ranges, scheme), [line] * len(words), text, word_spans


def checked_tags(path: Path, words: list[str], tags: list[str], lines: list[int], scheme: str,
                 strict: bool) -> tuple[list[str], int]:
    """Valid, well-formed tags, and how many were repaired (strict: none may need it)."""
    for tag, line in zip(tags, lines):
        try:
            check_tag(tag, scheme)
        except ValueError as exc:
            raise DataError(f"{where(path, line)}: {exc}; fix the tag or read the file with its own scheme") from None
    fixed = repair_tags(tags, scheme)
    changed = [i for i, (old, new) in enumerate(zip(tags, fixed)) if old != new]
    if changed and strict:
        i = changed[0]
        opening = tags[i][0] in ("I", "E") and fixed[i][0] in ("B", "S")
        context = (f"continues no entity (previous tag: {tags[i - 1] if i else 'none'!r})" if opening else
                   f"leaves its entity unclosed (next tag: {tags[i + 1] if i + 1 < len(tags) else 'none'!r})")
        raise DataError(f"{where(path, lines[i])}: tag {tags[i]!r} on word {i + 1} ({words[i]!r}) {context} in "
                        f"{scheme}; write {fixed[i]!r}, or turn strict off to repair such tags")
    return fixed, len(changed)


def continuation_tag(tag: str) -> str:
    """The tag of a word's second and later subwords: still inside the same entity, so I-<type> (O stays O).

    In IOBES this maps S-X and E-X to I-X too: "starts here" or "ends here" is said once, by the first subword,
    which is the one a word's prediction is read from.
    """
    return tag if tag == "O" else f"I-{tag.split('-', 1)[1]}"


def align_labels(word_ids: Sequence[int | None], word_label_ids: Sequence[int], *, label_all_tokens: bool,
                 labels: Sequence[str]) -> list[int]:
    """Per-token label ids from per-word ones, for a fast tokenizer's `encoding.word_ids()`.

    Special tokens get IGNORE; a word's first subword gets the word's label; later subwords get IGNORE, or with
    `label_all_tokens` the word's `continuation_tag`. A word the tokenizer gave no token gets no label.
    """
    index = {label: i for i, label in enumerate(labels)}
    aligned: list[int] = []
    previous = None
    for word in word_ids:
        if word is None:
            aligned.append(IGNORE)
        elif word != previous:
            aligned.append(word_label_ids[word])
        elif not label_all_tokens:
            aligned.append(IGNORE)
        else:
            tag = continuation_tag(labels[word_label_ids[word]])
            if tag not in index:
                raise ValueError(f"label {tag!r} (continuation subwords of {labels[word_label_ids[word]]!r} words) "
                                 "is not in labels; build them with label_set(sentences, scheme=...)")
            aligned.append(index[tag])
        previous = word
    return aligned


def word_windows(word_token_counts: Sequence[int], max_tokens: int, overlap_tokens: int, *,
                 words: Sequence[str] | None = None, source: str | None = None) -> list[tuple[int, int]]:
    """[start_word, end_word) windows of at most `max_tokens` subword tokens, cut on word boundaries.

    Consecutive windows share the longest run of whole words that holds at most `overlap_tokens` tokens and still
    leaves room for the next window to reach a new word. A word longer than a window is a DataError (`words` and
    `source` name it): cutting inside a word would leave it half-labelled.
    """
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(f"need 0 <= overlap_tokens ({overlap_tokens}) < max_tokens ({max_tokens})")
    for i, count in enumerate(word_token_counts):
        if count > max_tokens:
            named = f" ({words[i]!r})" if words is not None else ""
            raise DataError(f"{source + ': ' if source else ''}word {i + 1}{named} is {count} subword tokens, more "
                            f"than the {max_tokens} a window holds; raise the context length or split that word")
    windows: list[tuple[int, int]] = []
    start, n = 0, len(word_token_counts)
    while start < n:
        end, total = start, 0
        while end < n and total + word_token_counts[end] <= max_tokens:
            total += word_token_counts[end]
            end += 1
        windows.append((start, end))
        if end == n:
            break
        shared, room = end, min(overlap_tokens, max_tokens - word_token_counts[end])
        while shared > start + 1 and word_token_counts[shared - 1] <= room:
            room -= word_token_counts[shared - 1]
            shared -= 1
        start = shared
    return windows


def merge_windows(windows: Sequence[tuple[int, int]], per_window_predictions: Sequence[Sequence[Any]]) -> list[Any]:
    """One prediction per word: from the window where the word sits farthest from both edges (most context on
    its shorter side, counted in words); ties go to the earlier window."""
    n_words = max((end for _, end in windows), default=0)
    best: list[tuple[int, Any] | None] = [None] * n_words
    for (start, end), predictions in zip(windows, per_window_predictions, strict=True):
        if len(predictions) != end - start:
            raise ValueError(f"window {start}-{end} has {len(predictions)} predictions for {end - start} words")
        for offset, prediction in enumerate(predictions):
            context, word = min(offset, end - start - 1 - offset), start + offset
            if best[word] is None or context > best[word][0]:
                best[word] = (context, prediction)
    if None in best:
        raise ValueError(f"no window covers word {best.index(None)}")
    return [item[1] for item in best]


def prf(correct: int, predicted: int, actual: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / actual if actual else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def entity_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], scheme: str) -> dict:
    """Micro precision/recall/f1 over entities (strict: type and both edges must match) and the same per type,
    with `support` (true entities); equal to seqeval's strict-mode numbers, 0 where a ratio is undefined."""
    check_same_shape(true_tags, pred_tags)
    actual, predicted, correct = Counter(), Counter(), Counter()
    for true, pred in zip(true_tags, pred_tags):
        gold, guess = set(tags_to_entities(true, scheme)), set(tags_to_entities(pred, scheme))
        actual.update(kind for kind, _, _ in gold)
        predicted.update(kind for kind, _, _ in guess)
        correct.update(kind for kind, _, _ in gold & guess)
    precision, recall, f1 = prf(sum(correct.values()), sum(predicted.values()), sum(actual.values()))
    per_type = {}
    for kind in sorted(actual | predicted):
        p, r, f = prf(correct[kind], predicted[kind], actual[kind])
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "support": actual[kind]}
    return {"precision": precision, "recall": recall, "f1": f1, "per_type": per_type}


def token_accuracy(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> float:
    """Share of words whose predicted tag equals the true one (0.0 when there are none)."""
    check_same_shape(true_tags, pred_tags)
    pairs = [(t, p) for true, pred in zip(true_tags, pred_tags) for t, p in zip(true, pred)]
    return sum(t == p for t, p in pairs) / len(pairs) if pairs else 0.0


def check_same_shape(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> None:
    if len(true_tags) != len(pred_tags) or any(len(t) != len(p) for t, p in zip(true_tags, pred_tags)):
        raise ValueError("true and predicted tags differ in the number of sentences or of words in a sentence")
