"""Benchmark: what the playground page costs `tuneforge serve` — memory and time to ready, with and without `--no-ui`.

In one invocation, on one run (`--run`, default `make demo`'s runs/demo), `tuneforge serve RUN` is started as a user
starts it (its own process), alternating with and without `--no-ui` for `--rounds` rounds so drift hits both alike.
For each start: seconds from launch until /health answers (the replica has loaded the models and built the app, the
page's routes included), then after a short settle the memory of the whole process tree (the CLI, Ray's processes, the model replica): RSS summed
and PSS (shared pages counted once), read from /proc/PID/smaps_rollup as bench/train_vs_hf.py does. The page's
own bytes and its load time over HTTP are printed too. Targets (issue 31): <= +50 MB RSS and <= +1 s to ready.

    .venv/bin/python bench/ui_cost.py [--run runs/demo] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SETTLE_S = 5.0
READY_TIMEOUT_S = 300
TARGET_RSS_MB, TARGET_READY_S = 50.0, 1.0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def start_once(run: Path, with_ui: bool) -> dict:
    import psutil
    from serve_load import free_port
    from train_vs_hf import tree_memory

    port = free_port()
    command = [sys.executable, "-m", "tuneforge.cli", "serve", str(run), "--port", str(port)]
    if not with_ui:
        command.append("--no-ui")
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"tuneforge serve exited with {server.returncode}: run it by hand to see why")
            try:
                get(f"{url}/health")
                break
            except OSError:
                if time.perf_counter() - started > READY_TIMEOUT_S:
                    sys.exit(f"tuneforge serve was not ready after {READY_TIMEOUT_S} s")
                time.sleep(0.2)
        ready = time.perf_counter() - started
        page = {}
        if with_ui:
            began = time.perf_counter()
            sizes = [len(get(f"{url}{path}")) for path in ("/", "/ui/app.js", "/ui/style.css")]
            page = {"page_bytes": sum(sizes), "page_load_ms": 1000 * (time.perf_counter() - began)}
        time.sleep(SETTLE_S)
        rss, pss = tree_memory(psutil.Process(server.pid))
        return {"ready_s": ready, "rss_mb": rss / 2**20, "pss_mb": pss / 2**20, **page}
    finally:
        server.send_signal(signal.SIGINT)  # the CLI's clean stop: Serve drains, the local Ray goes down
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not args.run.exists():
        sys.exit(f"{args.run}: no such run (make demo trains runs/demo)")
    results: dict[str, list[dict]] = {"--no-ui": [], "with page": []}
    for round_ in range(args.rounds):
        for name, with_ui in (("--no-ui", False), ("with page", True)):
            result = start_once(args.run, with_ui)
            results[name].append(result)
            print(f"round {round_ + 1} {name:9}: ready {result['ready_s']:5.1f} s, RSS {result['rss_mb']:7.0f} MB, "
                  f"PSS {result['pss_mb']:7.0f} MB", flush=True)
    mean = {name: {key: statistics.mean(r[key] for r in rows) for key in ("ready_s", "rss_mb", "pss_mb")}
            for name, rows in results.items()}
    page = results["with page"][-1]
    print(f"page: {page['page_bytes']} bytes in 3 files, loaded in {page['page_load_ms']:.0f} ms")
    extra_ready = mean["with page"]["ready_s"] - mean["--no-ui"]["ready_s"]
    extra_rss = mean["with page"]["rss_mb"] - mean["--no-ui"]["rss_mb"]
    extra_pss = mean["with page"]["pss_mb"] - mean["--no-ui"]["pss_mb"]
    print(f"the page costs {extra_rss:+.1f} MB RSS ({extra_pss:+.1f} MB PSS) and {extra_ready:+.2f} s to ready "
          f"(means of {args.rounds} starts each; targets <= +{TARGET_RSS_MB:.0f} MB, <= +{TARGET_READY_S:.0f} s): "
          f"{'met' if extra_rss <= TARGET_RSS_MB and extra_ready <= TARGET_READY_S else 'NOT met'}")


if __name__ == "__main__":
    main()
