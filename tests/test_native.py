"""Native steps run in a child process: a crash there becomes one error line naming the step and the signal."""

from __future__ import annotations

import json

import pytest

from tests.helpers import count_then_die, die_of
from tuneforge.errors import TuneforgeError
from tuneforge.native import NativeCrash, NativeWorker, run_isolated


@pytest.mark.parametrize(("signal_name", "meaning"), [("SIGILL", "illegal instruction"),
                                                      ("SIGSEGV", "segmentation fault"), ("SIGABRT", "aborted")])
def test_a_native_crash_becomes_one_error_naming_step_and_signal(signal_name, meaning):
    with pytest.raises(NativeCrash) as raised:
        run_isolated("the smoke test", die_of, signal_name)
    message = str(raised.value)
    assert f"during the smoke test ({signal_name}, {meaning}" in message
    assert "tuneforge doctor" in message and "\n" not in message
    assert raised.value.signal_name == signal_name


def test_results_and_exceptions_cross_the_process_boundary():
    assert run_isolated("a sum", sum, [1, 2, 3]) == 6
    with pytest.raises(ValueError, match="invalid literal"):
        run_isolated("a parse", int, "seven")


def test_a_worker_keeps_serving_and_a_stream_ends_in_the_crash():
    with NativeWorker("streaming") as worker:
        assert worker.call(sorted, [3, 1, 2]) == [1, 2, 3]
        assert list(worker.stream(iter, [1, 2])) == [1, 2]
        received = []
        with pytest.raises(NativeCrash, match="SIGABRT"):
            for item in worker.stream(count_then_die, 3):
                received.append(item)
        assert received == [0, 1, 2]  # what was streamed before the crash arrived
        with pytest.raises(NativeCrash):  # a dead worker answers every later call with the same crash
            worker.call(sorted, [1])


def test_a_crash_in_the_parity_check_keeps_the_gguf_and_reports_why(monkeypatch, tmp_path, tiny_lora_run):
    pytest.importorskip("llama_cpp")
    from tests.helpers import die_of_sigill
    from tuneforge.export import ExportSettings, export_model

    export = tmp_path / "export"  # not the shared run's own export/, which other tests check
    monkeypatch.setattr("tuneforge.export.parity.llama_cpp_checks", die_of_sigill)
    with pytest.raises(TuneforgeError) as raised:
        export_model(tiny_lora_run, "gguf", ExportSettings(quant="q8_0", output_dir=export, prompts=4, max_new_tokens=8))
    message = str(raised.value)
    assert "during the GGUF parity check (SIGILL" in message and "model-q8_0.gguf was written and is kept" in message
    assert (export / "model-q8_0.gguf").stat().st_size > 0 and (export / "Modelfile.q8_0").is_file()
    report = json.loads((export / "export_report.json").read_text())["gguf-q8_0"]
    assert report["parity"] == {"status": "not run", "reason": report["parity"]["reason"]}
    assert "SIGILL" in report["parity"]["reason"]


def test_the_cli_turns_a_native_crash_into_one_line_and_a_non_zero_exit(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    from typer.testing import CliRunner

    from tests.helpers import die_of_sigill
    from tuneforge.cli import app

    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")  # never opened: the child dies first
    monkeypatch.setattr("tuneforge.gguf_chat.load", die_of_sigill)
    result = CliRunner().invoke(app, ["generate", "--gguf", str(model), "--prompt", "hi"])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "GGUF generation (SIGILL" in lines[0] and "tuneforge doctor" in lines[0]
