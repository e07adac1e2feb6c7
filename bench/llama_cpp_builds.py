"""Benchmark: llama.cpp builds side by side on this machine (does each run here, and how fast).

Each candidate is a llama-cpp-python wheel (scripts/install_llama_cpp.sh keeps one per mode and CPU under
~/.cache/tuneforge/wheels). Each is unpacked into its own folder and run in its own process on the same Q8_0 GGUF of
the bundled SmolLM2 (the file `tuneforge doctor` writes): prompt processing and greedy generation tokens/s, median
of --repeats. A build that dies on this CPU is reported with its signal instead of taking the benchmark down.

    .venv/bin/python bench/llama_cpp_builds.py WHEEL [WHEEL ...] [--tokens 64] [--repeats 3]

Build a candidate without installing it, e.g. the portable one:
    TUNEFORGE_WHEELHOUSE=/tmp/wh scripts/install_llama_cpp.sh .venv/bin/python portable
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, statistics, sys, time
import llama_cpp
path, tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=%(threads)d, verbose=False)
prompt = llm.tokenize(b"Meeting notes: Priya will send the revised budget by May 3. Tomas books the venue. " * 3)
prefill, decode = [], []
for _ in range(repeats):
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prefill.append(len(prompt) / (time.perf_counter() - started))
    started, made = time.perf_counter(), 0
    for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        made += 1
        if made >= tokens:
            break
    decode.append(made / (time.perf_counter() - started))
info = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"prefill": statistics.median(prefill), "decode": statistics.median(decode),
                  "amx": "AMX_INT8 = 1" in info, "avx512": "AVX512 = 1" in info}))
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="+", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def smoke_model() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneforge.doctor import smoke_model as doctor_model

    return doctor_model()


def measure(wheel: Path, model: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="llama-build-") as folder:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
        env = {**os.environ, "PYTHONPATH": folder}
        code = MEASURE % {"threads": os.cpu_count() or 1}
        command = [sys.executable, "-c", code, str(model), str(args.tokens), str(args.repeats)]
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode < 0:
        return {"error": signal.Signals(-done.returncode).name}
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def label(wheel: Path) -> str:
    """The mode scripts/install_llama_cpp.sh recorded beside the wheel, else the wheel's folder."""
    from tuneforge.doctor import read_build_record

    build = wheel.parent / "BUILD"
    if build.is_file():
        return f"{read_build_record(build).get('mode')} ({wheel.parent.name[-16:]})"
    return wheel.parent.name


def main() -> None:
    args = parse_args()
    model = smoke_model()
    print(f"model: {model.name}  threads: {os.cpu_count()}  generated tokens: {args.tokens}  repeats: {args.repeats}")
    print(f"{'build':<48} {'prompt tok/s':>13} {'gen tok/s':>10}  notes")
    for wheel in args.wheels:
        result = measure(wheel, model, args)
        if "error" in result:
            print(f"{label(wheel):<48} {'-':>13} {'-':>10}  died: {result['error']}")
            continue
        notes = ", ".join(name for name, on in (("AVX-512", result["avx512"]), ("AMX", result["amx"])) if on)
        print(f"{label(wheel):<48} {result['prefill']:13.1f} {result['decode']:10.1f}  {notes or 'no AVX-512/AMX'}")


if __name__ == "__main__":
    main()
