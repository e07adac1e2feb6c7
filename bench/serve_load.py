"""Benchmark: `tuneforge serve` under concurrent load, both backends, with llama-cpp-python's own server as anchor.

In one invocation, on one run (`--run`, a LoRA run such as `make demo`'s runs/demo):
- torch backend (the adapter over its base) with Ray Serve's dynamic batching (`--max-batch-size 8`) and without (1);
- GGUF backend: the run exported as Q8_0 GGUF (RUN/export/model-q8_0.gguf, exported first if missing) on llama.cpp;
- anchor: the same GGUF behind `python -m llama_cpp.server`, same threads and context.
For each server and concurrency level, the official `openai` client sends chat requests (greedy, `max_tokens` fixed)
from that many threads and measures requests/s, generated tokens/s, p50/p95 latency, and the time to the first
streamed token (one streamed request per thread at the same concurrency). The last lines state the two targets:
GGUF backend / anchor tokens/s at concurrency 4 (>= 0.8x) and torch batched / unbatched at concurrency 8 (>= 2.0x),
and the failed requests (target 0).

    .venv/bin/python bench/serve_load.py [--run runs/demo] [--backends torch,gguf,anchor] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROMPTS = ["Book a call with Aiko in Oslo on June 2 about hiring.",
           "Set up a meeting with Priya in Lisbon on May 3 about pricing.",
           "Schedule time with Mateo in Denver on July 9 to review the roadmap.",
           "Meet Grace in Nairobi on April 14 about the vendor contract."]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


SYSTEM: list[str] = []  # the run's training system prompt, sent by every request so that all servers see one prompt


def messages(index: int) -> list[dict]:
    return [*({"role": "system", "content": text} for text in SYSTEM),
            {"role": "user", "content": PROMPTS[index % len(PROMPTS)]}]


def one_request(client, model: str, index: int, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    reply = client.chat.completions.create(model=model, max_tokens=max_tokens,
                                           messages=messages(index))
    return time.perf_counter() - started, reply.usage.completion_tokens


def first_token_seconds(client, model: str, index: int, max_tokens: int) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(model=model, max_tokens=max_tokens, stream=True,
                                            messages=messages(index))
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return first if first is not None else float("nan")


def load_level(client, model: str, concurrency: int, max_tokens: int) -> dict:
    count = max(8, 2 * concurrency)
    failures = 0
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        futures = [pool.submit(one_request, client, model, i, max_tokens) for i in range(count)]
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception:  # noqa: BLE001 - counted, and the run goes on
                failures += 1
        wall = time.perf_counter() - started
        ttft = list(pool.map(lambda i: first_token_seconds(client, model, i, max_tokens), range(concurrency)))
    latencies = sorted(seconds for seconds, _ in results)
    return {"concurrency": concurrency, "requests": count, "failed": failures,
            "requests_per_s": len(results) / wall, "tokens_per_s": sum(tokens for _, tokens in results) / wall,
            "p50_s": statistics.median(latencies), "p95_s": latencies[max(0, int(0.95 * len(latencies)) - 1)],
            "ttft_s": statistics.median(ttft)}


def measure(name: str, url: str, model: str, levels: list[int], max_tokens: int) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    one_request(client, model, 0, max_tokens)  # warm-up
    return [{"server": name, **load_level(client, model, level, max_tokens)} for level in levels]


def measure_tuneforge(name: str, path: Path, batch: int, levels: list[int], max_tokens: int) -> list[dict]:
    from tuneforge.serve import ServeOptions, start, stop

    served = start([path], ServeOptions(port=free_port(), max_batch_size=batch))
    try:
        return measure(name, served.url, served.model_ids[0], levels, max_tokens)
    finally:
        stop()


def measure_anchor(gguf: Path, threads: int, levels: list[int], max_tokens: int) -> list[dict]:
    """llama-cpp-python's OpenAI server on the same file, threads and context (the model's own)."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
               str(port), "--n_threads", str(threads), "--n_ctx", "0", "--model_alias", "anchor",
               "--interrupt_requests", "False"]  # its default cuts a running stream when the next request comes
    log = tempfile.TemporaryFile("w+")  # not a pipe: llama.cpp's start-up log would fill it and block the server
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                log.seek(0)
                sys.exit(f"llama_cpp.server exited: {log.read()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("llama_cpp.server did not start in 120 s")
                time.sleep(0.5)
        return measure("llama_cpp.server", url, "anchor", levels, max_tokens)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def q8_gguf(run: Path) -> Path:
    path = run / "export" / "model-q8_0.gguf"
    if not path.is_file():
        from tuneforge.export import ExportSettings, export_model

        print(f"exporting {run} as Q8_0 GGUF ...", flush=True)
        export_model(run, "gguf", ExportSettings(quant="q8_0", prompts=2, max_new_tokens=8))
    return path


def ratio(rows: list[dict], top: str, bottom: str, level: int) -> float | None:
    at = {(row["server"], row["concurrency"]): row for row in rows}
    if (top, level) not in at or (bottom, level) not in at:
        return None
    return at[(top, level)]["tokens_per_s"] / at[(bottom, level)]["tokens_per_s"]


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return f"{value:.2f}× (target {target}×: {'met' if value >= target else 'NOT met'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a causal run (make demo trains runs/demo)")
    parser.add_argument("--backends", default="torch,gguf,anchor")
    parser.add_argument("--torch-levels", default="1,4,8,16")
    parser.add_argument("--gguf-levels", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    if not args.run.is_dir():
        sys.exit(f"{args.run}: no such run; train one first (make demo)")
    from tuneforge.rundir import CheckpointMeta, resolve_checkpoint

    SYSTEM.extend(filter(None, [CheckpointMeta.read(resolve_checkpoint(args.run)).system_prompt]))
    backends = set(args.backends.split(","))
    torch_levels = [int(level) for level in args.torch_levels.split(",")]
    gguf_levels = [int(level) for level in args.gguf_levels.split(",")]
    threads = os.cpu_count() or 1
    rows: list[dict] = []
    if backends & {"gguf", "anchor"}:
        gguf = q8_gguf(args.run)
        if "gguf" in backends:
            rows += measure_tuneforge("tuneforge gguf", gguf, 1, gguf_levels, args.max_tokens)
        if "anchor" in backends:
            rows += measure_anchor(gguf, threads, gguf_levels, args.max_tokens)
    if "torch" in backends:
        rows += measure_tuneforge("tuneforge torch batch 8", args.run, 8, torch_levels, args.max_tokens)
        rows += measure_tuneforge("tuneforge torch batch 1", args.run, 1, torch_levels, args.max_tokens)
    print("| server | concurrency | requests | failed | req/s | gen tok/s | p50 s | p95 s | TTFT s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['server']} | {row['concurrency']} | {row['requests']} | {row['failed']} | "
              f"{row['requests_per_s']:.2f} | {row['tokens_per_s']:.1f} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | "
              f"{row['ttft_s']:.2f} |")
    failed = sum(row["failed"] for row in rows)
    print(f"GGUF backend / llama_cpp.server tokens/s at concurrency 4: "
          f"{verdict(ratio(rows, 'tuneforge gguf', 'llama_cpp.server', 4), 0.8)}")
    print(f"torch batched / unbatched tokens/s at concurrency 8: "
          f"{verdict(ratio(rows, 'tuneforge torch batch 8', 'tuneforge torch batch 1', 8), 2.0)}")
    print(f"failed requests: {failed}")


if __name__ == "__main__":
    main()
