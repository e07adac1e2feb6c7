"""Reading row files (JSONL, CSV) so that every problem can name its file and line."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError, where

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Record:
    """One row of a data file and the line it starts on (1-based)."""

    line: int
    data: dict[str, Any]


def read_records(path: str | Path, role: str = "data") -> list[Record]:
    """All rows of a JSONL or CSV file; a DataError names the file, line and fix for anything unreadable."""
    path = Path(path)
    check_data_file(path, role)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use .jsonl or .csv")
    text = decode_utf8(path)
    records = read_csv_text(text, path) if suffix == ".csv" else read_jsonl_text(text, path)
    if not records:
        raise DataError(f"{path}: {role} file is empty; it needs at least one row")
    return records


def check_data_file(path: Path, role: str = "data") -> None:
    """The path is an existing file: cheap enough to check before a model loads."""
    if path.is_dir():
        raise DataError(f"{path}: {role} is a directory, not a file; give a .jsonl or .csv file")
    if not path.is_file():
        raise DataError(f"{path}: {role} file not found")


def decode_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{where(path, line)}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
            "re-save the file as UTF-8"
        ) from None


def read_jsonl_text(text: str, path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where(path, number)}: invalid JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{where(path, number)}: expected a JSON object per line, got {type(row).__name__}")
        records.append(Record(number, row))
    return records


def read_csv_text(text: str, path: Path) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1  # where the record being parsed starts: an unclosed quote is reported where it opened
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [name.strip() for name in header]
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise DataError(f"{where(path, 1)}: duplicated column name(s) {', '.join(duplicated)}")
        records = []
        line = reader.line_num + 1
        for values in reader:
            if values and any(value.strip() for value in values):
                if len(values) != len(header):
                    raise DataError(
                        f"{where(path, line)}: {len(values)} fields but the header has {len(header)}; "
                        "check for a missing or extra comma or an unclosed quote"
                    )
                records.append(Record(line, dict(zip(header, values, strict=True))))
            line = reader.line_num + 1
        return records
    except csv.Error as exc:
        raise DataError(
            f"{where(path, line)}: malformed CSV ({exc}); check for an unclosed or stray quote"
        ) from None
