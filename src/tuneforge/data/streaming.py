"""Causal datasets bigger than memory: Ray Data reads, validates and tokenizes them in parallel into Parquet shards
beside the runs (on a cluster, the shared `output_dir`), and the training workers stream those shards through
`ray.train.get_dataset_shard`. The driver holds a sample of rows, the validation rows and per-chunk statistics,
never the dataset.

A dataset streams when `streaming: true`, or by default when its files add up to more than
STREAMING_THRESHOLD_BYTES. The tokenized shards are a cache keyed on the files (path, size, modification time), the
tokenizer and the settings that shape a row, so a resumed run or a second run on the same data skips the work.

Rows are read in chunks (tuneforge.data.chunks), one Ray Data task per chunk. Each chunk is checked with the same
per-row checks as the in-memory path; the first bad row found stops the preparation with its file:line.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from tuneforge.data import causal
from tuneforge.data.chunks import Chunk, plan_chunks, read_chunk, read_sample
from tuneforge.data.records import Record, read_dataset
from tuneforge.data.sources import DataFiles, resolve_data
from tuneforge.errors import DataError, TuneforgeError, where

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig
    from tuneforge.data.prepare import PreparedData

STREAMING_THRESHOLD_BYTES = 256 * 2**20
SAMPLE_ROWS = 1000  # read by the driver first: shape, early errors, the default context_length
STREAMED_VALID_MAX = 500  # rows held out for validation when there is no valid_path (validation runs in memory)
SHUFFLE_BUFFER_ROWS = 2048
CACHE_DIR = ".tuneforge-data"
CACHE_VERSION = 1


def wants_streaming(config: TrainConfig) -> bool:
    if config.streaming is not None:
        return config.streaming
    return resolve_data(config.train_path, "train_path").total_bytes > STREAMING_THRESHOLD_BYTES


@dataclass
class StreamedTrain:
    """Where the tokenized training rows are, for the workers to stream."""

    directory: str
    files: list[str]  # one Parquet shard per chunk, in chunk order
    rows: int


# ----------------------------------------------------------------------------------------------------------------
# Driver: plan, sample, run the preparation, read back statistics and validation rows
# ----------------------------------------------------------------------------------------------------------------


def prepare_streamed_causal(config: TrainConfig, tokenizer: Any, model_max_length: int | None,
                            progress: Callable[[dict[str, Any]], None] | None = None) -> PreparedData:
    from tuneforge.data.prepare import LengthStats, PreparedData, fit_notes, rows_kept

    files = resolve_data(config.train_path, "train_path")
    sample, shape, context_length, notes = look_at_sample(config, files, tokenizer, model_max_length)
    chunks, estimated_rows = plan_chunks(files)
    valid_parts = read_dataset(config.valid_path, "valid_path") if config.valid_path else None
    held_out_share = 0.0 if valid_parts else held_out_fraction(config.valid_split, estimated_rows)
    settings = {"shape": shape, "train_on_inputs": config.train_on_inputs, "context_length": context_length,
                "truncation": config.truncation, "held_out_share": held_out_share, "seed": config.seed}
    directory = Path(config.output_dir) / CACHE_DIR / cache_key(files, tokenizer, settings)
    summary = load_or_build(directory, files, chunks, tokenizer, settings, progress)

    rows = summary["rows"]
    if not rows:
        raise DataError(f"{config.train_path}: no row has target tokens within context_length {context_length}")
    notes += summary["notes"] + fit_notes("train", summary["dropped"], summary["truncated"], context_length)
    if valid_parts:
        valid, valid_rows, valid_stats = in_memory_valid(valid_parts, shape, tokenizer, config, context_length, notes)
    else:
        valid, valid_rows = read_held_out(directory / "valid")
        valid_stats = LengthStats.of([len(e) for e in valid], int(sum(e.target_mask.sum() for e in valid)), 0)
    stats = {"train": train_statistics(summary), "valid": valid_stats}
    notes.append(f"train: {rows} rows streamed from {len(files.paths)} file(s) ({files.total_bytes / 2**20:.1f} MiB), "
                 f"tokenized by Ray Data into {directory}")
    data = PreparedData(shape, [], valid, context_length, stats, notes=notes,
                        valid_rows=valid_rows[:rows_kept(config)],
                        system_prompt=causal.shared_system_prompt([record.data for record in sample]))
    data.stream = StreamedTrain(str(directory / "train"), summary["files"], rows)
    return data


def look_at_sample(config: TrainConfig, files: DataFiles, tokenizer: Any,
                   model_max_length: int | None) -> tuple[list[Record], causal.Shape, int, list[str]]:
    """The first rows, read by the driver: the data's shape, its first errors, and the default context_length."""
    from tuneforge.data.prepare import choose_context_length

    sample = read_sample(files, SAMPLE_ROWS)
    label = Path(files.label(files.paths[0]))
    shape = causal.detect_shape(sample, label)
    causal.validate_rows(sample, label, shape)
    lengths = [len(e) for e in causal.tokenize_records(sample, label, shape, tokenizer, config.train_on_inputs)]
    context_length = choose_context_length(config.context_length, lengths, model_max_length)
    notes = [] if config.context_length else [
        f"context_length {context_length}: the longest of the first {len(sample)} rows (streamed data is not read "
        "whole before training); set context_length to choose"]
    return sample, shape, context_length, notes


def train_statistics(summary: dict[str, Any]) -> Any:
    """The plan's length statistics, from the shards' length column (4 bytes a row in the driver)."""
    from tuneforge.data.prepare import LengthStats

    lengths = np.concatenate([read_column(path, "length") for path in summary["files"]] or [np.zeros(0)])
    stats = LengthStats.of(lengths.tolist(), summary["target_tokens"], summary["truncated"])
    stats.rows, stats.dropped = summary["rows"], summary["dropped"]
    return stats


def held_out_fraction(share: float, estimated_rows: int) -> float:
    """The share of rows that go to validation: `valid_split`, capped at STREAMED_VALID_MAX rows (validation of a
    streamed dataset runs on rows held in memory)."""
    if share == 0 or estimated_rows < 2:
        return 0.0
    wanted = min(max(1, round(estimated_rows * share)), STREAMED_VALID_MAX)
    return wanted / estimated_rows


def in_memory_valid(parts: list, shape: causal.Shape, tokenizer: Any, config: TrainConfig, context_length: int,
                    notes: list[str]) -> tuple[list[causal.Example], list[dict[str, Any]], Any]:
    from tuneforge.data.prepare import LengthStats, fit_notes, fit_to_context, tokenize_parts, validate_parts

    valid_shape = causal.detect_shape(parts[0][1], Path(parts[0][0]))
    if valid_shape != shape:
        raise DataError(f"{config.valid_path}: rows are {valid_shape} but train_path's rows are {shape}; use one shape")
    notes += validate_parts(parts, shape)
    examples = tokenize_parts(parts, shape, tokenizer, config.train_on_inputs)
    kept, truncated = fit_to_context(examples, context_length, config.truncation)
    notes += fit_notes("valid", len(examples) - len(kept), truncated, context_length)
    stats = LengthStats.of([len(e) for e in examples], int(sum(e.target_mask.sum() for e in kept)), truncated)
    stats.rows, stats.dropped = len(kept), len(examples) - len(kept)
    return kept, [record.data for _, records in parts for record in records], stats


def cache_key(files: DataFiles, tokenizer: Any, settings: dict[str, Any]) -> str:
    identity = {"version": CACHE_VERSION, "files": files.fingerprint(), "settings": settings,
                "tokenizer": [getattr(tokenizer, "name_or_path", ""), len(tokenizer),
                              hashlib.sha256(str(tokenizer.chat_template or "").encode()).hexdigest(),
                              str(tokenizer.eos_token), str(tokenizer.bos_token)]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_or_build(directory: Path, files: DataFiles, chunks: list[Chunk], tokenizer: Any,
                  settings: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """The cached preparation, or a new one: built beside its final place and renamed into it when whole."""
    summary_file = directory / "summary.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    staging = directory.with_name(f"{directory.name}.partial-{os.getpid()}-{int(time.time())}")
    try:
        summary = run_preparation(staging, files, chunks, tokenizer, settings, progress or (lambda event: None))
        summary["files"] = [str(directory / "train" / Path(path).name) for path in summary["files"]]
        (staging / "summary.json").write_text(json.dumps(summary))
        if directory.exists():  # a concurrent run finished the same preparation first
            shutil.rmtree(staging)
        else:
            staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def run_preparation(staging: Path, files: DataFiles, chunks: list[Chunk], tokenizer: Any,
                    settings: dict[str, Any], progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    import ray.data

    from tuneforge.cluster import ensure_ray

    ensure_ray()  # the one tuneforge's driver started or joined; a local one for the library and `tuneforge plan`
    (staging / "train").mkdir(parents=True)
    (staging / "valid").mkdir()
    configure_ray_data()
    started = time.time()
    dataset = ray.data.from_items([asdict(chunk) for chunk in chunks], override_num_blocks=len(chunks))
    prepared = dataset.map_batches(prepare_chunks, batch_size=1, batch_format="pandas",
                                   fn_kwargs={"files": files, "tokenizer": tokenizer, "settings": settings,
                                              "out_dir": str(staging)})
    results = []
    progress({"type": "prepare", "done": 0, "total": len(chunks), "rows": 0, "bytes": files.total_bytes})
    try:
        for row in prepared.iter_rows():  # one row per chunk, as the chunks finish
            results.append(row)
            progress({"type": "prepare", "done": len(results), "total": len(chunks),
                      "rows": sum(item["rows"] for item in results), "bytes": files.total_bytes})
    except Exception as exc:  # noqa: BLE001 - Ray wraps the DataError a chunk raised
        raise data_error_inside(exc) from None
    results.sort(key=lambda row: row["index"])
    notes = [row["note"] for row in results if row["note"]]
    note = [f"{notes[0]} (and notes in {len(notes) - 1} more chunk(s))" if len(notes) > 1 else notes[0]] if notes else []
    return {"rows": int(sum(row["rows"] for row in results)), "dropped": int(sum(row["dropped"] for row in results)),
            "truncated": int(sum(row["truncated"] for row in results)),
            "target_tokens": int(sum(row["target_tokens"] for row in results)),
            "files": [row["file"] for row in results if row["rows"]], "notes": note,
            "valid_rows": int(sum(row["valid_rows"] for row in results)),
            "tokens": int(sum(row["tokens"] for row in results)), "bytes": files.total_bytes,
            "seconds": round(time.time() - started, 2), "chunks": len(chunks)}


def configure_ray_data() -> None:
    """Ray Data's progress bars and logs would interleave with tuneforge's own progress display (its log file in
    the Ray session keeps them); a task's error is raised as itself, so a DataError reaches the user as one line."""
    import logging

    import ray.data

    if logging.getLogger("ray").level >= logging.ERROR:  # tuneforge's quiet setting (cluster.quiet_ray_loggers)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True


def data_error_inside(exc: BaseException) -> TuneforgeError:
    """The DataError a Ray Data task raised, found in Ray's wrapping; else one line about the failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TuneforgeError):
            return current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    text = str(exc).strip().splitlines()
    return TuneforgeError(f"preparing the streamed data failed: {text[-1] if text else type(exc).__name__}")


def read_column(path: str, column: str) -> np.ndarray:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=[column]).column(column).to_numpy()


def read_held_out(directory: Path) -> tuple[list[causal.Example], list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    examples, rows = [], []
    for path in sorted(directory.glob("part-*.parquet")):
        table = pq.read_table(path)
        examples.extend(examples_from_columns(table.to_pydict()))
        rows.extend(json.loads(row) for row in table.column("row").to_pylist())
    return examples, rows


# ----------------------------------------------------------------------------------------------------------------
# Ray Data tasks: one chunk in, one Parquet shard (and held-out rows) out
# ----------------------------------------------------------------------------------------------------------------


def prepare_chunks(batch: Any, *, files: DataFiles, tokenizer: Any, settings: dict[str, Any], out_dir: str) -> Any:
    import pandas as pd

    return pd.DataFrame([prepare_chunk(Chunk(**row), files, tokenizer, settings, Path(out_dir))
                         for row in batch.to_dict("records")])


def prepare_chunk(chunk: Chunk, files: DataFiles, tokenizer: Any, settings: dict[str, Any], out_dir: Path) -> dict:
    from tuneforge.data.prepare import fit_to_context

    label = files.label(chunk.path)
    records = read_chunk(files, chunk)
    notes = causal.validate_rows(records, Path(label), settings["shape"])
    held = [held_out(settings, label, record.line) for record in records]
    train_records = [record for record, out in zip(records, held, strict=True) if not out]
    valid_records = [record for record, out in zip(records, held, strict=True) if out]
    shape, train_on_inputs = settings["shape"], settings["train_on_inputs"]
    train = causal.tokenize_records(train_records, Path(label), shape, tokenizer, train_on_inputs)
    kept, truncated = fit_to_context(train, settings["context_length"], settings["truncation"])
    name = f"part-{chunk.index:06d}.parquet"
    if kept:
        write_examples(out_dir / "train" / name, kept)
    if valid_records:
        valid = causal.tokenize_records(valid_records, Path(label), shape, tokenizer, train_on_inputs)
        valid, _ = fit_to_context(valid, settings["context_length"], "truncate")
        by_source = {example.source: example for example in valid}
        rows = [json.dumps(record.data) for record in valid_records
                if where(Path(label), record.line) in by_source]
        write_examples(out_dir / "valid" / name, valid, row=rows)
    return {"index": chunk.index, "file": str(out_dir / "train" / name), "rows": len(kept),
            "dropped": len(train) - len(kept), "truncated": truncated,
            "target_tokens": int(sum(int(example.target_mask.sum()) for example in kept)),
            "tokens": int(sum(len(example) for example in kept)), "valid_rows": len(valid_records), "note": notes[0] if notes else ""}


def held_out(settings: dict[str, Any], label: str, line: int) -> bool:
    """Seeded per row (file and line), so the split does not depend on how the data was chunked."""
    share = settings["held_out_share"]
    return share > 0 and random.Random(f"{settings['seed']}:{label}:{line}").random() < share


def write_examples(path: Path, examples: list[causal.Example], **extra: list[Any]) -> None:
    """Tokenized rows as one Parquet file, written under a temporary name and renamed (a killed task leaves no
    file that looks whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = np.asarray([len(e) for e in examples], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    columns = {
        "input_ids": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([e.input_ids for e in examples]))),
        "target_mask": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([e.target_mask for e in examples]))),
        "source": pa.array([e.source for e in examples]),
        "length": pa.array(lengths),
    }
    columns.update({name: pa.array(values) for name, values in extra.items()})
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(columns), temporary)
    temporary.rename(path)


def examples_from_columns(columns: dict[str, Any]) -> list[causal.Example]:
    return [causal.Example(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool), str(source))
            for ids, mask, source in zip(columns["input_ids"], columns["target_mask"], columns["source"], strict=True)]


# ----------------------------------------------------------------------------------------------------------------
# Training: the dataset handed to Ray Train, and each worker's batches
# ----------------------------------------------------------------------------------------------------------------


def training_dataset(stream: StreamedTrain, seed: int) -> Any:
    """The shards as a Ray Dataset, in a seeded order. Its tasks ask for no CPU: the training workers hold the
    CPUs, and reading Parquet is light next to a training step."""
    import ray.data

    configure_ray_data()
    order = [stream.files[i] for i in np.random.default_rng(seed).permutation(len(stream.files))]
    return ray.data.from_items([{"path": path} for path in order], override_num_blocks=len(order)).map_batches(
        read_shards, batch_size=1, num_cpus=0)


def read_shards(batch: dict[str, Any]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for path in batch["path"]:
        shard = pq.ParquetFile(str(path))
        for group in range(shard.num_row_groups):
            yield shard.read_row_group(group, columns=["input_ids", "target_mask", "source"])


class StreamedBatches:
    """One worker's micro-batches from its shard of the stream: each epoch a new pass (rows shuffled within a
    buffer, seeded by epoch), cut at the planned number of micro-batches; a resumed run skips the ones trained."""

    def __init__(self, shard: Any, batch_size: int, seed: int):
        self.shard, self.batch_size, self.seed = shard, batch_size, seed
        self.epoch: int | None = None
        self.batches: Iterator[dict[str, Any]] | None = None

    def take(self, epoch: int, position: int, count: int) -> list[list[causal.Example]]:
        """Micro-batches [position, position + count) of `epoch`; calls come in order within an epoch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches = iter(self.shard.iter_batches(
                batch_size=self.batch_size, batch_format="numpy", drop_last=True,
                local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS, local_shuffle_seed=self.seed + epoch))
            for _ in range(position):
                self.next_batch()
        return [examples_from_columns(self.next_batch()) for _ in range(count)]

    def next_batch(self) -> dict[str, Any]:
        try:
            return next(self.batches)
        except StopIteration:
            raise TuneforgeError(f"the streamed data ran out in epoch {self.epoch + 1} before the planned steps; the "
                                 "prepared shards changed since the plan was made, delete them and start again") from None
