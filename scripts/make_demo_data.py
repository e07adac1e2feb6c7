"""Write the bundled causal-LM demo set: meeting requests in free text -> a compact JSON record.

The task is easy to see succeed: before fine-tuning, a 135M chat model answers at length and in prose; after, it
answers with exactly one JSON object and stops. Deterministic (fixed seed); run from the repository root:

    python scripts/make_demo_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Extract the meeting request as JSON with keys person, city, date and topic."

PEOPLE = [
    "Priya", "Tomás", "Aiko", "Grace", "Mohammed", "Lena", "Oluwaseun", "Mateo", "Sofia", "Chen Wei", "Ingrid",
    "Rafael", "Amara", "Jonas", "Fatima", "Dmitri", "Hannah", "Kofi", "Yuki", "Elena", "Marcus", "Anika", "Pablo",
    "Zainab", "Henrik", "Isabela", "Tariq", "Mei", "Noah", "Leilani",
]
CITIES = [
    "Lisbon", "Nairobi", "Osaka", "Toronto", "Kraków", "Austin", "Melbourne", "Bogotá", "Oslo", "Marseille",
    "Pune", "Edinburgh", "Seoul", "Cape Town", "Valencia", "Denver", "Hamburg", "Montréal", "Accra", "Porto",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
TOPICS = [
    "budget", "hiring plan", "product launch", "quarterly review", "vendor contract", "roadmap", "security audit",
    "marketing campaign", "office move", "customer feedback", "pricing", "onboarding", "data migration",
    "partnership", "design review",
]
TEMPLATES = [
    "Can we meet with {person} in {city} on {date} to discuss the {topic}?",
    "{person} would like to sit down on {date} in {city} and go over the {topic}.",
    "Please set up a meeting about the {topic} with {person}, {date}, {city} office.",
    "Reminder: {topic} chat with {person} on {date}. We'll be in {city}.",
    "I'm flying to {city} on {date}; book time with {person} for the {topic}.",
    "Let's get {person} and the team together in {city} on {date} about the {topic}.",
    "Quick one: {person} asked to meet about the {topic}, {city}, {date}. Can you arrange it?",
    "On {date} I need an hour with {person} in {city} to review the {topic}.",
]
# Phrasings only the held-out file uses: how well the model does on requests worded in ways it never saw.
HELD_OUT_TEMPLATES = [
    "{person} is in {city} on {date}; could we grab an hour to talk through the {topic}?",
    "Agenda item: {topic}. Who: {person}. Where: {city}. When: {date}.",
    "Would {date} work for a {topic} session with {person}? It has to be in {city}.",
    "Pencil in {person} for {date} in {city}, subject {topic}.",
    "Hi! {person} asked me to find a slot on {date} to cover the {topic} while we're all in {city}.",
]
HELD_OUT_ROWS, HELD_OUT_UNSEEN_SHARE = 60, 0.4


def make_row(rng: random.Random, templates: list[str] = TEMPLATES) -> tuple[str, str]:
    fields = {
        "person": rng.choice(PEOPLE),
        "city": rng.choice(CITIES),
        "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
        "topic": rng.choice(TOPICS),
    }
    request = rng.choice(templates).format(**fields)
    return request, json.dumps(fields, ensure_ascii=False)


def chat(request: str, answer: str | None) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def training_rows() -> tuple[list[tuple[str, str]], set[str]]:
    """The distinct (request, answer) rows the training-side files are cut from, and their requests."""
    rng = random.Random(2026)
    seen: set[str] = set()
    rows = []
    while len(rows) < 296:
        request, answer = make_row(rng)
        if request not in seen:
            seen.add(request)
            rows.append((request, answer))
    return rows, seen


def main() -> None:
    rows, seen = training_rows()
    out = Path("data/demo")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "meetings_train.jsonl", [chat(q, a) for q, a in rows[:240]])
    write_jsonl(out / "meetings_valid.jsonl", [chat(q, a) for q, a in rows[240:288]])
    write_jsonl(out / "meetings_prompts.jsonl", [chat(q, None) for q, _ in rows[288:292]])
    write_jsonl(out / "meetings_prompt_completion.jsonl",
                [{"prompt": f"{SYSTEM}\nRequest: {q}\nJSON:", "completion": f" {a}"} for q, a in rows[:40]])
    write_jsonl(out / "meetings_heldout.jsonl", [chat(q, a) for q, a in held_out_rows(seen)])


def held_out_rows(seen: set[str]) -> list[tuple[str, str]]:
    """Requests training never saw: 40% in the held-out phrasings, the rest in training's phrasings with new values."""
    rng = random.Random(2027)  # its own stream: the training files stay as they were
    unseen = round(HELD_OUT_ROWS * HELD_OUT_UNSEEN_SHARE)
    rows: list[tuple[str, str]] = []
    while len(rows) < HELD_OUT_ROWS:
        request, answer = make_row(rng, HELD_OUT_TEMPLATES if len(rows) < unseen else TEMPLATES)
        if request not in seen:
            seen.add(request)
            rows.append((request, answer))
    rng.shuffle(rows)
    return rows


if __name__ == "__main__":
    main()
