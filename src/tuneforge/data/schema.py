"""The answer schema, inferred from the training targets: when every target is one JSON object, a JSON Schema that
all of them satisfy (keys, required keys, value types, nesting, arrays, enums for keys with few values). Kept in
every checkpoint's metadata, so `constrain: schema` restricts generated answers to the shape training taught.

Loosening is said, never silent: a key whose values mix types gets every type seen (`null` included), a key missing
from some targets is optional, and targets that are not all JSON objects give no schema, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ENUM_MAX_VALUES = 8  # a string key with at most this many distinct values becomes an enum ...
ENUM_MIN_REPEAT = 3  # ... when each value is seen this many times on average (few values, many targets)


@dataclass
class InferredSchema:
    schema: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def infer_answer_schema(targets: list[str]) -> InferredSchema:
    """The schema every target satisfies, or None (with the reason) when some target is not a JSON object."""
    if not targets:
        return InferredSchema(None)
    parsed = [parse_json(text) for text in targets]
    objects = [value for value in parsed if isinstance(value, dict)]
    if not objects:  # free-text answers: nothing to say
        return InferredSchema(None)
    if len(objects) < len(targets):
        index = next(i for i, value in enumerate(parsed) if not isinstance(value, dict))
        what = "not JSON" if parsed[index] is NOT_JSON else f"a JSON {json_type(parsed[index])}, not an object"
        return InferredSchema(None, [f"answer schema: none inferred: {len(targets) - len(objects)} of {len(targets)} "
                                     f"training targets are not JSON objects (the first, target {index + 1}, is "
                                     f"{what}: {shorten(targets[index])})"])
    notes: list[str] = []
    schema = schema_of(objects, "", notes)
    return InferredSchema(schema, notes)


NOT_JSON = object()


def parse_json(text: Any) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return NOT_JSON


def schema_of(values: list[Any], where: str, notes: list[str]) -> dict[str, Any]:
    """A schema for one position in the targets (the root, a key, array items), from every value seen there."""
    kinds = sorted({json_type(value) for value in values}, key=TYPE_ORDER.index)
    if "integer" in kinds and "number" in kinds:
        kinds.remove("integer")  # 3 and 3.5 at one key: a number
    non_null = [kind for kind in kinds if kind != "null"]
    if len(non_null) > 1:
        notes.append(f"answer schema: {where or 'the answer'} mixes {', '.join(non_null)}; any of them allowed")
    if non_null == ["object"]:
        schema = object_schema([v for v in values if isinstance(v, dict)], where, notes)
    elif non_null == ["array"]:
        items = [item for v in values if isinstance(v, list) for item in v]
        schema = {"type": "array", "items": schema_of(items, f"{where}[]", notes) if items else {}}
    elif non_null == ["string"] and (enum := enum_values([v for v in values if isinstance(v, str)])):
        schema = {"type": "string", "enum": enum}
    else:
        schema = {"type": non_null[0]} if len(non_null) == 1 else {"type": non_null}
    if "null" in kinds:
        schema = {"anyOf": [schema, {"type": "null"}]} if non_null else {"type": "null"}
    return schema


def object_schema(objects: list[dict[str, Any]], where: str, notes: list[str]) -> dict[str, Any]:
    keys: list[str] = []
    for obj in objects:
        keys.extend(key for key in obj if key not in keys)
    required = [key for key in keys if all(key in obj for obj in objects)]
    optional = [key for key in keys if key not in required]
    if optional:
        notes.append(f"answer schema: {', '.join(f'{where}.{k}'.lstrip('.') for k in optional)} missing from some "
                     "targets; optional")
    properties = {key: schema_of([obj[key] for obj in objects if key in obj], f"{where}.{key}".lstrip("."), notes)
                  for key in keys}
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def enum_values(strings: list[str]) -> list[str] | None:
    distinct = sorted(set(strings))
    if len(distinct) <= ENUM_MAX_VALUES and len(strings) >= ENUM_MIN_REPEAT * len(distinct):
        return distinct
    return None


TYPE_ORDER = ["object", "array", "string", "integer", "number", "boolean", "null"]


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def shorten(text: Any, width: int = 40) -> str:
    text = repr(text)
    return text if len(text) <= width else text[: width - 3] + "..."
