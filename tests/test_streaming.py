"""Datasets of many files (directories, globs, URIs, Parquet) and streamed ingest: Ray Data tokenizes into Parquet
shards that the training workers stream (tuneforge.data.sources, tuneforge.data.chunks,
tuneforge.data.streaming)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SAY_WORDS, chat_row, write_jsonl
from tuneforge.config import TrainConfig, load_config
from tuneforge.data import chunks, streaming
from tuneforge.data.prepare import prepare_causal
from tuneforge.data.sources import resolve_data
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.plan import make_plan


def say_rows(count: int, offset: int = 0) -> list[dict]:
    return [chat_row(f"Say {SAY_WORDS[(i + offset) % 4]} {i}.", f"{SAY_WORDS[(i + offset) % 4]} {i}") for i in range(count)]


def causal_config(tmp_path: Path, model_dir: Path, train_path: str, **overrides) -> TrainConfig:
    settings = dict(model_id=str(model_dir), train_path=train_path, output_dir=str(tmp_path / "runs"),
                    train_batch_size_per_device=4, precision="fp32", seed=3)
    settings.update(overrides)
    return TrainConfig(**settings)


# --- where rows live ---------------------------------------------------------------------------------------------


def test_a_directory_of_shards_a_glob_and_a_file_uri_name_the_same_files(tmp_path):
    shards = tmp_path / "shards"
    for name in ("b.jsonl", "a.jsonl", "nested/c.jsonl", "_SUCCESS", ".a.jsonl.crc", "_temporary/d.jsonl"):
        (shards / name).parent.mkdir(parents=True, exist_ok=True)
        (shards / name).write_text('{"text": "x"}\n')
    expected = [str(shards / name) for name in ("a.jsonl", "b.jsonl", "nested/c.jsonl")]
    assert list(resolve_data(str(shards), "train_path").paths) == expected
    assert list(resolve_data(f"file://{shards}", "train_path").paths) == expected
    assert list(resolve_data(str(shards / "*.jsonl"), "train_path").paths) == expected[:2]
    assert resolve_data(str(shards), "train_path").format == "jsonl"


@pytest.mark.parametrize(("layout", "message"), [
    ({"a.jsonl": "", "b.csv": ""}, r"mixes file types \(csv, jsonl\); keep one format per dataset"),
    ({"notes.txt": ""}, r"unsupported file type '\.txt'"),
    ({"_SUCCESS": ""}, r"directory holds no \.jsonl, \.csv or \.parquet file"),
])
def test_a_dataset_directory_that_cannot_be_read_says_why(tmp_path, layout, message):
    for name, text in layout.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        resolve_data(str(tmp_path), "train_path")


def test_missing_paths_globs_and_unknown_filesystems_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match=r"train_path glob matches no file"):
        resolve_data(str(tmp_path / "*.jsonl"), "train_path")
    with pytest.raises(DataError, match=r"train_path not found"):
        resolve_data(f"file://{tmp_path}/missing", "train_path")
    with pytest.raises(DataError, match=r"nosuch://bucket/x: cannot open train_path through pyarrow's 'nosuch' "
                                        r"filesystem .*check the URI"):
        resolve_data("nosuch://bucket/x", "train_path")


def test_uris_in_a_config_are_kept_as_written_and_globs_resolve_beside_the_config(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "part-0.jsonl", say_rows(2))
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("model_id: m\ntrain_path: s3://bucket/chats/\nvalid_path: data/*.jsonl\n")
    config = load_config(config_file)
    assert config.train_path == "s3://bucket/chats/"
    assert config.valid_path == str(tmp_path / "data" / "*.jsonl")


def test_max_steps_plans_exactly_that_many_steps_across_a_cut_epoch():
    config = TrainConfig(model_id="m", train_path="t.jsonl", train_batch_size_per_device=4, max_steps=7,
                         max_num_checkpoints=2)
    plan = make_plan(config, train_rows=12)  # 3 steps per epoch
    assert (plan.total_steps, plan.num_epochs, plan.event_steps) == (7, 3, (4, 7))


# --- many files in memory ----------------------------------------------------------------------------------------


def test_rows_of_every_shard_and_format_are_read_and_errors_name_the_shard(tmp_path, smol_tokenizer, tiny_llama_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "a.jsonl", say_rows(6))
    write_jsonl(shards / "b.jsonl", say_rows(5, offset=1))
    config = causal_config(tmp_path, tiny_llama_dir, str(shards), valid_split=0.0)
    data = prepare_causal(config, smol_tokenizer, 512)
    assert len(data.train) == 11
    assert {example.source.rsplit(":", 1)[0] for example in data.train} == {str(shards / "a.jsonl"), str(shards / "b.jsonl")}

    tables = tmp_path / "tables"
    tables.mkdir()
    pq.write_table(pa.Table.from_pylist(say_rows(6)), tables / "a.parquet")
    pq.write_table(pa.Table.from_pylist(say_rows(5, offset=1)), tables / "b.parquet")
    from_parquet = prepare_causal(config.model_copy(update={"train_path": str(tables)}), smol_tokenizer, 512)
    assert [e.input_ids.tolist() for e in from_parquet.train] == [e.input_ids.tolist() for e in data.train]

    bad = say_rows(5)
    bad[2]["messages"][0]["role"] = "narrator"
    write_jsonl(shards / "b.jsonl", bad)
    with pytest.raises(DataError, match=r"shards/b\.jsonl:3: messages\[0\] has role 'narrator'"):
        prepare_causal(config, smol_tokenizer, 512)


def test_tasks_that_read_one_file_refuse_a_directory_with_one_line(tmp_path):
    from tuneforge.train.preflight import check_data_files

    config = TrainConfig(model_id="m", task="classification", train_path=str(tmp_path), text_fields=["text"],
                         label_field="label")
    with pytest.raises(DataError, match=r"the classification task reads one file; directories, globs and URIs"):
        check_data_files(config)


# --- streamed: Ray Data preparation --------------------------------------------------------------------------------


def test_line_spans_cut_after_newlines_and_number_every_line(tmp_path, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 100)
    monkeypatch.setattr(chunks, "SCAN_BYTES", 64)
    lines = [json.dumps({"text": "w" * (7 * i % 45)}) for i in range(60)]
    for ending in ("\n", ""):
        path = tmp_path / f"rows{len(ending)}.jsonl"
        raw = ("\n".join(lines) + ending).encode()
        path.write_bytes(raw)
        files = resolve_data(str(path), "train_path")
        spans, total = chunks.line_spans(files, files.paths[0])
        assert total == 60
        assert b"".join(raw[start:end] for start, end, _ in spans) == raw
        assert len(spans) > 5
        for start, end, first_line in spans:
            assert first_line == raw[:start].count(b"\n") + 1
            assert end == len(raw) or raw[end - 1:end] == b"\n"


@pytest.fixture
def shards(tmp_path):
    """Two JSONL shards (80 + 70 rows) and a validation file."""
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", say_rows(80))
    write_jsonl(folder / "b.jsonl", say_rows(70, offset=2))
    write_jsonl(tmp_path / "valid.jsonl", say_rows(8, offset=1))
    return folder


def test_data_streams_when_asked_or_over_the_size_threshold(tmp_path, shards, monkeypatch):
    config = TrainConfig(model_id="m", train_path=str(shards))
    assert not streaming.wants_streaming(config)
    monkeypatch.setattr(streaming, "STREAMING_THRESHOLD_BYTES", 1000)  # the two shards hold ~9 KB
    assert streaming.wants_streaming(config)
    assert not streaming.wants_streaming(config.model_copy(update={"streaming": False}))


def read_streamed(data) -> dict[str, tuple[list[int], list[bool]]]:
    import pyarrow.parquet as pq

    rows = {}
    for path in data.stream.files:
        for example in streaming.examples_from_columns(pq.read_table(path).to_pydict()):
            rows[example.source] = (example.input_ids.tolist(), example.target_mask.tolist())
    return rows


def test_streamed_preparation_tokenizes_every_row_as_in_memory_and_is_reused(
        ray_session, tmp_path, shards, smol_tokenizer, tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 2048)  # several chunks per file: several Ray Data tasks
    config = causal_config(tmp_path, tiny_llama_dir, str(shards), valid_path=str(tmp_path / "valid.jsonl"),
                           context_length=40)
    in_memory = prepare_causal(config, smol_tokenizer, 512)
    events = []
    streamed = streaming.prepare_streamed_causal(config, smol_tokenizer, 512, progress=events.append)

    chunk_count = len(events) - 1  # one event before the first chunk, then one per chunk as it finishes
    assert [event["done"] for event in events] == list(range(chunk_count + 1))
    assert {event["total"] for event in events} == {chunk_count} and events[-1]["rows"] == 150
    assert streamed.train == [] and streamed.stream.rows == len(in_memory.train) == 150
    assert len(streamed.stream.files) > 2
    expected = {e.source: (e.input_ids.tolist(), e.target_mask.tolist()) for e in in_memory.train}
    assert read_streamed(streamed) == expected
    assert [e.input_ids.tolist() for e in streamed.valid] == [e.input_ids.tolist() for e in in_memory.valid]
    assert streamed.stats["train"].rows == 150 and streamed.stats["train"].target_tokens == sum(
        int(e.target_mask.sum()) for e in in_memory.train)

    summary = Path(streamed.stream.directory).parent / "summary.json"
    written = summary.stat().st_mtime_ns
    again = streaming.prepare_streamed_causal(config, smol_tokenizer, 512)
    assert summary.stat().st_mtime_ns == written and again.stream.files == streamed.stream.files


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_csv_and_parquet_shards_stream_like_they_read_in_memory(
        ray_session, tmp_path, smol_tokenizer, tiny_llama_dir, file_format):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder = tmp_path / "tables"
    folder.mkdir()
    for part in range(2):
        rows = [{"prompt": f"Spell {i}:", "completion": " " + " ".join(str(i + part))} for i in range(30)]
        table = pa.Table.from_pylist(rows)
        if file_format == "csv":
            pacsv.write_csv(table, folder / f"part-{part}.csv")
        else:
            pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=7)  # 5 row groups: 5 chunks
    config = causal_config(tmp_path, tiny_llama_dir, str(folder), valid_split=0.0)
    in_memory = prepare_causal(config, smol_tokenizer, 512)
    streamed = streaming.prepare_streamed_causal(config, smol_tokenizer, 512)
    assert streamed.context_length == in_memory.context_length  # the sample reads past the first row group
    assert in_memory.shape == streamed.shape == "prompt_completion"
    assert read_streamed(streamed) == {e.source: (e.input_ids.tolist(), e.target_mask.tolist()) for e in in_memory.train}
    assert len(streamed.stream.files) == (2 if file_format == "csv" else 10)


def test_a_bad_row_deep_in_a_streamed_shard_is_named_by_file_and_line(
        ray_session, tmp_path, shards, smol_tokenizer, tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 2048)
    rows = say_rows(70, offset=2)
    rows[56]["messages"][1]["content"] = "   "
    write_jsonl(shards / "b.jsonl", rows)
    config = causal_config(tmp_path, tiny_llama_dir, str(shards), streaming=True, valid_split=0.0)
    with pytest.raises(DataError, match=r"shards/b\.jsonl:57: messages\[1\] is an empty assistant reply"):
        streaming.prepare_streamed_causal(config, smol_tokenizer, 512)
    assert not list((tmp_path / "runs" / streaming.CACHE_DIR).iterdir())  # nothing half-written left behind


def test_streamed_hold_out_is_a_seeded_disjoint_share_of_the_rows(
        ray_session, tmp_path, shards, smol_tokenizer, tiny_llama_dir):
    config = causal_config(tmp_path, tiny_llama_dir, str(shards), streaming=True, valid_split=0.2)
    data = streaming.prepare_streamed_causal(config, smol_tokenizer, 512)
    train_sources = set(read_streamed(data))
    valid_sources = {example.source for example in data.valid}
    assert not train_sources & valid_sources
    assert len(train_sources) + len(valid_sources) == 150
    assert 15 <= len(valid_sources) <= 45  # about 30: each row is held out with probability 0.2
    assert len(data.valid_rows) == len(valid_sources)


def test_preparation_failures_inside_ray_surface_as_the_users_error():
    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("ray.exceptions.RayTaskError(UserCodeException): long traceback")
            self.cause = cause

    inner = DataError("rows.jsonl:9: invalid JSON")
    assert streaming.data_error_inside(Wrapped(Wrapped(inner))) is inner
    assert "preparing the streamed data failed" in str(streaming.data_error_inside(Wrapped(ValueError("x"))))
    assert isinstance(streaming.data_error_inside(RuntimeError("boom")), TuneforgeError)


# --- streamed: training --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_streamed_run_learns_and_resumes_on_the_same_batches(ray_session, tmp_path, shards, tiny_llama_dir):
    """One worker streams its shard in a fixed order: a run interrupted after its first checkpoint and resumed
    trains every step on the same rows as the uninterrupted run (per-step losses equal), and ends where it does."""
    from ray.train import UserCallback

    from tests.helpers import train_tiny_causal
    from tests.test_cli import tuneforge_here
    from tuneforge.rundir import RunDir

    class CrashAfterFirstCheckpoint(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            raise RuntimeError("simulated crash")

    data = {"train": shards, "valid": tmp_path / "valid.jsonl"}
    settings = dict(streaming=True, num_epochs=2, learning_rate=2e-2, max_num_checkpoints=2,
                    lora_config={"r": 4, "lora_alpha": 8})
    whole = train_tiny_causal(tiny_llama_dir, data, tmp_path / "runs" / "whole", **settings)
    steps = [row for row in RunDir(whole.run_dir).metrics() if row["type"] == "step"]
    assert whole.results["steps"] == len(steps) == 2 * (150 // 4)
    assert steps[-1]["loss"] < steps[0]["loss"] / 2
    assert whole.results["data"]["rows"] == 150

    cut = RunDir(tmp_path / "runs" / "cut")
    with pytest.raises(Exception):  # noqa: B017 - the simulated crash, as Ray Train wraps it
        train_tiny_causal(tiny_llama_dir, data, cut.path, callbacks=[CrashAfterFirstCheckpoint()], **settings)
    assert cut.latest_step() == whole.results["steps"] // 2
    resumed = tuneforge_here("train", "--resume", str(cut.path))
    assert resumed.returncode == 0, resumed.stderr
    resumed_steps = [row for row in cut.metrics() if row["type"] == "step"]
    assert [row["step"] for row in resumed_steps] == [row["step"] for row in steps]
    assert np.allclose([row["loss"] for row in resumed_steps], [row["loss"] for row in steps], atol=1e-5)
    final = json.loads(cut.results_file.read_text())["final_metrics"]["eval_loss"]
    assert abs(final - whole.final_metrics["eval_loss"]) < 1e-4


def test_the_progress_display_shows_the_preparation_then_training_as_separate_bars():
    from tuneforge.ui.progress import RichReporter

    reporter = RichReporter()
    for done in range(4):
        reporter.event({"type": "prepare", "done": done, "total": 3, "rows": 100 * done, "bytes": 3 * 2**20})
    reporter.event({"type": "start", "step": 0, "total_steps": 9, "precision": "fp32", "world_size": 1,
                    "device": "cpu", "trainable": {"trainable": 1, "total": 10}})
    reporter.event({"type": "step", "step": 2, "loss": 1.0, "tokens_per_second": 5.0, "lr": 1e-4})
    bars = {task.description: (task.completed, task.total, task.fields["stats"]) for task in reporter.progress.tasks}
    assert bars["tokenizing (Ray Data)"] == (3, 3, "300 rows · 3.0 MiB in all")
    assert bars["training"][:2] == (2, 9)
