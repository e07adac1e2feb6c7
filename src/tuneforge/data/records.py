"""Reading row files (JSONL, CSV, Parquet) so that every problem can name its file and line (for Parquet, the row:
the format has no lines)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError, where

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv")  # one file read in memory; datasets add .parquet


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
    records = parse_rows(path.read_bytes(), path, "csv" if suffix == ".csv" else "jsonl")
    if not records:
        raise DataError(f"{path}: {role} file is empty; it needs at least one row")
    return records


def read_dataset(spec: str, role: str) -> list[tuple[str, list[Record]]]:
    """Every file of a dataset (one file, a directory of shards, a glob or a URI) with its rows, in file order."""
    from tuneforge.data.sources import resolve_data

    files = resolve_data(spec, role)
    parts = [(files.label(path), parse_rows(files.read_bytes(path), files.label(path), files.format))
             for path in files.paths]
    parts = [(label, records) for label, records in parts if records]
    if not parts:
        what = "file is" if len(files.paths) == 1 else "files are"
        raise DataError(f"{spec}: {role} {what} empty; it needs at least one row")
    return parts


def parse_rows(raw: bytes, path: str | Path, file_format: str) -> list[Record]:
    """The rows of one file's bytes (`file_format`: jsonl | csv | parquet)."""
    if file_format == "parquet":
        return read_parquet_bytes(raw, path)
    text = decode_utf8(raw, path)
    return read_csv_text(text, path) if file_format == "csv" else read_jsonl_text(text, path)


def read_parquet_bytes(raw: bytes, path: str | Path) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(pa.BufferReader(raw)).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a damaged file vary by what is damaged
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).strip().splitlines()[0]})") from None
    return [Record(number, row) for number, row in enumerate(rows, start=1)]


def check_data_file(path: Path, role: str = "data") -> None:
    """The path is an existing file: cheap enough to check before a model loads."""
    if path.is_dir():
        raise DataError(f"{path}: {role} is a directory, not a file; give a .jsonl or .csv file")
    if not path.is_file():
        raise DataError(f"{path}: {role} file not found")


def decode_utf8(raw: bytes, path: str | Path, first_line: int = 1) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + first_line
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{where(path, line)}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
            "re-save the file as UTF-8"
        ) from None


def read_jsonl_text(text: str, path: str | Path, first_line: int = 1) -> list[Record]:
    records = []
    # Lines end at "\n" only: str.splitlines() would also cut at U+2028 and other separators JSON allows in strings.
    for number, line in enumerate(text.split("\n"), start=first_line):
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


def read_csv_text(text: str, path: str | Path) -> list[Record]:
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
