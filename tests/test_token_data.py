"""Token classification data: readers, tag schemes, subword alignment, windows and entity scores (unit)."""

from __future__ import annotations

import json
import random
from itertools import pairwise
from pathlib import Path

import pytest

from tuneforge.data.tokens import (
    IGNORE,
    align_labels,
    entity_scores,
    label_set,
    merge_windows,
    read_tagged,
    repair_tags,
    spans_to_tags,
    tags_to_entities,
    token_accuracy,
    word_windows,
)
from tuneforge.errors import DataError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from tuneforge.models.sources import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))


# ---- readers -------------------------------------------------------------------------------------------------

def test_jsonl_token_rows_keep_words_tags_and_the_line_they_start_on(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"words": ["Angela", "Merkel", "visited", "Paris"], "labels": ["B-PER", "I-PER", "O", "B-LOC"]},
        "",
        {"words": ["Hello"], "labels": ["O"]},
    ])
    sentences, repaired = read_tagged(path, tokens_field="words", tags_field="labels")
    assert repaired == 0
    assert [s.words for s in sentences] == [["Angela", "Merkel", "visited", "Paris"], ["Hello"]]
    assert [s.tags for s in sentences] == [["B-PER", "I-PER", "O", "B-LOC"], ["O"]]
    assert [s.source for s in sentences] == [f"{path}:1", f"{path}:3"]
    assert sentences[0].text is None and sentences[0].word_spans is None


def test_span_rows_split_at_entity_edges_and_offsets_point_back_into_the_text(tmp_path):
    text = "Dr. Angela Merkel's iPhone15 left New York,USA."
    entities = [{"start": 4, "end": 17, "label": "PER"}, {"start": 20, "end": 26, "label": "PRODUCT"},
                {"start": 34, "end": 42, "label": "LOC"}, {"start": 43, "end": 46, "label": "LOC"}]
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": text, "entities": entities}])
    (iob2,), _ = read_tagged(path)
    assert iob2.words == ["Dr", ".", "Angela", "Merkel", "'", "s", "iPhone", "15", "left", "New", "York", ",", "USA",
                          "."]
    assert iob2.tags == ["O", "O", "B-PER", "I-PER", "O", "O", "B-PRODUCT", "O", "O", "B-LOC", "I-LOC", "O", "B-LOC",
                         "O"]
    assert iob2.text == text and iob2.source == f"{path}:1"
    assert [text[start:end] for start, end in iob2.word_spans] == iob2.words
    for kind, first, last in tags_to_entities(iob2.tags, "IOB2"):
        start, end = iob2.word_spans[first][0], iob2.word_spans[last - 1][1]
        assert {"start": start, "end": end, "label": kind} in entities
    (iobes,), _ = read_tagged(path, scheme="IOBES")
    assert iobes.tags == ["O", "O", "B-PER", "E-PER", "O", "O", "S-PRODUCT", "O", "O", "B-LOC", "E-LOC", "O",
                          "S-LOC", "O"]


def test_conll_reads_the_last_column_skips_docstart_and_sources_name_the_first_token(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
                    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n", encoding="utf-8")
    sentences, repaired = read_tagged(path)
    assert repaired == 0
    assert [(s.words, s.tags, s.source) for s in sentences] == [
        (["EU", "rejects"], ["B-ORG", "O"], f"{path}:3"),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"], f"{path}:7"),
    ]


GOOD = {"tokens": ["a", "b"], "tags": ["O", "O"]}


@pytest.mark.parametrize(("name", "rows", "message"), [
    ("data.jsonl", [GOOD, GOOD, {"tokens": ["a", "b"], "tags": ["O"]}], r"data\.jsonl:3: 2 tokens but 1 tags"),
    ("data.jsonl", [GOOD, {"tokens": ["a"], "tags": ["S-PER"]}],
     r"data\.jsonl:2: tag 'S-PER' is not an IOB2 tag \(allowed: O, B-<type>, I-<type>\)"),
    ("data.jsonl", [{"tokens": ["a"], "tags": ["B-"]}], r"data\.jsonl:1: tag 'B-' is not an IOB2 tag"),
    ("data.jsonl", [GOOD, {"tokens": [], "tags": []}], r"data\.jsonl:2: empty sentence"),
    ("data.jsonl", [GOOD, {"tokens": ["a", " "], "tags": ["O", "O"]}], r"data\.jsonl:2: token 2 is empty"),
    ("data.jsonl", [GOOD, {"tokens": "a b", "tags": ["O", "O"]}], r"data\.jsonl:2: 'tokens' must be a list"),
    ("data.jsonl", [GOOD, {"tokens": ["a"]}], r"data\.jsonl:2: missing field 'tags'"),
    ("data.jsonl", [GOOD, {"sentence": "a"}], r"data\.jsonl:2: no 'tokens' or 'text' field \(fields found: sentence\)"),
    ("data.jsonl", [GOOD, '{"tokens": ["a"], '], r"data\.jsonl:2: invalid JSON"),
    ("data.jsonl", [GOOD, GOOD, {"text": "  ", "entities": []}], r"data\.jsonl:3: empty sentence"),
    ("data.jsonl", [{"text": "Bob"}], r"data\.jsonl:1: 'entities' must be a list"),
    ("data.jsonl", [GOOD, GOOD, {"text": "New York City", "entities": [
        {"start": 0, "end": 8, "label": "LOC"}, {"start": 4, "end": 13, "label": "LOC"}]}],
     r"data\.jsonl:3: entities 1 \(LOC 0-8\) and 2 \(LOC 4-13\) overlap"),
    ("data.jsonl", [{"text": "Bob", "entities": [{"start": 0, "end": 9, "label": "PER"}]}],
     r"data\.jsonl:1: entity 1 \(PER 0-9\) is empty or outside the text; offsets need 0 <= start < end <= 3"),
    ("data.jsonl", [GOOD, {"text": "Bob", "entities": [{"start": 2, "end": 2, "label": "PER"}]}],
     r"data\.jsonl:2: entity 1 \(PER 2-2\) is empty or outside the text"),
    ("data.jsonl", [{"text": "Bob", "entities": [{"start": 0, "end": "3", "label": "PER"}]}],
     r"data\.jsonl:1: entity 1 must be"),
    ("data.jsonl", [{"text": "Bob  Ann", "entities": [{"start": 3, "end": 5, "label": "PER"}]}],
     r"data\.jsonl:1: entity 1 \(PER 3-5, '  '\) covers no word"),
    ("data.conll", ["EU NNP B-ORG", "rejects VBZ O", "", "Peter NNP B-PER", "Blackburn I-PER"],
     r"data\.conll:5: 2 columns but the first token line \(line 1\) has 3"),
    ("data.conll", ["-DOCSTART-", "", "EU NNP B-ORG", "rejects VBZ B-VERB", "", "x NNP Q"],
     r"data\.conll:6: tag 'Q' is not an IOB2 tag"),
    ("data.conll", ["", "", "-DOCSTART- O"], r"data\.conll: no sentences"),
    ("data.csv", ["tokens,tags", "a,O"], r"data\.csv: unsupported file type '\.csv'"),
])
def test_bad_input_is_one_data_error_naming_file_line_and_problem(tmp_path, name, rows, message):
    path = write_jsonl(tmp_path / name, rows) if name.endswith(".jsonl") else tmp_path / name
    if not name.endswith(".jsonl"):
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        read_tagged(path)
    assert "\n" not in str(caught.value)


def test_ill_formed_tags_are_repaired_and_counted_or_refused_when_strict(tmp_path):
    path = tmp_path / "data.conll"
    path.write_text("The O\nEU I-ORG\nsaid O\n\nPeter B-PER\nSmith I-LOC\nI-ORG I-LOC\n", encoding="utf-8")
    sentences, repaired = read_tagged(path)
    assert repaired == 2
    assert [s.tags for s in sentences] == [["O", "B-ORG", "O"], ["B-PER", "B-LOC", "I-LOC"]]
    with pytest.raises(DataError, match=r"data\.conll:2: tag 'I-ORG' on word 2 \('EU'\) continues no entity "
                                        r"\(previous tag: 'O'\) in IOB2; write 'B-ORG', or turn strict off"):
        read_tagged(path, strict=True)
    # IOBES also closes entities left open: here IOB2-style single-word B-X become S-X
    iobes = write_jsonl(tmp_path / "data.jsonl", [GOOD, {"tokens": ["Peter", "Smith", "in", "Paris"],
                                                         "tags": ["B-PER", "E-PER", "O", "B-LOC"]}])
    sentences, repaired = read_tagged(iobes, scheme="IOBES")
    assert repaired == 1 and sentences[1].tags == ["B-PER", "E-PER", "O", "S-LOC"]
    with pytest.raises(DataError, match=r"data\.jsonl:2: tag 'B-LOC' on word 4 \('Paris'\) leaves its entity "
                                        r"unclosed \(next tag: 'none'\) in IOBES; write 'S-LOC'"):
        read_tagged(iobes, scheme="IOBES", strict=True)


def test_repair_gives_sequences_strict_scoring_reads_in_full():
    rng = random.Random(1)
    for scheme, prefixes in (("IOB2", "BI"), ("IOBES", "BIES")):
        for _ in range(300):
            tags = [rng.choice(["O", *(f"{p}-{k}" for p in prefixes for k in "XY")]) for _ in range(rng.randint(1, 8))]
            fixed = repair_tags(tags, scheme)
            assert repair_tags(fixed, scheme) == fixed
            covered = sum(end - start for _, start, end in tags_to_entities(fixed, scheme))
            assert covered == sum(tag != "O" for tag in fixed)  # every entity tag belongs to a counted entity


def test_label_set_puts_o_first_then_sorted_and_can_complete_each_type():
    from tuneforge.data.tokens import TaggedSentence

    sentences = [TaggedSentence(["a", "b"], ["B-PER", "O"], "f:1"), TaggedSentence(["c"], ["B-LOC"], "f:2"),
                 TaggedSentence(["d", "e"], ["B-LOC", "I-LOC"], "f:3")]
    assert label_set(sentences) == ["O", "B-LOC", "B-PER", "I-LOC"]
    assert label_set(sentences, scheme="IOB2") == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    assert label_set(sentences[:1], scheme="IOBES") == ["O", "B-PER", "E-PER", "I-PER", "S-PER"]


# ---- schemes and scores ---------------------------------------------------------------------------------------

def random_tags(rng: random.Random, prefixes: str, length: int | None = None) -> list[str]:
    return [rng.choice(["O", "O", *(f"{p}-{k}" for p in prefixes for k in ("PER", "LOC"))])
            for _ in range(length or rng.randint(1, 10))]


@pytest.mark.parametrize(("scheme", "prefixes"), [("IOB2", "BI"), ("IOBES", "BIES")])
def test_entities_are_found_as_seqeval_strict_mode_finds_them(scheme, prefixes):
    import seqeval.scheme

    rng = random.Random(0)
    for _ in range(500):
        tags = random_tags(rng, prefixes)
        theirs = seqeval.scheme.Tokens(tags, getattr(seqeval.scheme, scheme)).entities
        assert tags_to_entities(tags, scheme) == [(e.tag, e.start, e.end) for e in theirs], tags


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES"])
def test_spans_to_tags_round_trips_through_tags_to_entities(scheme):
    entities = [("PER", 0, 2), ("LOC", 3, 4), ("ORG", 4, 7)]
    tags = spans_to_tags(8, entities, scheme)
    assert tags_to_entities(tags, scheme) == entities
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_tags(8, [("PER", 0, 3), ("LOC", 2, 4)], scheme)


CASES = {
    "IOB2": [
        ([["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"]],
         [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]),
        # I- after O (dropped by strict), type change inside an entity, a prediction-only type
        ([["O", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-MISC", "O", "B-PER", "I-PER"]],
         [["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-ORG"], ["I-MISC", "O", "B-PER", "I-PER"]]),
        ([["O", "O"], ["B-PER", "O"]], [["B-LOC", "O"], ["O", "O"]]),
        ([["O", "O"]], [["O", "O"]]),
    ],
    "IOBES": [
        ([["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-ORG", "E-ORG", "O"]],
         [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-ORG", "I-ORG", "O"]]),
        # unclosed B-, E- with no opening, type change before E-, S- inside an entity
        ([["B-PER", "E-PER", "O", "B-LOC", "E-LOC", "S-MISC"], ["B-ORG", "I-ORG", "E-ORG", "S-PER"]],
         [["B-PER", "O", "E-PER", "B-LOC", "E-ORG", "S-MISC"], ["B-ORG", "S-ORG", "E-ORG", "S-PER"]]),
    ],
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # seqeval's macro average of no entities at all
@pytest.mark.parametrize(("scheme", "case"), [(scheme, i) for scheme, cases in CASES.items()
                                               for i in range(len(cases))])
def test_entity_scores_equal_seqeval_strict(scheme, case):
    import seqeval.scheme
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    true, pred = CASES[scheme][case]
    mode = {"mode": "strict", "scheme": getattr(seqeval.scheme, scheme), "zero_division": 0}
    ours = entity_scores(true, pred, scheme)
    assert ours["precision"] == pytest.approx(precision_score(true, pred, **mode))
    assert ours["recall"] == pytest.approx(recall_score(true, pred, **mode))
    assert ours["f1"] == pytest.approx(f1_score(true, pred, **mode))
    report = classification_report(true, pred, output_dict=True, **mode)
    theirs = {kind: row for kind, row in report.items() if not kind.endswith(" avg")}
    assert sorted(ours["per_type"]) == sorted(theirs)
    for kind, row in theirs.items():
        mine = ours["per_type"][kind]
        assert (mine["precision"], mine["recall"], mine["f1"]) == pytest.approx(
            (row["precision"], row["recall"], row["f1-score"]))
        assert mine["support"] == row["support"]
    assert token_accuracy(true, pred) == pytest.approx(accuracy_score(true, pred))


def test_random_predictions_score_as_seqeval_does():
    import seqeval.scheme
    from seqeval.metrics import classification_report

    rng = random.Random(7)
    true = [repair_tags(random_tags(rng, "BIES"), "IOBES") for _ in range(40)]
    pred = [random_tags(rng, "BIES", len(tags)) for tags in true]
    report = classification_report(true, pred, mode="strict", scheme=seqeval.scheme.IOBES, output_dict=True,
                                   zero_division=0)
    ours = entity_scores(true, pred, "IOBES")
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(
        (report["micro avg"]["precision"], report["micro avg"]["recall"], report["micro avg"]["f1-score"]))


# ---- subword alignment ----------------------------------------------------------------------------------------

def test_alignment_labels_the_first_subword_and_ignores_special_tokens(minilm_tokenizer):
    labels = ["O", "B-LOC", "B-PER", "E-PER", "I-LOC", "I-PER", "S-LOC", "S-PER"]
    words, tags = ["Merkel", "visited", "Tbilisi", "."], ["S-PER", "O", "S-LOC", "O"]
    encoding = minilm_tokenizer(words, is_split_into_words=True)
    word_ids = encoding.word_ids()
    assert minilm_tokenizer.convert_ids_to_tokens(encoding["input_ids"]) == \
        ["[CLS]", "mer", "##kel", "visited", "tbilisi", ".", "[SEP]"]
    ids = [labels.index(tag) for tag in tags]
    per, loc = labels.index("S-PER"), labels.index("S-LOC")
    assert align_labels(word_ids, ids, label_all_tokens=False, labels=labels) == \
        [IGNORE, per, IGNORE, 0, loc, 0, IGNORE]
    # continuation subwords say "inside": S-PER on "mer", I-PER on "##kel"
    assert align_labels(word_ids, ids, label_all_tokens=True, labels=labels) == \
        [IGNORE, per, labels.index("I-PER"), 0, loc, 0, IGNORE]


def test_alignment_of_a_word_split_into_many_subwords_under_iob2(minilm_tokenizer):
    labels = ["O", "B-ORG", "I-ORG"]
    words = ["Xylophonists", "Incorporated", "rocks"]
    encoding = minilm_tokenizer(words, is_split_into_words=True)
    word_ids = encoding.word_ids()
    first_word = [i for i, word in enumerate(word_ids) if word == 0]
    assert len(first_word) >= 3
    aligned = align_labels(word_ids, [1, 2, 0], label_all_tokens=False, labels=labels)
    assert [aligned[i] for i in first_word] == [1] + [IGNORE] * (len(first_word) - 1)
    assert aligned[0] == aligned[-1] == IGNORE and sum(label != IGNORE for label in aligned) == 3
    all_tokens = align_labels(word_ids, [1, 2, 0], label_all_tokens=True, labels=labels)
    assert [all_tokens[i] for i in first_word] == [1] + [2] * (len(first_word) - 1)
    with pytest.raises(ValueError, match="'I-ORG'.*label_set"):
        align_labels(word_ids, [1, 0, 0], label_all_tokens=True, labels=["O", "B-ORG"])


# ---- windows --------------------------------------------------------------------------------------------------

def test_windows_cover_every_word_fit_and_overlap():
    rng = random.Random(3)
    for _ in range(200):
        counts = [rng.randint(0, 6) for _ in range(rng.randint(1, 60))]
        max_tokens, overlap = rng.randint(6, 20), rng.randint(0, 5)
        windows = word_windows(counts, max_tokens, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == len(counts)
        assert all(sum(counts[start:end]) <= max_tokens for start, end in windows)
        for (start1, end1), (start2, end2) in pairwise(windows):
            assert start1 < start2 <= end1 < end2  # contiguous, always moving on
            assert sum(counts[start2:end1]) <= overlap
        assert merge_windows(windows, [list(range(start, end)) for start, end in windows]) == list(range(len(counts)))


def test_windows_share_about_overlap_tokens_of_whole_words():
    assert word_windows([2] * 10, 8, 4) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert word_windows([2] * 10, 8, 0) == [(0, 4), (4, 8), (8, 10)]
    assert word_windows([3, 3], 8, 4) == [(0, 2)]


def test_a_word_longer_than_a_window_is_an_error_naming_it():
    with pytest.raises(DataError, match=r"data\.jsonl:4: word 2 \('Llanfair'\) is 9 subword tokens, more than the 8"):
        word_windows([1, 9, 1], 8, 2, words=["in", "Llanfair", "today"], source="data.jsonl:4")


def test_merge_keeps_each_words_prediction_from_its_most_centred_window():
    windows = [(0, 6), (3, 9)]
    predictions = [[("w0", i) for i in range(6)], [("w1", i) for i in range(3, 9)]]
    merged = merge_windows(windows, predictions)
    # word 3: 2 words of context on its short side in w0, 0 in w1; word 4: 1 in each, the earlier wins; word 5: w1
    assert [source for source, _ in merged] == ["w0", "w0", "w0", "w0", "w0", "w1", "w1", "w1", "w1"]
    assert [word for _, word in merged] == list(range(9))


def test_long_sentence_windows_with_a_real_tokenizer(minilm_tokenizer):
    words = ("The European Commission said on Thursday it disagreed with German advice to consumers " * 8).split()
    counts = [len(minilm_tokenizer.tokenize(word)) for word in words]
    max_tokens = 32 - 2  # [CLS] and [SEP]
    windows = word_windows(counts, max_tokens, 8)
    assert len(windows) > 3
    for start, end in windows:
        encoded = minilm_tokenizer(words[start:end], is_split_into_words=True)["input_ids"]
        assert len(encoded) <= 32
    assert merge_windows(windows, [words[start:end] for start, end in windows]) == words
