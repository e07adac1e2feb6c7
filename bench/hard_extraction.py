"""A held-out extraction task hard in the ways users' data is: several meetings per message, numbers written as
digits, words, ordinals and Roman numerals, distractor numbers (rooms, times, extensions, durations), messages with
nothing to extract, and test phrasings training never saw.

Each message is turned into {"meetings": [{"person": str, "day": int, "attendees": int}, ...]} (an empty list when
nothing is to be booked). Deterministic in its seed; no two rows of any split share an answer.

    .venv/bin/python bench/hard_extraction.py OUT_DIR [--train 400 --valid 48 --test 120 --seed 2027]

writes train.jsonl / valid.jsonl (chat rows ending with the answer) and test.jsonl (the same rows, plus
`seen_phrasing`) into OUT_DIR. bench/auto_vs_hf.py uses it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_demo_data import PEOPLE

SYSTEM = ('List every meeting to book as JSON: {"meetings": [{"person", "day" (day of the month, a number), '
          '"attendees" (a number)}]}; an empty list when there is none.')
UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
ORDINAL_UNITS = ["", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
                 "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
                 "eighteenth", "nineteenth", "twentieth"]
UNSEEN_SHARE = 0.4
EMPTY_SHARE = 0.15
MEETING_COUNTS = {1: 0.55, 2: 0.35, 3: 0.10}
MAX_ATTENDEES, MAX_DAY = 40, 31

# A meeting clause: {person}, {day} (an ordinal: "the 14th" / "the fourteenth"), {n} (attendees: digits, words or
# Roman numerals, up to 40). One to three clauses a message, joined with "Also,".
TRAIN_CLAUSES = [
    "{person} wants to meet on {day} with {n} people",
    "please book {day} for {person}, {n} attendees",
    "{person}'s session is on {day} and we expect {n}",
    "{n} of us will join {person} on {day}",
    "set up a meeting with {person} on {day} for a group of {n}",
    "{person} needs a room on {day} for {n}",
    "{person} is gathering {n} colleagues on {day}",
    "hold {day} for {person} and a team of {n}",
]
UNSEEN_CLAUSES = [
    "on {day}, {person} is hosting and {n} guests are coming",
    "a party of {n} under {person}'s name for {day}",
    "{person} asked whether {day} works; headcount {n}",
    "reserve {day}: {person} presenting to {n}",
    "{n} seats, {day}, organiser {person}",
    "could {person} get a space for {n} on {day}?",
]
EMPTY_MESSAGES = [
    "No meetings this week, {person} is out for {n} days.",
    "{person} cancelled everything on {day}; the {n} invites are void.",
    "Just a note: {person} moved to floor {n}, nothing to book.",
    "{person} says the printer on floor {n} is broken again.",
    "Thanks {person}, the {n} chairs from {day} were returned.",
    "{person} will be travelling from {day} for {n} nights.",
]
DISTRACTORS = ["It starts at {h} pm.", "Room {room} if it is free.", "Call extension {ext} with questions.",
               "The last one was {w} weeks ago.", "Floor {f}, by the lifts.", ""]


def words(n: int) -> str:
    if n <= 20:
        return UNITS[n]
    tens = {2: "twenty", 3: "thirty", 4: "forty"}[n // 10]
    return tens if n % 10 == 0 else f"{tens}-{UNITS[n % 10]}"


def ordinal_words(n: int) -> str:
    if n <= 20:
        return ORDINAL_UNITS[n]
    tens = {2: "twent", 3: "thirt"}[n // 10]
    return f"{tens}ieth" if n % 10 == 0 else f"{tens}y-{ORDINAL_UNITS[n % 10]}"


def ordinal_digits(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def roman(n: int) -> str:
    out = ""
    for value, letters in ((40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out, n = out + letters, n - value
    return out


def written_count(rng: random.Random, n: int) -> str:
    return rng.choice([str, words, roman])(n)


def written_day(rng: random.Random, day: int) -> str:
    return "the " + rng.choice([ordinal_digits, ordinal_words])(day)


def distractor(rng: random.Random) -> str:
    """Zero to two sentences with numbers that are not answers."""
    texts = rng.sample(DISTRACTORS, rng.choice([1, 1, 2]))
    number = rng.randint(2, 30)
    return " ".join(text.format(h=rng.randint(1, 11), room=rng.randint(100, 420), ext=rng.randint(2000, 7999),
                                w=rng.choice([str(number), words(number)]), f=rng.randint(2, 12))
                    for text in texts).strip()


def meeting_message(rng: random.Random, clauses: list[str]) -> tuple[str, dict]:
    count = rng.choices(list(MEETING_COUNTS), weights=list(MEETING_COUNTS.values()))[0]
    people = rng.sample(PEOPLE, count)
    meetings, parts = [], []
    for person in people:
        day, n = rng.randint(1, MAX_DAY), rng.randint(2, MAX_ATTENDEES)
        meetings.append({"person": person, "day": day, "attendees": n})
        parts.append(rng.choice(clauses).format(person=person, day=written_day(rng, day), n=written_count(rng, n)))
    body = ". Also, ".join(parts)
    body = body[0].upper() + body[1:] + ("" if body.endswith("?") else ".")
    text = " ".join(filter(None, [body, distractor(rng)]))
    return text, {"meetings": meetings}


def empty_message(rng: random.Random) -> tuple[str, dict]:
    text = rng.choice(EMPTY_MESSAGES).format(person=rng.choice(PEOPLE), day=written_day(rng, rng.randint(1, MAX_DAY)),
                                             n=written_count(rng, rng.randint(2, MAX_ATTENDEES)))
    return " ".join(filter(None, [text, distractor(rng)])), {"meetings": []}


def chat(text: str, answer: dict) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}]


def build(seed: int, n_train: int, n_valid: int, n_test: int) -> dict[str, list[dict]]:
    rng, seen_answers = random.Random(seed), set()

    def rows(count: int, clauses: list[str]) -> list[tuple[str, dict]]:
        out = []
        while len(out) < count:
            text, answer = empty_message(rng) if rng.random() < EMPTY_SHARE else meeting_message(rng, clauses)
            key = json.dumps(answer) if answer["meetings"] else text
            if key not in seen_answers:
                seen_answers.add(key)
                out.append((text, answer))
        return out

    train, valid = rows(n_train, TRAIN_CLAUSES), rows(n_valid, TRAIN_CLAUSES)
    unseen = round(n_test * UNSEEN_SHARE)
    test = [(t, a, True) for t, a in rows(n_test - unseen, TRAIN_CLAUSES)]
    test += [(t, a, False) for t, a in rows(unseen, UNSEEN_CLAUSES)]
    return {"train": [{"messages": chat(t, a)} for t, a in train],
            "valid": [{"messages": chat(t, a)} for t, a in valid],
            "test": [{"messages": chat(t, a), "reference": a, "seen_phrasing": s} for t, a, s in test]}


def write(out: Path, data: dict[str, list[dict]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in data.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    for name, default in (("--train", 400), ("--valid", 48), ("--test", 120), ("--seed", 2027)):
        parser.add_argument(name, type=int, default=default)
    args = parser.parse_args()
    write(args.out, build(args.seed, args.train, args.valid, args.test))


if __name__ == "__main__":
    main()
