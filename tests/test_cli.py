"""The command line: one clear line and a non-zero exit for bad input, no traceback, nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import chat_row, table_rows, write_config, write_jsonl


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
        (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}'],
         "t.jsonl:1: messages[1] is an empty assistant reply"),
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
    assert_one_clear_line(tuneforge_here("train", str(cfg)), f"{cfg}:5: lora_config.target_modules: qq_proj not in",
                          "its layers LoRA can target:", "down_proj")
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def ray_must_not_start(monkeypatch):
    import ray

    def start(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", start)


@pytest.mark.usefixtures("ray_must_not_start")
def test_too_many_workers_for_this_machine_is_refused_before_ray_starts(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("a", "b")] * 8)
    cfg = write_config(tmp_path / "c.yaml", config_text(train, tmp_path / "runs",
                                                        "num_devices: 64\nworker_resources: {CPU: 1}\nvalid_split: 0\n"))
    assert_one_clear_line(tuneforge_here("train", str(cfg)), f"{cfg}:4: num_devices 64", "this machine has")
    assert not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("ray_must_not_start")
def test_an_output_dir_that_cannot_be_created_is_refused_before_ray_starts(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("a", "b")] * 8)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = write_config(tmp_path / "c.yaml", config_text(train, blocker / "runs", "valid_split: 0\n"))
    assert_one_clear_line(tuneforge_here("train", str(cfg)), f"{cfg}:3: cannot create {blocker}/runs/c",
                          f"{blocker} is a file, not a directory")


def test_missing_config_and_debug_shows_traceback(tmp_path):
    assert_one_clear_line(tuneforge("train", str(tmp_path / "nope.yaml")), "config file not found")
    result = tuneforge("--debug", "train", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.usefixtures("wide_terminal")
def test_plan_prints_statistics_and_writes_the_schedule_plot(tmp_path):
    png = tmp_path / "lr.png"
    result = tuneforge_here("plan", "configs/demo.yaml", "--png", str(png))
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    # demo.yaml: 240 + 48 rows, batch 8 on one device, 2 epochs, 3 checkpoint events, 5 warm-up steps
    assert rows["train rows"] == "240" and rows["valid rows"] == "48" and rows["shape"] == "chat", result.stdout
    assert rows["rows per optimizer step"] == "8" and rows["batches"] == "padding-free (rows end to end)"
    assert rows["steps per epoch"] == "30" and rows["epochs"] == "2" and rows["total steps"] == "60"
    assert rows["warm-up steps"] == "5"
    assert rows["validation + checkpoint at steps"] == "20, 40, 60"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_generate_needs_a_prompt(tmp_path):
    assert_one_clear_line(tuneforge_here("generate", str(tmp_path)), "--prompt")


def test_generate_from_a_run_without_checkpoint(tmp_path):
    (tmp_path / "config.yaml").write_text("model_id: m\n")
    assert_one_clear_line(tuneforge_here("generate", str(tmp_path), "--prompt", "hi"), "no checkpoint yet")


def test_generate_from_a_directory_that_is_not_a_run(tmp_path):
    assert_one_clear_line(tuneforge_here("generate", str(tmp_path), "--prompt", "hi"),
                          f"{tmp_path}: not a tuneforge run or checkpoint directory (no config.yaml, no tuneforge.json)")


def test_an_unknown_run_under_runs_is_not_looked_up_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = tuneforge_here("generate", "runs/nope", "--prompt", "hi")
    assert_one_clear_line(result, "runs/nope: no such run, experiment or checkpoint directory;")
    assert "runs/runs" not in result.stderr


def test_option_errors_are_one_line_with_exit_code_2(tmp_path):
    result = tuneforge_here("generate", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "0")
    assert_one_clear_line(result, "Invalid value for '--max-new-tokens'", "generate --help")
    assert_one_clear_line(tuneforge_here("plan"), "Missing argument", "plan --help")


def test_a_directory_with_no_data_as_train_path_is_named_with_its_config_line_before_the_model_loads(
        tmp_path, monkeypatch):
    import tuneforge.models

    monkeypatch.setattr(tuneforge.models, "resolve_model", lambda *_: pytest.fail("the model was resolved"))
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "_SUCCESS").write_text("")
    cfg = write_config(tmp_path / "c.yaml", config_text(shards, tmp_path / "runs"))
    assert_one_clear_line(tuneforge_here("train", str(cfg)),
                          f"{cfg}:2: {shards}: train_path directory holds no .jsonl, .csv or .parquet file")


@pytest.mark.parametrize("task", ["causal_lm", "classification"])
def test_eval_refuses_a_missing_data_file_before_loading_the_model(tmp_path, monkeypatch, task):
    import json

    import tuneforge.models.loading

    monkeypatch.setattr(tuneforge.models.loading, "load_checkpoint", lambda *_, **__: pytest.fail("the model was loaded"))
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "tuneforge.json").write_text(json.dumps({"task": task, "model_id": "m"}))
    result = tuneforge_here("eval", str(checkpoint), "--data", str(tmp_path / "missing.jsonl"))
    assert_one_clear_line(result, "missing.jsonl: eval data file not found")


def test_runs_best_on_a_cut_short_best_run_json(tmp_path):
    search = tmp_path / "search"
    search.mkdir()
    (search / "tune_config.yaml").write_text("model_id: m\n")
    (search / "best_run.json").write_text('{"run_id": "trial_1", "objec')
    assert_one_clear_line(tuneforge_here("runs", "best", str(search)),
                          f"{search / 'best_run.json'}: not valid JSON", f"tuneforge tune --resume {search}")


def test_runs_best_on_a_training_run_says_it_is_not_a_search(tmp_path):
    (tmp_path / "config.yaml").write_text("model_id: m\n")
    result = tuneforge_here("runs", "best", str(tmp_path))
    assert_one_clear_line(result, "a training run, not a search", str(tmp_path / "best"), "runs list")
    assert "--resume" not in result.stderr


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


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "{cfg}", "--resume", "{tmp}"], ["give CONFIG or --resume RUN, not both", "drop {cfg}"]),
        (["train", "--resume", "{tmp}", "--name", "x"], ["--name names a new run"]),
        (["train", "--resume", "{tmp}", "--overwrite"], ["--overwrite replaces a run"]),
        (["tune", "--resume", "{tmp}", "--set", "learning_rate=0.1"], ["--set cannot change a resumed search"]),
        (["tune", "{cfg}", "--resume", "{tmp}"], ["give CONFIG or --resume EXPERIMENT, not both"]),
        (["generate", "{tmp}", "--prompt", "hi", "--lora", "a.gguf"], ["--lora applies a GGUF adapter and needs --gguf"]),
        (["generate", "{tmp}", "--prompt", "hi", "--output", "o.jsonl"], ["--output writes one line per --input row"]),
        (["generate", "{tmp}", "--prompt", "hi", "--input", "{cfg}"], ["give --prompt or --input, not both"]),
        (["generate", "{tmp}", "--gguf", "m.gguf", "--prompt", "hi"], ["give RUN or --gguf FILE, not both"]),
        (["generate", "--gguf", "m.gguf", "--prompt", "hi", "--compare-base"], ["--compare-base", "--gguf"]),
    ],
)
def test_options_that_would_be_ignored_are_refused(tmp_path, args, fragments):
    cfg = write_config(tmp_path / "c.yaml", config_text(tmp_path / "t.jsonl", tmp_path / "runs"))
    fill = {"cfg": str(cfg), "tmp": str(tmp_path)}
    result = tuneforge_here(*(arg.format(**fill) for arg in args))
    assert_one_clear_line(result, *(fragment.format(**fill) for fragment in fragments))
    assert not (tmp_path / "runs").exists()


def test_a_system_message_for_a_non_chat_run_is_refused_not_ignored(smol_dir):
    from tuneforge.errors import TuneforgeError
    from tuneforge.generate import GenerationSettings, Generator
    from tuneforge.models import load_tokenizer
    from tuneforge.rundir import CheckpointMeta

    generator = Generator(None, load_tokenizer(str(smol_dir)), CheckpointMeta(model_id="m", shape="prompt_completion"))
    assert generator.render("Lunch with Bob") == "Lunch with Bob"
    with pytest.raises(TuneforgeError, match=r"--system\) needs a chat run; .* prompt_completion rows"):
        generator.complete(["Lunch with Bob"], GenerationSettings(), system="Answer in JSON.")


@pytest.mark.parametrize(("args", "fragment"), [
    (["/nonexistent/run"], "no such run"),
    (["RUN", "--autoscale", "3:1"], "give MIN:MAX replicas"),
    (["RUN", "--api-key-env", "TUNEFORGE_TEST_UNSET_KEY"], "TUNEFORGE_TEST_UNSET_KEY"),
    (["RUN", "RUN"], "already served"),
    (["RUN", "--lora", "adapter.gguf"], "name exactly one .gguf file"),
    (["/nonexistent/model.gguf"], "no such GGUF file"),
])
def test_serve_refuses_bad_arguments_in_one_line_before_starting_ray(tiny_lora_run, args, fragment):
    result = tuneforge_here("serve", *[str(tiny_lora_run) if a == "RUN" else a for a in args])
    assert_one_clear_line(result, fragment)
