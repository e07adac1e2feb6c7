"""Write the bundled token-classification demo set: meeting requests with PERSON, CITY, DATE and TOPIC spans.

The same domain as the causal demo (scripts/make_demo_data.py), tagged instead of extracted: JSONL rows
`{"text", "entities": [{"start", "end", "label"}]}`. The training file uses training's phrasings; the held-out file
uses only phrasings training never saw. Deterministic (fixed seeds); run from the repository root:

    python scripts/make_entity_data.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from make_demo_data import CITIES, HELD_OUT_TEMPLATES, MONTHS, PEOPLE, TEMPLATES, TOPICS

LABELS = {"person": "PERSON", "city": "CITY", "date": "DATE", "topic": "TOPIC"}
TRAIN_ROWS, VALID_ROWS, HELD_OUT_ROWS = 300, 40, 80


def tagged_row(rng: random.Random, templates: list[str]) -> dict:
    """One request and the character span of every field in it."""
    values = {"person": rng.choice(PEOPLE), "city": rng.choice(CITIES),
              "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}", "topic": rng.choice(TOPICS)}
    template = rng.choice(templates)
    text, entities, position = "", [], 0
    for match in re.finditer(r"\{(\w+)\}", template):
        text += template[position : match.start()]
        start = len(text)
        text += values[match.group(1)]
        entities.append({"start": start, "end": len(text), "label": LABELS[match.group(1)]})
        position = match.end()
    return {"text": text + template[position:], "entities": entities}


def unique_rows(rng: random.Random, templates: list[str], count: int, seen: set[str]) -> list[dict]:
    rows = []
    while len(rows) < count:
        row = tagged_row(rng, templates)
        if row["text"] not in seen:
            seen.add(row["text"])
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    seen: set[str] = set()
    rows = unique_rows(random.Random(2030), TEMPLATES, TRAIN_ROWS + VALID_ROWS, seen)
    out = Path("data/demo")
    write_jsonl(out / "entities_train.jsonl", rows[:TRAIN_ROWS])
    write_jsonl(out / "entities_valid.jsonl", rows[TRAIN_ROWS:])
    write_jsonl(out / "entities_heldout.jsonl", unique_rows(random.Random(2031), HELD_OUT_TEMPLATES, HELD_OUT_ROWS, seen))


if __name__ == "__main__":
    main()
