"""Write the preference demo set: the meeting-request prompts of the SFT demo, each with the right JSON answer
(chosen) and a wrong one (rejected).

Rejected answers are the two mistakes an SFT'd model still makes: half are the JSON with one field holding another
plausible value, half are the right JSON followed by more text (a second sentence, or the object again), as from a
model that does not stop. Requests are new: none is in any SFT demo file, the held-out one included, and all use
training's phrasings, so the held-out phrasings stay unseen. Deterministic (fixed seed); run from the repository root:

    python scripts/make_prefer_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from make_demo_data import CITIES, MONTHS, PEOPLE, TOPICS, chat, held_out_rows, make_row, training_rows, write_jsonl

TRAIN_PAIRS, VALID_PAIRS = 300, 40
OTHER_VALUES = {"person": PEOPLE, "city": CITIES, "topic": TOPICS}
MORE_TEXT = [
    " Let me know if you need anything else.",
    "\nI have added it to the calendar.",
    "\n\nThe meeting is with {person} in {city} on {date}.",
    "\n{answer}",  # the object again
    " {answer}",
]


def used_requests() -> set[str]:
    """Every request of the SFT demo files, held-out ones included."""
    _, seen = training_rows()
    return seen | {request for request, _ in held_out_rows(set(seen))}


def new_rows(rng: random.Random, count: int) -> list[tuple[str, str]]:
    seen = used_requests()
    rows: list[tuple[str, str]] = []
    while len(rows) < count:
        request, answer = make_row(rng)
        if request not in seen:
            seen.add(request)
            rows.append((request, answer))
    return rows


def wrong_field(rng: random.Random, answer: str) -> str:
    """The answer with one field holding another plausible value."""
    fields = json.loads(answer)
    key = rng.choice(list(fields))
    if key == "date":
        month, day = fields["date"].split()
        fields["date"] = rng.choice([f"{month} {rng.choice([d for d in range(1, 29) if d != int(day)])}",
                                     f"{rng.choice([m for m in MONTHS if m != month])} {day}"])
    else:
        fields[key] = rng.choice([value for value in OTHER_VALUES[key] if value != fields[key]])
    return json.dumps(fields, ensure_ascii=False)


def more_text(rng: random.Random, answer: str) -> str:
    """The right answer, then what a model that does not stop adds."""
    return answer + rng.choice(MORE_TEXT).format(answer=answer, **json.loads(answer))


def pair(request: str, answer: str, rejected: str) -> dict:
    return {"prompt": chat(request, None)["messages"], "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def pairs(rng: random.Random, rows: list[tuple[str, str]]) -> list[dict]:
    mistakes = [wrong_field, more_text] * (len(rows) // 2)  # exactly half of each
    rng.shuffle(mistakes)
    return [pair(request, answer, mistake(rng, answer)) for (request, answer), mistake in zip(rows, mistakes, strict=True)]


def main() -> None:
    rng = random.Random(2028)  # its own stream: the SFT files stay as they were
    rows = new_rows(rng, TRAIN_PAIRS + VALID_PAIRS)
    out = Path("data/demo")
    write_jsonl(out / "prefer_train.jsonl", pairs(rng, rows[:TRAIN_PAIRS]))
    write_jsonl(out / "prefer_valid.jsonl", pairs(rng, rows[TRAIN_PAIRS:]))


if __name__ == "__main__":
    main()
