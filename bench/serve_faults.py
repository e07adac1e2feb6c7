"""Benchmark: `tuneforge serve` with two model replicas under steady load while one of them is killed.

One run (`--run`, e.g. `make demo`'s runs/demo) is served by Ray Serve with two replicas (`--backend torch`: the
adapter over its base; `gguf`: its Q8_0 GGUF export on llama.cpp, exported first if missing). `--clients` threads
(the official `openai` client, no retries of its own) each send chat requests one after another. After `--before`
seconds one replica gets SIGKILL (what the kernel's OOM killer or a native crash does); the load goes on for
`--after` seconds. A client that gets a 503 (the answer when no replica can take a request) sends the same request
again after 0.5 s, as its retry policy would; any other failure counts as a request lost.

Printed: requests answered, 503s seen, requests lost (target 0), p50/p95/max latency (a request's whole time,
retries included) of the requests started before the kill and of those started in the `--after` seconds after it,
and the seconds until Ray Serve had both replicas running again.

    .venv/bin/python bench/serve_faults.py [--run runs/demo] [--backend torch] [--clients 16] [--before 30]
        [--after 60] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import SYSTEM, free_port, messages, q8_gguf  # noqa: E402 - the bench folder's sibling

RETRY_AFTER_S = 0.5
REPLICA_PROCESS = "ServeReplica:tuneforge:models"


@dataclass
class Outcome:
    started: float
    seconds: float
    tries: int


@dataclass
class Load:
    client: object
    model: str
    max_tokens: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: list[Outcome] = field(default_factory=list)
    unavailable: int = 0  # 503s, each followed by a retry
    lost: list[str] = field(default_factory=list)

    def client_loop(self, index: int) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            tries = self.ask_until_answered(index)
            if tries:
                with self.lock:
                    self.answered.append(Outcome(started, time.perf_counter() - started, tries))
            index += 1

    def ask_until_answered(self, index: int) -> int:
        """Tries it took to get an answer, each 503 retried; 0 when the request was lost."""
        import openai

        tries = 0
        while True:
            tries += 1
            try:
                self.client.chat.completions.create(model=self.model, max_tokens=self.max_tokens,
                                                    messages=messages(index))
                return tries
            except openai.APIStatusError as exc:
                if exc.status_code != 503:
                    self.record_lost(f"{exc.status_code}: {exc.message[:120]}")
                    return 0
                with self.lock:
                    self.unavailable += 1
                time.sleep(RETRY_AFTER_S)
            except Exception as exc:  # noqa: BLE001 - a dropped connection, a timeout: a request lost
                self.record_lost(f"{type(exc).__name__}: {str(exc)[:120]}")
                return 0

    def record_lost(self, why: str) -> None:
        with self.lock:
            self.lost.append(why)


def replica_processes() -> list:
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if REPLICA_PROCESS in " ".join(p.info["cmdline"] or [])]


def running_replicas() -> int:
    from ray import serve

    from tuneforge.serve.server import APP_NAME

    try:
        states = serve.status().applications[APP_NAME].deployments["models"].replica_states
    except Exception:  # noqa: BLE001 - the controller is busy: not known this time
        return -1
    return int(states.get("RUNNING", 0))


def wait_until_both_run(killed_at: float, timeout: float) -> float | None:
    """Seconds from the kill until Serve reports two running replicas again (a new process, not the killed one)."""
    time.sleep(1.0)  # the controller has to notice the death first, or it still counts the dead replica
    while time.perf_counter() - killed_at < timeout:
        if running_replicas() == 2 and len(replica_processes()) == 2:
            return time.perf_counter() - killed_at
        time.sleep(0.25)
    return None


def latency_line(label: str, outcomes: list[Outcome]) -> str:
    if not outcomes:
        return f"| {label} | 0 | - | - | - | - |"
    seconds = sorted(o.seconds for o in outcomes)
    p95 = seconds[max(0, int(round(0.95 * len(seconds))) - 1)]
    retried = sum(o.tries > 1 for o in outcomes)
    return (f"| {label} | {len(seconds)} | {retried} | {statistics.median(seconds):.2f} | {p95:.2f} | "
            f"{seconds[-1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a causal run (make demo trains runs/demo)")
    parser.add_argument("--backend", choices=("torch", "gguf"), default="torch")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--before", type=float, default=30.0, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=60.0, help="seconds of load after it")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    if not args.run.is_dir():
        sys.exit(f"{args.run}: no such run; train one first (make demo)")
    import openai

    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint
    from tuneforge.serve import ServeOptions, start, stop

    SYSTEM.extend(filter(None, [CheckpointMeta.read(resolve_checkpoint(args.run)).system_prompt]))
    served_path = q8_gguf(args.run) if args.backend == "gguf" else args.run
    cpus = max(1.0, float((os.cpu_count() or 2) // 2))
    served = start([served_path], ServeOptions(port=free_port(), replicas=2, cpus_per_replica=cpus))
    try:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=300)
        load = Load(client, served.model_ids[0], args.max_tokens)
        client.chat.completions.create(model=load.model, max_tokens=args.max_tokens, messages=messages(0))  # warm-up
        threads = [threading.Thread(target=load.client_loop, args=(i,), daemon=True) for i in range(args.clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(args.before)
        victim = replica_processes()[0]
        killed_at = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)
        back_after = wait_until_both_run(killed_at, timeout=args.after)
        time.sleep(max(0.0, killed_at + args.after - time.perf_counter()))
        load.stop.set()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        stop()

    before = [o for o in load.answered if o.started < killed_at]
    after = [o for o in load.answered if killed_at <= o.started < killed_at + args.after]
    print(f"{args.backend} backend, 2 replicas × {cpus:g} CPU, {args.clients} clients, max_tokens {args.max_tokens}, "
          f"replica pid {victim.pid} killed {killed_at - began:.0f} s into the load")
    print("| requests started | answered | of them after a 503 | p50 s | p95 s | max s |")
    print("|---|---|---|---|---|---|")
    print(latency_line(f"before the kill ({args.before:.0f} s)", before))
    print(latency_line(f"in the {args.after:.0f} s after it", after))
    print(f"503s seen (each retried): {load.unavailable}; requests lost: {len(load.lost)} (target 0)"
          + (f" — first: {load.lost[0]}" if load.lost else ""))
    print("both replicas running again after "
          + (f"{back_after:.1f} s" if back_after is not None else f"more than {args.after:.0f} s"))


if __name__ == "__main__":
    main()
