"""Benchmark: a LoRA run of the bundled SmolLM2, generated with torch (base + adapter, fp32) and as GGUF F16 / Q8_0 /
Q4_K_M through llama.cpp, in one invocation. Printed per format: file size, greedy tokens/s, peak RSS of a process
that only loads and generates, greedy-token agreement with the torch model (teacher-forced on its answers), and the
merged-vs-adapter max |logit difference|. Targets: Q8_0 >= 5x torch tokens/s with >= 90% agreement; max |dlogit|
<= 1e-3 in fp32.

    .venv/bin/python bench/export_speed.py [--run runs/demo]     # without --run, a short LoRA run is trained first
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    from tuneforge.train.worker import peak_rss_mb as measure

    return measure()
QUANTS = ("f16", "q8_0", "q4_k_m")
NEW_TOKENS = 48


def short_run(out: Path) -> Path:
    from tuneforge.config import load_config
    from tuneforge.train import train

    config = load_config(ROOT / "configs" / "demo.yaml", ["num_epochs=1", "max_num_checkpoints=1", f"output_dir={out}",
                                                          "run_name=bench"])
    return train(config).run_dir


def torch_child(run: str, queue: mp.Queue) -> None:
    from tuneforge.export.parity import torch_speed
    from tuneforge.fidelity import generation_check
    from tuneforge.generate import Generator
    from tuneforge.rundir import RunDir

    generator = Generator.from_path(run)
    probes = generation_check(generator, RunDir(run).validation_samples(), 4, 8).probes
    speed = torch_speed(generator.model, probes, NEW_TOKENS, generator.tokenizer.pad_token_id)
    queue.put({"tokens_per_second": speed, "peak_rss_mb": peak_rss_mb()})


def gguf_child(path: str, prompt_ids: list[list[int]], queue: mp.Queue) -> None:
    from tuneforge.export.parity import gguf_speed, open_gguf  # no torch in this process

    llm = open_gguf(Path(path))
    speed = gguf_speed(llm, prompt_ids, NEW_TOKENS)
    queue.put({"tokens_per_second": speed, "peak_rss_mb": peak_rss_mb()})


def prompt_token_ids(run: Path) -> list[list[int]]:
    """The validation prompts rendered and tokenized as the run does (chat template included)."""
    from tuneforge.fidelity import generation_check
    from tuneforge.generate import Generator
    from tuneforge.rundir import RunDir

    generator = Generator.from_path(run)
    return [probe.prompt_ids for probe in generation_check(generator, RunDir(run).validation_samples(), 4, 1).probes]


def in_child(target, *args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    from tuneforge.export import ExportSettings, export_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a LoRA run of smollm2-135m-instruct (default: train a short one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        run = args.run or short_run(Path(tmp))
        out = Path(tmp) / "export"
        merged = export_model(run, "merged", ExportSettings(output_dir=out, prompts=8))
        torch_row = in_child(torch_child, str(run))
        prompt_ids = prompt_token_ids(Path(run))
        rows = {}
        for quant in QUANTS:
            started = time.time()
            report = export_model(run, "gguf", ExportSettings(quant=quant, output_dir=out, prompts=8)).report
            measured = in_child(gguf_child, report["path"], prompt_ids)
            rows[quant] = {**measured, "megabytes": report["bytes"] / 2**20,
                           "agreement": report["parity"]["greedy_token_agreement"], "export_s": time.time() - started}
    print(f"\nSmolLM2-135M LoRA run: {run}; greedy, {NEW_TOKENS} new tokens per prompt, 4 validation prompts")
    print(f"{'format':12}{'file MB':>9}{'tokens/s':>10}{'vs torch':>10}{'peak RSS MB':>13}{'agreement':>11}")
    print(f"{'torch fp32':12}{'-':>9}{torch_row['tokens_per_second']:>10.1f}{1.0:>9.2f}x"
          f"{torch_row['peak_rss_mb']:>13.0f}{'(reference)':>11}")
    for quant, row in rows.items():
        ratio = row["tokens_per_second"] / torch_row["tokens_per_second"]
        print(f"{'gguf ' + quant:12}{row['megabytes']:>9.0f}{row['tokens_per_second']:>10.1f}{ratio:>9.2f}x"
              f"{row['peak_rss_mb']:>13.0f}{row['agreement']:>11.1%}")
    fidelity = merged.report["fidelity"]
    q8 = rows["q8_0"]
    print(f"merged vs base+adapter (fp32): max |dlogit| {fidelity['max_abs_logit_diff']:.2e}, "
          f"greedy agreement {fidelity['greedy_token_agreement']:.1%}")
    met = (q8["tokens_per_second"] >= 5 * torch_row["tokens_per_second"] and q8["agreement"] >= 0.9
           and fidelity["max_abs_logit_diff"] <= 1e-3)
    print(f"targets (Q8_0 >= 5x torch at >= 90% agreement; |dlogit| <= 1e-3): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
