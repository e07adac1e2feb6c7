"""Small builders for test data and configs."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


def chat_row(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def table_rows(text: str) -> dict[str, str]:
    """{key: value} from the two-column key/value tables a command printed (Rich box lines `│ key │ value │`)."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def table_lines(text: str) -> list[list[str]]:
    """The cells of every row of the tables a command printed (Rich box lines `│ a │ b │ ... │`)."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.count("│") >= 3]


def write_csv(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def rows(n_per_class: dict[str, int]) -> list[dict]:
    """Classification rows (title, body, tag), n of each tag."""
    return [{"title": f"{tag} item {i}", "body": f"about {tag}", "tag": tag}
            for tag, n in n_per_class.items() for i in range(n)]


def config_for(path: Path, **overrides):
    """A classification TrainConfig on MiniLM over a CSV of `rows`."""
    from tuneforge.config import TrainConfig

    settings = dict(task="classification", model_id="minilm-l6", train_path=str(path), text_fields=["title", "body"],
                    label_field="tag", valid_split=0.25)
    settings.update(overrides)
    return TrainConfig(**settings)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def save_config(config, path: Path) -> Path:
    """A TrainConfig as the YAML file a CLI run reads."""
    import yaml

    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    return path


def tuneforge_cli(*args: str, **kwargs):
    """`tuneforge ARGS` in a process of its own (its own session: a SIGKILL reaches it alone)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "tuneforge.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def die_of(signal_name: str, *_args, **_kwargs) -> None:
    """Stands in for a native step that crashes: the process dies of `signal_name`, as llama.cpp would."""
    import os
    import signal

    if signal_name == "SIGSEGV":
        import ctypes

        ctypes.string_at(0)  # a real invalid read, not a raised signal
    os.kill(os.getpid(), getattr(signal, signal_name))


def die_of_sigill(*args, **kwargs) -> None:
    die_of("SIGILL")


def count_then_die(n: int):
    yield from range(n)
    die_of("SIGABRT")


SAY_WORDS = ("apple", "river", "cloud", "stone")  # conftest's tiny_chat_data: "Say apple." -> "apple", ...


def train_tiny_causal(model_dir: Path, data: dict[str, Path], run_dir: Path, *, callbacks: list | None = None,
                      **overrides):
    """A tiny causal run trained by the real entry point into `run_dir` (batch 4, fp32, seed 1, best checkpoint
    kept); `overrides` are TrainConfig fields."""
    from tuneforge.config import TrainConfig
    from tuneforge.train import train

    settings = dict(model_id=str(model_dir), train_path=str(data["train"]), valid_path=str(data["valid"]),
                    train_batch_size_per_device=4, eval_batch_size_per_device=4, num_warmup_steps=0,
                    num_checkpoints_to_keep=1, precision="fp32", seed=1, output_dir=str(run_dir.parent),
                    run_name=run_dir.name)
    settings.update(overrides)
    return train(TrainConfig(**settings), run_dir=run_dir, callbacks=callbacks)


# --- serving: a real HTTP server on loopback -------------------------------------------------------------------


class Reply:
    def __init__(self, status_code: int, body: bytes, headers: dict[str, str] | None = None):
        self.status_code, self.body = status_code, body
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, *, json_body=None, content: bytes | None = None, key: str | None = None) -> Reply:
    """A raw request (the openai client refuses to send malformed bodies); `key`: sent as the bearer API key."""
    import urllib.error
    import urllib.request

    data = content if content is not None else (None if json_body is None else json.dumps(json_body).encode())
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackServer:
    """uvicorn on 127.0.0.1 in a thread, for one app."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the test server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# -- models served in the API and playground tests ----------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 12}}, "required": ["word"],
          "additionalProperties": False}
# Longer than SmolLM2's own default system prompt, so a prompt that carries it is the longer one.
SYSTEM_PROMPT = "You are a careful assistant: answer with the single word the user asks you to say, and nothing else."
TAGS = ["O", "B-CITY", "B-PERSON", "I-CITY", "I-PERSON"]
TAGGER_CONTEXT = 24  # tokens: a long text is tagged in several windows


def zeroed_adapter_copy(run: Path, target: Path) -> Path:
    """A second run over the same base whose adapter changes nothing (lora_B = 0): it must answer like the base."""
    import torch
    from safetensors.torch import load_file, save_file

    from tuneforge.rundir import resolve_checkpoint

    shutil.copytree(run, target)
    weights_path = resolve_checkpoint(target) / "adapter_model.safetensors"
    weights = load_file(str(weights_path))
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()}, str(weights_path))
    return target


def prompted_copy(run: Path, target: Path) -> Path:
    """A copy of a run whose checkpoint says it trained with a system prompt and inferred an answer schema."""
    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint

    shutil.copytree(run, target)
    checkpoint = resolve_checkpoint(target)
    meta = CheckpointMeta.read(checkpoint)
    meta.model_copy(update={"system_prompt": SYSTEM_PROMPT, "answer_schema": SCHEMA}).write(checkpoint)
    return target
