"""Reading a dataset's files a chunk at a time, never a file whole: the first rows of a file, chunks of about
CHUNK_BYTES over all files (JSONL: cut at line ends, so every error still names its file and line; CSV: a file per
chunk, since a quoted field may span lines; Parquet: a row group per chunk), and the rows of one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.records import Record, decode_utf8, read_csv_text, read_jsonl_text
from tuneforge.data.sources import DataFiles
from tuneforge.errors import DataError

CHUNK_BYTES = 16 * 2**20
SCAN_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Chunk:
    index: int
    path: str
    start: int  # JSONL/CSV: byte offset; Parquet: row group
    end: int  # JSONL/CSV: byte offset (exclusive); Parquet: row group + 1
    first_line: int  # line (row, for Parquet) the chunk starts on


def read_sample(files: DataFiles, rows: int) -> list[Record]:
    """The first `rows` rows of the first file, read without reading the file whole."""
    path, label = files.paths[0], files.label(files.paths[0])
    if files.format == "parquet":
        import pyarrow.parquet as pq

        with files.filesystem.open_input_file(path) as handle:
            first = next(pq.ParquetFile(handle).iter_batches(batch_size=rows), None)
        records = [Record(line, row) for line, row in enumerate(first.to_pylist() if first else [], start=1)]
    else:
        records = read_head(files, path, rows)
    if not records:
        raise DataError(f"{label}: train_path file is empty; it needs at least one row")
    return records[:rows]


def read_head(files: DataFiles, path: str, rows: int) -> list[Record]:
    """Rows from the whole lines among the first bytes of a JSONL or CSV file (enough bytes for `rows` lines)."""
    label = files.label(path)
    with files.filesystem.open_input_stream(path) as stream:
        raw = b""
        while raw.count(b"\n") <= rows and (block := stream.read(SCAN_BYTES // 8)):
            raw += block
        whole = not stream.read(1)
    if not whole:
        raw = raw[: find_nth(raw, b"\n", min(rows + 1, raw.count(b"\n"))) + 1]
    text = decode_utf8(raw, label)
    if files.format == "jsonl":
        return read_jsonl_text(text, label)
    try:
        return read_csv_text(text, label)
    except DataError:
        if whole:
            raise
        return read_chunk(files, Chunk(0, path, 0, files.sizes[0], 1))  # a quoted field ran past the cut


def find_nth(raw: bytes, needle: bytes, count: int) -> int:
    at = -1
    for _ in range(count):
        at = raw.find(needle, at + 1)
    return at


def plan_chunks(files: DataFiles) -> tuple[list[Chunk], int]:
    """Chunks of about CHUNK_BYTES over all files, and the number of rows (lines) they hold, by one streamed pass
    over the bytes (JSONL), one file each (CSV), or row groups from the footers (Parquet)."""
    chunks: list[Chunk] = []
    rows = 0
    for path, size in zip(files.paths, files.sizes, strict=True):
        if files.format == "parquet":
            import pyarrow.parquet as pq

            with files.filesystem.open_input_file(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
            line = 1
            for group in range(metadata.num_row_groups):
                chunks.append(Chunk(len(chunks), path, group, group + 1, line))
                line += metadata.row_group(group).num_rows
            rows += metadata.num_rows
            continue
        spans, lines = line_spans(files, path)
        if files.format == "csv":
            spans, lines = [(0, size, 1)], max(lines - 1, 0)
        base = len(chunks)
        chunks.extend(Chunk(base + i, path, start, end, first) for i, (start, end, first) in enumerate(spans))
        rows += lines
    return chunks, rows


def line_spans(files: DataFiles, path: str) -> tuple[list[tuple[int, int, int]], int]:
    """(start, end, first line) byte spans of about CHUNK_BYTES cut just after a newline, and the line count."""
    spans, start, line, lines_before, offset = [], 0, 1, 0, 0
    last_byte = b""
    with files.filesystem.open_input_stream(path) as stream:
        while block := stream.read(SCAN_BYTES):
            position = 0
            while (cut_from := start + CHUNK_BYTES - offset) < len(block):
                newline = block.find(b"\n", max(cut_from, position))
                if newline < 0:
                    break
                lines_before += block.count(b"\n", position, newline + 1)
                spans.append((start, offset + newline + 1, line))
                line += lines_before
                lines_before, start, position = 0, offset + newline + 1, newline + 1
            lines_before += block.count(b"\n", position)
            offset += len(block)
            last_byte = block[-1:]
    if offset > start:
        spans.append((start, offset, line))
    total = line - 1 + lines_before + (1 if last_byte and last_byte != b"\n" else 0)
    return spans, total


def read_chunk(files: DataFiles, chunk: Chunk) -> list[Record]:
    label = files.label(chunk.path)
    if files.format == "parquet":
        import pyarrow.parquet as pq

        with files.filesystem.open_input_file(chunk.path) as handle:
            rows = pq.ParquetFile(handle).read_row_groups(list(range(chunk.start, chunk.end))).to_pylist()
        return [Record(chunk.first_line + i, row) for i, row in enumerate(rows)]
    with files.filesystem.open_input_file(chunk.path) as handle:
        handle.seek(chunk.start)
        raw = handle.read(chunk.end - chunk.start)
    text = decode_utf8(raw, label, chunk.first_line)
    if files.format == "csv":
        return read_csv_text(text, label)
    return read_jsonl_text(text, label, chunk.first_line)
