"""Benchmark: a chat JSONL bigger than the driver should hold (1 GB by default) trains for a few steps through
Ray Data streaming, with the driver's and the workers' memory watched from outside.

The data is generated once into bench/results/streaming/ (varied chat rows of about 1 KB). The run is a real
`tuneforge train CONFIG` process on the bundled SmolLM2 (LoRA, `max_steps` steps); a thread samples the peak RSS
(VmHWM) of the driver and of every Ray worker process while it runs. Printed: rows and bytes, the Ray Data
preparation (seconds, rows/s, tokens/s, MB/s, on all CPUs), the driver's peak RSS (target: under 1 GB), the peak
RSS of the tokenizing tasks' processes and of the training worker, and the steps trained.

    .venv/bin/python bench/streaming_ingest.py [--gigabytes 1.0] [--steps 4] [--keep]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "bench" / "results" / "streaming"
TOPICS = ("the quarterly budget", "a train timetable", "the garden", "a bug in the parser", "the team offsite",
          "a recipe for soup", "the new laptop", "the museum visit", "an invoice", "the running plan")
WORDS = ("alpha bridge copper delta ember forest granite harbor island juniper kettle lantern meadow nickel orchard "
         "pepper quartz river saddle timber umber velvet willow xenon yarrow zephyr").split()


def write_data(path: Path, target_bytes: int) -> int:
    """Chat rows of about 1 KB until the file reaches `target_bytes`; returns the row count."""
    rng = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        written = 0
        while written < target_bytes:
            topic = rng.choice(TOPICS)
            detail = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(60, 140)))
            row = {"messages": [{"role": "system", "content": "You are a concise assistant."},
                                {"role": "user", "content": f"Tell me about {topic}: {detail}"},
                                {"role": "assistant", "content": f"About {topic}: {answer}."}]}
            line = json.dumps(row) + "\n"
            handle.write(line)
            written += len(line)
            rows += 1
    partial.rename(path)
    return rows


class MemoryWatch:
    """Peak RSS (VmHWM) of the driver and of Ray's worker processes by role, sampled every 0.2 s."""

    def __init__(self, driver_pid: int):
        self.driver_pid = driver_pid
        self.peaks: dict[str, float] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            for process in psutil.process_iter(["pid", "cmdline"]):
                role = self.role(process)
                if role:
                    self.note(role, process.info["pid"])
            time.sleep(0.2)

    def role(self, process: psutil.Process) -> str | None:
        if process.info["pid"] == self.driver_pid:
            return "driver"
        title = " ".join(process.info["cmdline"] or [])
        if "prepare_chunks" in title:
            return "tokenizing task"
        if "RayTrainWorker" in title:
            return "training worker"
        if "read_shards" in title or "SplitCoordinator" in title:
            return "streaming reader"
        return None

    def note(self, role: str, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        megabytes = int(line.split()[1]) / 1024
                        self.peaks[role] = max(self.peaks.get(role, 0.0), megabytes)
        except OSError:
            pass

    def stop(self) -> dict[str, float]:
        self.stopping.set()
        self.thread.join()
        return self.peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the run directory (printed)")
    args = parser.parse_args()

    data = DATA_DIR / f"chat-{args.gigabytes:g}g.jsonl"
    if not data.is_file():
        started = time.time()
        rows = write_data(data, int(args.gigabytes * 10**9))
        print(f"wrote {data} ({rows} rows) in {time.time() - started:.0f} s")
    size = data.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="tuneforge-stream-bench-"))
    config = work / "stream.yaml"
    config.write_text(json.dumps({
        "model_id": "smollm2-135m-instruct", "train_path": str(data), "context_length": 512,
        "train_batch_size_per_device": 8, "eval_batch_size_per_device": 16, "max_steps": args.steps,
        "max_num_checkpoints": 1, "learning_rate": 4e-4, "num_warmup_steps": 0, "output_dir": str(work / "runs"),
        "run_name": "stream", "streaming": True, "valid_split": 0.0002, "lora_config": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
    }))
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "train", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watch = MemoryWatch(process.pid)
    _, errors = process.communicate()
    peaks = watch.stop()
    seconds = time.time() - started
    if process.returncode != 0:
        raise SystemExit(f"tuneforge exited with {process.returncode}: {errors.strip()[-2000:]}")
    summary = json.loads(next((work / "runs" / ".tuneforge-data").glob("*/summary.json")).read_text())
    results = json.loads((work / "runs" / "stream" / "results.json").read_text())
    prep = summary["seconds"]
    print(f"data: {data.name}, {size / 2**20:.0f} MiB, {summary['rows'] + summary['valid_rows']} rows "
          f"({summary['valid_rows']} held out for validation), {summary['chunks']} chunks")
    print(f"Ray Data preparation: {prep:.1f} s, {summary['rows'] / prep:.0f} rows/s, "
          f"{summary['tokens'] / prep:.0f} tokens/s, {size / 2**20 / prep:.1f} MiB/s ({psutil.cpu_count()} CPUs)")
    for role in ("driver", "tokenizing task", "streaming reader", "training worker"):
        if role in peaks:
            target = "  (target < 1024 MiB)" if role == "driver" else ""
            print(f"peak RSS {role}: {peaks[role]:.0f} MiB{target}")
    print(f"trained {results['steps']} steps, final eval_loss {results['final_metrics'].get('eval_loss')}, "
          f"{seconds:.0f} s in all")
    if args.keep:
        print(f"kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
