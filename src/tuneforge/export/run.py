"""`tuneforge export`: turn a run into something that runs locally, and prove it behaves like the trained model.

- merged:    base + adapter merged in fp32 from the unquantized base (never into a 4-bit base), as an HF
             safetensors directory; fidelity vs base + adapter is always measured.
- gguf:      the whole model as one GGUF (f16, q8_0, q4_0, q4_k_m) plus an Ollama Modelfile.
- gguf-lora: the adapter alone as a llama.cpp LoRA GGUF, to apply on an unchanged base GGUF (optionally written
             too); the seeds' lesson: move adapters around, leave the base alone.

Every GGUF export ends with a llama.cpp parity check on the run's validation prompts. Everything measured goes
into `export_report.json` beside the artifacts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.export.gguf_file import QUANT_TYPES, ExportError, write_lora_gguf, write_model_gguf
from tuneforge.io import atomic_dir, write_json, write_text
from tuneforge.train.checkpoints import META_FILE, STATE_FILE, read_meta, resolve_checkpoint

FORMATS = ("merged", "gguf", "gguf-lora")


@dataclass
class ExportResult:
    output_dir: Path
    artifact: str
    report: dict[str, Any] = field(default_factory=dict)
    failure: TuneforgeError | None = None  # raised once the report is written: what was made is kept and explained


@dataclass
class ExportSettings:
    quant: str = "q8_0"
    output_dir: Path | None = None
    with_base: bool = False
    prompts: int = 8
    max_new_tokens: int = 32


def export_run(run: str | Path, fmt: str, settings: ExportSettings | None = None) -> ExportResult:
    settings = settings or ExportSettings()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if settings.quant not in QUANT_TYPES:  # before minutes of loading and merging
        raise ExportError(f"unknown quant type '{settings.quant}'; choose one of {', '.join(QUANT_TYPES)}")
    checkpoint = resolve_checkpoint(run)
    meta = read_meta(checkpoint)
    if meta.get("task") != "causal_lm" and fmt != "merged":
        raise ExportError(f"{run}: GGUF export is for causal language models; this is a {meta.get('task')} run")
    if fmt == "gguf-lora" and not meta.get("lora"):
        raise ExportError(f"{run}: a full fine-tune has no adapter to export; use --format gguf (or merged)")
    run_dir = run_directory(checkpoint)
    out = Path(settings.output_dir) if settings.output_dir else run_dir / "export"
    exporter = {"merged": export_merged, "gguf": export_gguf, "gguf-lora": export_gguf_lora}[fmt]
    result = exporter(checkpoint, meta, run_dir, out, settings)
    record(out, result)
    if result.failure:
        raise result.failure
    return result


def run_directory(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to (best/ and checkpoints/step-N/ both live under it)."""
    for candidate in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (candidate / "config.yaml").is_file():
            return candidate
    return checkpoint


def record(out: Path, result: ExportResult) -> None:
    path = out / "export_report.json"
    existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    existing[result.artifact] = result.report
    write_json(path, existing)


# ----------------------------------------------------------------------------------------------------------------
# merged
# ----------------------------------------------------------------------------------------------------------------


def reference_and_probes(checkpoint: Path, run_dir: Path, settings: ExportSettings) -> tuple[Any, list[Any]]:
    from tuneforge.export.fidelity import make_probes, validation_prompts
    from tuneforge.generate import Generator

    generator = Generator.from_path(checkpoint)
    prompts = validation_prompts(run_dir, settings.prompts)
    return generator, make_probes(generator, prompts, settings.max_new_tokens)


def merge_into(generator: Any, probes: list[Any], target: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Merge the adapter into the fp32 base and save it; fidelity compares the model read back from the saved
    files (what users will load) with the unmerged base + adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.export.fidelity import answer_logits

    answered = [probe for probe in probes if probe.answer_ids]
    reference = [answer_logits(generator.model, probe) for probe in answered]
    merged = generator.model.merge_and_unload()
    with atomic_dir(target) as staged:
        merged.save_pretrained(staged, safe_serialization=True)
        generator.tokenizer.save_pretrained(staged)
        merged_meta = {**meta, "lora": False, "merged_from": meta.get("model_id"), "model_source": str(target)}
        (staged / META_FILE).write_text(json.dumps(merged_meta, indent=2), encoding="utf-8")
    del merged
    generator.model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    return compare_to_saved(generator.model, answered, reference)


def compare_to_saved(model: Any, probes: list[Any], reference: list[Any]) -> dict[str, Any]:
    from tuneforge.export.fidelity import answer_logits

    max_delta, agree, total = 0.0, 0, 0
    for probe, ref in zip(probes, reference, strict=True):
        cand = answer_logits(model, probe)
        max_delta = max(max_delta, float((ref - cand).abs().max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += len(probe.answer_ids)
    return {"prompts": len(probes), "positions": total, "max_abs_logit_diff": max_delta,
            "greedy_token_agreement": agree / total if total else None}


def export_merged(checkpoint: Path, meta: dict[str, Any], run_dir: Path, out: Path,
                  settings: ExportSettings) -> ExportResult:
    target = out / "merged"
    if not meta.get("lora"):
        copy_full_model(checkpoint, target)
        return ExportResult(out, "merged", {"path": str(target), "note": "full fine-tune: saved as is, nothing to merge"})
    if meta.get("task") != "causal_lm":
        return ExportResult(out, "merged", merge_classifier(checkpoint, target, meta))
    generator, probes = reference_and_probes(checkpoint, run_dir, settings)
    fidelity = merge_into(generator, probes, target, meta)
    return ExportResult(out, "merged", {"path": str(target), "dtype": "float32", "fidelity": fidelity,
                                        "base": meta.get("model_id")})


def copy_full_model(checkpoint: Path, target: Path) -> None:
    with atomic_dir(target) as staged:
        for item in checkpoint.iterdir():
            if item.name != STATE_FILE:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, staged / item.name)


def merge_classifier(checkpoint: Path, target: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A classification adapter (head included) merged into its encoder; fidelity on the validation texts."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tuneforge.inference import load_checkpoint

    loaded = load_checkpoint(checkpoint, task="classification")
    texts = validation_texts(run_directory(checkpoint), limit=32)
    batch = loaded.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        before = loaded.model(**batch).logits.float()
        merged = loaded.model.merge_and_unload()
    with atomic_dir(target) as staged:
        merged.save_pretrained(staged, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staged)
        (staged / META_FILE).write_text(json.dumps({**meta, "lora": False}, indent=2), encoding="utf-8")
    with torch.no_grad():
        after = AutoModelForSequenceClassification.from_pretrained(target, dtype=torch.float32).eval()(**batch).logits.float()
    return {"path": str(target), "fidelity": {"texts": len(texts), "max_abs_logit_diff": float((before - after).abs().max()),
                                              "label_agreement": float((before.argmax(-1) == after.argmax(-1)).float().mean())}}


def validation_texts(run_dir: Path, limit: int) -> list[str]:
    """Texts of the run's validation rows (valid_path, or the held-out rows of its seeded split)."""
    from tuneforge.config import load_config
    from tuneforge.data.classification import labelled_splits, row_text

    config = load_config(run_dir / "config.yaml")
    _, (records, _) = labelled_splits(config)
    return [row_text(record.data, list(config.text_fields or [])) for record in records[:limit]]


# ----------------------------------------------------------------------------------------------------------------
# gguf
# ----------------------------------------------------------------------------------------------------------------


def export_gguf(checkpoint: Path, meta: dict[str, Any], run_dir: Path, out: Path, settings: ExportSettings) -> ExportResult:
    from tuneforge.inference import base_model_source

    name = f"{run_dir.name} ({meta.get('model_id')} fine-tuned)"
    pre = tokenizer_pre(base_model_source(meta))
    path = out / f"model-{settings.quant}.gguf"
    generator, probes = reference_and_probes(checkpoint, run_dir, settings)
    with tempfile.TemporaryDirectory(prefix="tuneforge-merge-", dir=out.parent if out.parent.exists() else None) as tmp:
        if meta.get("lora"):
            fidelity = merge_into(generator, probes, Path(tmp) / "merged", meta)
            source = Path(tmp) / "merged"
        else:
            fidelity, source = None, checkpoint
        info = write_model_gguf(source, path, settings.quant, name=name, tokenizer_pre=pre)
    checks, failure = check_gguf(path, None, generator, probes, settings, artifact=path)
    write_modelfile(out / f"Modelfile.{settings.quant}", path.name, None, generator.tokenizer, run_dir)
    return ExportResult(out, f"gguf-{settings.quant}", {**info, "merge_fidelity": fidelity, **checks}, failure)


def tokenizer_pre(model_dir: str) -> str | None:
    from tuneforge.models import GGUF_ORIGIN_FILE

    origin = Path(model_dir) / GGUF_ORIGIN_FILE
    return json.loads(origin.read_text(encoding="utf-8")).get("tokenizer_pre") if origin.is_file() else None


def check_gguf(path: Path, lora: Path | None, generator: Any, probes: list[Any], settings: ExportSettings,
               artifact: Path) -> tuple[dict[str, Any], TuneforgeError | None]:
    """Parity through llama.cpp (in a child process) against the torch model that produced the probes, and both
    speeds. A llama.cpp crash leaves the GGUF in place and is reported, not fatal to the report."""
    from tuneforge.export.parity import BosToken, llama_cpp_checks, torch_speed
    from tuneforge.native import NativeCrash, run_isolated

    tokenizer = generator.tokenizer
    try:
        checked = run_isolated("the GGUF parity check", llama_cpp_checks, path, lora, probes,
                               BosToken(tokenizer.bos_token, tokenizer.bos_token_id), settings.max_new_tokens)
    except NativeCrash as crash:
        kept = ExportError(f"{crash}. {artifact} was written and is kept; {artifact.parent / 'export_report.json'} "
                           "records that the parity check could not run")
        return {"parity": {"status": "not run", "reason": f"llama.cpp crashed ({crash.cause})"}}, kept
    torch_tps = torch_speed(generator.model, probes[:4], settings.max_new_tokens, tokenizer.pad_token_id)
    speed = checked["llama_cpp_tokens_per_second"]
    return {**checked, "torch_tokens_per_second": round(torch_tps, 1),
            "speedup": round(speed / torch_tps, 2) if torch_tps else None}, None


def export_gguf_lora(checkpoint: Path, meta: dict[str, Any], run_dir: Path, out: Path,
                     settings: ExportSettings) -> ExportResult:
    from transformers import AutoConfig

    from tuneforge.inference import base_model_source

    base_dir = base_model_source(meta)
    adapter = out / "adapter-f16.gguf"
    info = write_lora_gguf(checkpoint, AutoConfig.from_pretrained(base_dir), adapter)
    generator, probes = reference_and_probes(checkpoint, run_dir, settings)
    base_name = f"base-{settings.quant}.gguf"
    with tempfile.TemporaryDirectory(prefix="tuneforge-base-") as tmp:
        base_path = out / base_name if settings.with_base else Path(tmp) / "base-f16.gguf"
        quant = settings.quant if settings.with_base else "f16"
        base_info = write_model_gguf(Path(base_dir), base_path, quant, name=str(meta.get("model_id")),
                                     tokenizer_pre=tokenizer_pre(base_dir))
        checks, failure = check_gguf(base_path, adapter, generator, probes, settings, artifact=adapter)
    report = {**info, "base": base_info if settings.with_base else {"checked_against": "temporary f16 base"}, **checks}
    write_modelfile(out / "Modelfile.adapter", base_name if settings.with_base else None, adapter.name,
                    generator.tokenizer, run_dir)
    return ExportResult(out, "gguf-lora", report, failure)


# ----------------------------------------------------------------------------------------------------------------
# Ollama
# ----------------------------------------------------------------------------------------------------------------

CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def write_modelfile(path: Path, model_file: str | None, adapter_file: str | None, tokenizer: Any, run_dir: Path) -> None:
    """An Ollama Modelfile: the model (or base + ADAPTER), the chat template for ChatML models (others use the
    template inside the GGUF), the stop token, greedy decoding, and the system prompt the run trained with."""
    lines = [f"FROM ./{model_file}"] if model_file else [
        "# base.gguf: the unchanged base model as GGUF (tuneforge export --format gguf-lora --with-base writes one)",
        "FROM ./base.gguf"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    template = tokenizer.chat_template or ""
    if "<|im_start|>" in template:
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
    stop = tokenizer.eos_token
    if stop:
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append("PARAMETER temperature 0")
    system = shared_system_prompt(run_dir)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    write_text(path, "\n".join(lines) + "\n")


def shared_system_prompt(run_dir: Path) -> str | None:
    """The system message every training row used, if they all used the same one."""
    from tuneforge.config import load_config
    from tuneforge.data.records import read_records

    try:
        config = load_config(run_dir / "config.yaml")
        rows = read_records(config.train_path)
    except TuneforgeError:
        return None
    systems = {next((m["content"] for m in r.data.get("messages", []) if m.get("role") == "system"), None) for r in rows}
    return systems.pop() if len(systems) == 1 and None not in systems else None
