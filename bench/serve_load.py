"""Benchmark: `tuneforge serve` (torch backend, a LoRA run over its base) under concurrent load, with Ray Serve's
dynamic batching and without it, in one invocation.

For each server (`--max-batch-size 8`, then 1) and each concurrency level, the official `openai` client sends chat
requests (greedy, `max_tokens` fixed) from that many threads and measures requests/s, generated tokens/s, p50/p95
latency, and the time to the first streamed token (a streamed request per thread at the same concurrency). The
last line states the batched/unbatched generated-tokens/s ratio at concurrency 8 (target >= 2.0x) and the failures.

    .venv/bin/python bench/serve_load.py [--run runs/demo] [--levels 1,4,8,16] [--max-tokens 32]

Not measured yet: the GGUF (llama.cpp) backend and llama-cpp-python's own server as an anchor (the issue's first
target), which need the GGUF backend in `tuneforge serve`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import statistics
import sys
import time
from pathlib import Path

PROMPTS = ["Book a call with Aiko in Oslo on June 2 about hiring.",
           "Set up a meeting with Priya in Lisbon on May 3 about pricing.",
           "Schedule time with Mateo in Denver on July 9 to review the roadmap.",
           "Meet Grace in Nairobi on April 14 about the vendor contract."]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_request(client, model: str, index: int, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    reply = client.chat.completions.create(model=model, max_tokens=max_tokens,
                                           messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}])
    return time.perf_counter() - started, reply.usage.completion_tokens


def first_token_seconds(client, model: str, index: int, max_tokens: int) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(model=model, max_tokens=max_tokens, stream=True,
                                            messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}])
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


def measure_server(run: Path, batch: int, levels: list[int], max_tokens: int) -> list[dict]:
    import openai

    from tuneforge.serve import ServeOptions, start, stop

    served = start([run], ServeOptions(port=free_port(), max_batch_size=batch))
    try:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=600)
        model = served.model_ids[0]
        one_request(client, model, 0, max_tokens)  # warm-up
        return [{"batch": batch, **load_level(client, model, level, max_tokens)} for level in levels]
    finally:
        stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a causal run (make demo trains runs/demo)")
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    if not args.run.is_dir():
        sys.exit(f"{args.run}: no such run; train one first (make demo)")
    levels = [int(level) for level in args.levels.split(",")]
    rows = []
    for batch in (8, 1):
        rows += measure_server(args.run, batch, levels, args.max_tokens)
    print(f"{'batch':>5} {'conc':>4} {'req':>4} {'fail':>4} {'req/s':>7} {'tok/s':>7} {'p50 s':>6} {'p95 s':>6} "
          f"{'TTFT s':>6}")
    for row in rows:
        print(f"{row['batch']:>5} {row['concurrency']:>4} {row['requests']:>4} {row['failed']:>4} "
              f"{row['requests_per_s']:7.2f} {row['tokens_per_s']:7.1f} {row['p50_s']:6.2f} {row['p95_s']:6.2f} "
              f"{row['ttft_s']:6.2f}")
    at = {(row["batch"], row["concurrency"]): row for row in rows}
    level = 8 if 8 in levels else levels[-1]
    ratio = at[(8, level)]["tokens_per_s"] / at[(1, level)]["tokens_per_s"]
    failed = sum(row["failed"] for row in rows)
    print(f"batched / unbatched generated tokens/s at concurrency {level}: {ratio:.2f}× (target 2.0×: "
          f"{'met' if ratio >= 2.0 else 'NOT met'}); failed requests: {failed}")


if __name__ == "__main__":
    main()
