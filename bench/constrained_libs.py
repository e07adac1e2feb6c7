"""Benchmark: llguidance, xgrammar, lm-format-enforcer ("lmfe") and outlines (outlines_core backend) as HF logits
processors on CPU, for "any" JSON value and the meetings "schema", on the bundled SmolLM2-135M-Instruct ("base") and
the LoRA run runs/demo ("demo"): greedy, left-padded batches, stopping on the run's stop ids (<|im_end|>).

Columns: setup_s (vocabulary build + first use at batch 8 and 1, where llguidance's torch.compile lands), comp_s
(grammar compile), ms/tok and ms/step with +% against unconstrained generation in the same process (noisy on a
shared machine), mask_ms and mask% (time in the processor per step, alone and as a share of an unconstrained step),
shares of answers ending with the stop token, parsing as JSON, fitting the schema and equal to the reference, and b1
(first rows answer alone as in the batch). Then versions and dependency weight; the last line names the pick.

    .venv/bin/python bench/constrained_libs.py [--prompts 16] [--libs llguidance,xgrammar] [--models demo]

Packages (keep pip away from torch): pip install llguidance lm-format-enforcer outlines outlines_core genson, and
pip install --no-deps xgrammar apache-tvm-ffi (xgrammar requires triton, which is GPU-only).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import sys
import time
from functools import partial
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "properties": {k: {"type": "string"} for k in ("person", "city", "date", "topic")},
          "required": ["person", "city", "date", "topic"], "additionalProperties": False}
GRAMMARS = {"any": {}, "schema": SCHEMA}
DISTS = {"llguidance": "llguidance", "xgrammar": "xgrammar", "lmfe": "lm-format-enforcer", "outlines": "outlines"}
NOTES = {"llguidance": "Rust core, a structured-output backend of vLLM/SGLang/llama.cpp; HF glue is ours (~25 lines)",
         "xgrammar": "C++ core, vLLM/SGLang default; ships an HF processor; hard-requires triton (GPU-only)",
         "lmfe": "pure Python, per-step cost grows with the vocabulary; 0.11.3 fails to import with transformers 5",
         "outlines": "outlines_core regex index: bounded JSON nesting, slow any-JSON compile, eos-only stop"}
FAST = 0.05  # a processor costing under 5% of an unconstrained step counts as fast: the model dominates


class LLGuidanceProcessor(transformers.LogitsProcessor):
    """One LLMatcher per batch row; their masks are filled in parallel into one int32 bitmask, then applied."""

    def __init__(self, lib: LLGuidance, grammar: str):
        self.lib, self.grammar, self.matchers = lib, grammar, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        llg, lt = self.lib.llg, self.lib.lt
        if self.matchers is None:  # first step: nothing generated yet
            self.matchers = [llg.LLMatcher(self.lib.tokenizer, self.grammar) for _ in range(input_ids.shape[0])]
            self.done, self.mask = [False] * len(self.matchers), lt.allocate_token_bitmask(*scores.shape)
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if not self.done[row]:  # rows past their stop token only get padding
                    self.matchers[row].consume_token(token)
                    self.done[row] = token in self.lib.stop_ids
        # A complete JSON value stops the matcher, whose mask is then the stop token(s) alone.
        lt.fill_next_token_bitmask_par(self.lib.executor, [(m, i) for i, m in enumerate(self.matchers)], self.mask)
        lt.apply_token_bitmask_inplace(scores, self.mask.to(scores.device))
        return scores


class LLGuidance:
    def __init__(self, tok, stop_ids, vocab, threads, model):
        import llguidance
        import llguidance.hf
        import llguidance.torch as lt
        self.llg, self.lt, self.stop_ids = llguidance, lt, set(stop_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(tok, n_vocab=vocab, eos_token=list(stop_ids))
        self.executor = llguidance.LLExecutor(num_threads=threads)

    def compile(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema)
        if error := self.llg.LLMatcher.validate_grammar(grammar, self.tokenizer):
            raise ValueError(error)
        return grammar

    def processor(self, grammar):
        return LLGuidanceProcessor(self, grammar)


class XGrammar:
    def __init__(self, tok, stop_ids, vocab, threads, model):
        import xgrammar
        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=list(stop_ids))
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=threads)

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema))

    def processor(self, compiled):  # one GrammarMatcher per row; single use
        return self.xgr.contrib.hf.LogitsProcessor(compiled)


class LMFormatEnforcer:
    def __init__(self, tok, stop_ids, vocab, threads, model):
        try:
            from lmformatenforcer.integrations import transformers as hf
        except ImportError:  # 0.11.3 imports PreTrainedTokenizerBase from transformers.tokenization_utils (gone in v5)
            import transformers.tokenization_utils_base as base
            sys.modules["transformers.tokenization_utils"] = base
            from lmformatenforcer.integrations import transformers as hf
        from lmformatenforcer import JsonSchemaParser
        self.hf, self.parser = hf, JsonSchemaParser
        self.data = hf.build_token_enforcer_tokenizer_data(tok, vocab_size=vocab)
        self.data.eos_token_id = list(stop_ids)

    def compile(self, schema):
        return self.parser(schema or None)  # None = any JSON

    def processor(self, parser):  # what generate(prefix_allowed_tokens_fn=...) builds, made here to time it
        allowed = self.hf.build_transformers_prefix_allowed_tokens_fn(self.data, parser)
        return transformers.PrefixConstrainedLogitsProcessor(allowed, num_beams=1)


class Outlines:
    def __init__(self, tok, stop_ids, vocab, threads, model):
        import outlines
        from outlines.backends.outlines_core import OutlinesCoreBackend
        if list(stop_ids) != [tok.eos_token_id]:
            raise ValueError(f"outlines_core stops on the eos token only, not on {stop_ids}")
        self.backend = OutlinesCoreBackend(outlines.from_transformers(model, tok))

    def compile(self, schema):
        return self.backend.get_json_schema_logits_processor(json.dumps(schema))

    def processor(self, processor):
        processor.reset()  # one Guide per row, made on the first step
        return processor


LIBRARIES = {"llguidance": LLGuidance, "xgrammar": XGrammar, "lmfe": LMFormatEnforcer, "outlines": Outlines}


class Timed(transformers.LogitsProcessor):  # seconds spent in the wrapped processor
    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        began = time.perf_counter()
        scores = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - began
        return scores


def generate(g, model, prompts, batch_size, max_new, make_processor=None):
    """(seconds in generate, seconds in the processor, decoding steps, tokens incl. stop tokens, completions)."""
    from tuneforge.generate import GenerationSettings
    settings, seconds, masking, steps, completions = GenerationSettings(max_new, batch_size=batch_size), 0, 0, 0, []
    for start in range(0, len(prompts), batch_size):
        batch = g.encode([g.render(p) for p in prompts[start:start + batch_size]])
        timed = [Timed(make_processor())] if make_processor else []
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, **g.generate_kwargs(settings), logits_processor=timed)
        seconds, masking = seconds + time.perf_counter() - began, masking + sum(t.seconds for t in timed)
        steps += out.shape[1] - batch["input_ids"].shape[1]
        completions += g.decode(out[:, batch["input_ids"].shape[1]:])
    return seconds, masking, steps, sum(c.new_tokens + (c.finish_reason == "stop") for c in completions), completions


def score(completions, references):
    import jsonschema
    counts = dict.fromkeys(("stop", "json", "schema", "exact"), 0)
    for c, reference in zip(completions, references):
        counts["stop"] += c.finish_reason == "stop"
        try:
            value = json.loads(c.text)
        except ValueError:
            continue
        counts["json"], counts["exact"] = counts["json"] + 1, counts["exact"] + (value == json.loads(reference))
        counts["schema"] += jsonschema.Draft202012Validator(SCHEMA).is_valid(value)
    return {key: count / len(completions) for key, count in counts.items()}


def dependency_weight(dist_name):
    """(MB installed with all it pulls in beyond torch/transformers/numpy, those names, requirements not installed)."""
    seen, missing, todo, size = set(), [], [dist_name], 0
    while todo:
        name = todo.pop()
        if name in seen or name in ("torch", "transformers", "numpy"):
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        size += sum((f.size or 0) for f in dist.files or [])
        todo += [re.match(r"[\w.-]+", r).group(0).lower().replace("_", "-") for r in dist.requires or []
                 if "extra ==" not in r]
    return size / 1e6, sorted(seen - {dist_name} - set(missing)), missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--data", default="data/demo/meetings_valid.jsonl")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--libs", default=",".join(LIBRARIES))
    parser.add_argument("--models", default="base,demo")
    parser.add_argument("--check-rows", type=int, default=2, help="rows rerun at batch size 1 to check batching")
    parser.add_argument("--threads", type=int, default=1, help="torch and grammar threads (the machine is shared)")
    args = parser.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from tuneforge.generate import Generator, read_prompt_rows
    from tuneforge.models import resolve_model

    g = Generator.from_path(args.run)
    base = transformers.AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct")).eval()
    models, rows = {"base": base, "demo": g.model.eval()}, read_prompt_rows(args.data)[: args.prompts]
    prompts, references = [p for p, _ in rows], [r["reference"] for _, r in rows]
    vocab, bs, k = base.get_output_embeddings().weight.shape[0], args.batch_size, min(args.check_rows, len(rows))
    libs, setup, compiled, compile_s = {}, {}, {}, {}
    for name in args.libs.split(","):
        try:
            began = time.perf_counter()
            lib = LIBRARIES[name](g.tokenizer, g.stop_ids, vocab, args.threads, base)
            setup[name] = time.perf_counter() - began
            for grammar, schema in GRAMMARS.items():
                began = time.perf_counter()
                compiled[name, grammar] = lib.compile(schema)
                compile_s[name, grammar] = time.perf_counter() - began
            for n in (bs, 1):  # first use; only the time inside the processor counts
                setup[name] += generate(g, base, prompts[:n], n, 2, partial(lib.processor, compiled[name, "any"]))[1]
            libs[name] = lib
        except Exception as exc:  # noqa: BLE001 - reported in the table
            setup[name] = f"{type(exc).__name__}: {exc}"[:150]
    header = (f"{'model':5} {'library':10} {'grammar':7} {'setup_s':>7} {'comp_s':>6} {'ms/tok':>6} {'+%tok':>5} "
              f"{'ms/step':>7} {'+%step':>6} {'mask_ms':>7} {'mask%':>5} {'stop%':>5} {'json%':>5} {'schema%':>7} "
              f"{'exact%':>6} b1")
    lines, results = [header, "-" * len(header)], {}
    for model_name in args.models.split(","):
        model, ref = models[model_name], None
        generate(g, model, prompts[:bs], bs, 4)  # warm-up
        for name, grammar in [("none", "-")] + [(n, gr) for n in args.libs.split(",") for gr in GRAMMARS]:
            if name != "none" and name not in libs:
                lines += [f"{model_name:5} {name:10} FAILED {setup[name]}"] if grammar == "any" else []
                continue
            make = partial(libs[name].processor, compiled[name, grammar]) if ref else None
            try:
                sec, mask, steps, toks, out = generate(g, model, prompts, bs, args.max_new_tokens, make)
                single = generate(g, model, prompts[:k], 1, args.max_new_tokens, make)[4]
            except Exception as exc:  # noqa: BLE001 - reported in the table
                lines.append(f"{model_name:5} {name:10} {grammar:7} FAILED {type(exc).__name__}: {exc}"[:200])
                continue
            same, s = sum(a.text == b.text for a, b in zip(single, out)), score(out, references)
            tok, step, mask = 1000 * sec / toks, 1000 * sec / steps, 1000 * mask / steps
            timing = f"{'':14} {tok:6.1f} {'':5} {step:7.1f} {'':20}"
            if ref:
                results[model_name, name, grammar] = {**s, "ovh": step / ref[1] - 1, "mask": mask,
                                                      "share": mask / ref[1], "b1": same == k}
                timing = (f"{setup[name]:7.2f} {compile_s[name, grammar]:6.2f} {tok:6.1f} {tok / ref[0] - 1:+5.0%} "
                          f"{step:7.1f} {step / ref[1] - 1:+6.0%} {mask:7.1f} {mask / ref[1]:5.1%}")
            ref = ref or (tok, step)
            lines.append(f"{model_name:5} {name:10} {grammar:7} {timing} {s['stop']:5.0%} {s['json']:5.0%} "
                         f"{s['schema']:7.0%} {s['exact']:6.0%} {same}/{k}")
    print("\n".join(lines + [""]))
    recommend(results)


def recommend(results):
    """Pick: correct with the schema, batch-consistent, a cheap enough processor, no missing requirement, lightest."""
    ranked = []
    for name in dict.fromkeys(lib for _, lib, _ in results):
        mine = [r for (_, lib, _), r in results.items() if lib == name]
        schema = [r for (_, lib, gr), r in results.items() if lib == name and gr == "schema"]
        size, deps, missing = dependency_weight(DISTS[name])
        valid, stop = min(r["schema"] for r in schema), min(r["stop"] for r in schema)
        batch_ok = all(r["b1"] for r in mine)
        ovh, mask, share = (sum(r[key] for r in mine) / len(mine) for key in ("ovh", "mask", "share"))
        ranked.append(((-valid, -stop, not batch_ok, share > FAST, bool(missing), size), name, valid, stop, batch_ok,
                       ovh, mask, share, size, deps, missing))
        print(f"{name:10} {md.version(DISTS[name]):7} {size:5.1f} MB with [{', '.join(deps) or 'no deps'}]"
              f"{'; not installed: ' + ', '.join(missing) if missing else ''}. {NOTES[name]}")
    if ranked:
        _, name, valid, stop, batch_ok, ovh, mask, share, size, deps, missing = min(ranked)
        print(f"Recommend {name}: with the schema {valid:.0%} valid and {stop:.0%} ended by the stop token at worst, "
              f"{'same answers' if batch_ok else 'DIFFERENT answers'} alone and in batches, {mask:.1f} ms/step in the "
              f"processor ({share:.1%} of an unconstrained step; end-to-end {ovh:+.0%}), {size:.1f} MB with "
              f"{len(deps)} dependencies{', none missing' if not missing else ''}; {NOTES[name]}.")


if __name__ == "__main__":
    main()
