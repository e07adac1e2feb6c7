"""The command line: one clear line and a non-zero exit for bad input, no traceback, nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import chat_row, write_config, write_jsonl


def tuneforge(*args: str) -> subprocess.CompletedProcess:
    """A real `tuneforge` process: exit code, stderr and the absence of a traceback as a user sees them."""
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, timeout=300)


def tuneforge_here(*args: str):
    """The same command in this process (no interpreter start-up): for checks that need no fresh process."""
    from typer.testing import CliRunner

    from tuneforge.cli import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def config_text(train_path, runs, extra="") -> str:
    return f"model_id: smollm2-135m-instruct\ntrain_path: {train_path}\noutput_dir: {runs}\n{extra}"


def assert_one_clear_line(result, *fragments):
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_key(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("a", "b")])
    cfg = write_config(tmp_path / "c.yaml", config_text(train, tmp_path / "runs", "num_epoch: 2\n"))
    result = tuneforge("train", str(cfg))
    assert_one_clear_line(result, f"{cfg}:4", "unknown key 'num_epoch'", "did you mean 'num_epochs'")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "{oops"],
         "t.jsonl:2: invalid JSON"),
        (['{"messages": [{"role": "user", "content": "no reply"}]}'], "t.jsonl:1: no assistant message"),
        ([], "t.jsonl: train_path file is empty"),
    ],
)
def test_bad_data_is_refused_before_anything_is_written(tmp_path, lines, fragment):
    train = write_jsonl(tmp_path / "t.jsonl", lines)
    cfg = write_config(tmp_path / "c.yaml", config_text(train, tmp_path / "runs", "valid_split: 0\n"))
    result = tuneforge_here("train", str(cfg))
    assert_one_clear_line(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_too_long_rows_refused_when_configured(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("hi", "yo"), chat_row("word " * 100, "yo")])
    cfg = write_config(tmp_path / "c.yaml", config_text(train, tmp_path / "runs",
                                                        "valid_split: 0\ncontext_length: 48\ntruncation: refuse\n"))
    assert_one_clear_line(tuneforge_here("train", str(cfg)), "t.jsonl:2: row is", "longer than context_length 48")


def test_bad_model_id(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("a", "b")])
    cfg = write_config(tmp_path / "c.yaml", f"model_id: ./no/such/model\ntrain_path: {train}\n")
    assert_one_clear_line(tuneforge_here("train", str(cfg)), "model_id './no/such/model'", "no such directory")


def test_bad_lora_target_is_refused_before_training(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("a", "b")] * 3)
    cfg = write_config(tmp_path / "c.yaml", config_text(train, tmp_path / "runs",
                                                        "lora_config:\n  target_modules: [qq_proj]\n"))
    assert_one_clear_line(tuneforge_here("train", str(cfg)), "lora_config:", "qq_proj")
    assert not (tmp_path / "runs").exists()


def test_too_many_workers_for_this_machine_is_refused_not_hung(tmp_path, ray_session):
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("a", "b")] * 8)
    cfg = write_config(tmp_path / "c.yaml", config_text(train, tmp_path / "runs",
                                                        "num_devices: 64\nworker_resources: {CPU: 1}\nvalid_split: 0\n"))
    assert_one_clear_line(tuneforge_here("train", str(cfg)), "num_devices 64", "this machine has")


def test_missing_config_and_debug_shows_traceback(tmp_path):
    assert_one_clear_line(tuneforge("train", str(tmp_path / "nope.yaml")), "config file not found")
    result = tuneforge("--debug", "train", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_plan_prints_statistics_and_writes_the_schedule_plot(tmp_path):
    png = tmp_path / "lr.png"
    result = tuneforge_here("plan", "configs/demo.yaml", "--png", str(png))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "train rows" in out and "240" in out
    assert "steps per epoch" in out and "30" in out
    assert "validation + checkpoint at steps" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_generate_needs_a_prompt(tmp_path):
    assert_one_clear_line(tuneforge_here("generate", str(tmp_path)), "--prompt")


def test_generate_from_a_path_without_checkpoint(tmp_path):
    assert_one_clear_line(tuneforge_here("generate", str(tmp_path), "--prompt", "hi"), "no checkpoint yet")


def test_an_unwritable_output_dir_is_one_line_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = tuneforge_here("plan", "configs/demo.yaml", "--set", f"output_dir={blocker}/runs")
    assert_one_clear_line(result, str(blocker))


def test_generate_input_rows_with_a_bad_role_name_the_line(tmp_path):
    from tuneforge.errors import DataError
    from tuneforge.generate import read_prompt_rows

    rows = write_jsonl(tmp_path / "in.jsonl", ['{"prompt": "fine"}', '{"messages": [{"role": "bot", "content": "x"}]}'])
    with pytest.raises(DataError, match=r"in\.jsonl:2: message with role 'bot' needs a role in system, user, assistant"):
        read_prompt_rows(rows)
