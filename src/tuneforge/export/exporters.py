"""`tuneforge export`: turn a run into something that runs locally, and prove it behaves like the trained model.

- merged:    base + adapter merged in fp32 from the unquantized base (never into a 4-bit base), as an HF
             safetensors directory; fidelity vs base + adapter is always measured.
- gguf:      the whole model as one GGUF (f16, q8_0, q4_0, q4_k_m) plus an Ollama Modelfile.
- gguf-lora: the adapter alone as a llama.cpp LoRA GGUF, to apply on an unchanged base GGUF (optionally written
             too); the seeds' lesson: move adapters around, leave the base alone.

Every GGUF export ends with a llama.cpp parity check on the run's validation prompts. Everything measured goes
into `export_report.json` beside the artifacts; a model card (README.md, tuneforge.card) goes into the merged
folder and into the folder of the GGUF files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_dir, write_text
from tuneforge.card import CardFacts, write_card
from tuneforge.errors import TuneforgeError
from tuneforge.export.gguf_file import QUANT_TYPES, ExportError, write_lora_gguf, write_model_gguf
from tuneforge.rundir import STATE_FILE, CheckpointMeta, RunDir, export_report_file, record_export, resolve_checkpoint
from tuneforge.tasks import get_task
from tuneforge.taskspec import SPECS, get_spec

FORMATS = tuple(dict.fromkeys(fmt for spec in SPECS.values() for fmt in spec.export_formats))


@dataclass
class ExportResult:
    output_dir: Path
    artifact: str
    report: dict[str, Any] = field(default_factory=dict)
    failure: TuneforgeError | None = None  # raised once the report is written: what was made is kept and explained

    @property
    def report_file(self) -> Path:
        return export_report_file(self.output_dir)


@dataclass
class ExportSettings:
    quant: str = "q8_0"
    output_dir: Path | None = None
    with_base: bool = False
    prompts: int = 8
    max_new_tokens: int = 32


@dataclass
class Source:
    """The checkpoint being exported, what it says about itself, and the run it belongs to."""

    checkpoint: Path
    meta: CheckpointMeta
    run: RunDir

    @property
    def name(self) -> str:
        return self.run.name


def export_model(run: str | Path, fmt: str, settings: ExportSettings | None = None) -> ExportResult:
    """Export a run's best checkpoint (or a given checkpoint) as `fmt`; artifacts and export_report.json go to
    RUN/export unless settings.output_dir says otherwise."""
    settings = settings or ExportSettings()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if settings.quant not in QUANT_TYPES:  # before minutes of loading and merging
        raise ExportError(f"unknown quant type '{settings.quant}'; choose one of {', '.join(QUANT_TYPES)}")
    checkpoint = resolve_checkpoint(run)
    meta = CheckpointMeta.read(checkpoint)
    spec = get_spec(meta.task)
    if fmt not in spec.export_formats:
        raise ExportError(f"{run}: a {meta.task} run exports as {', '.join(spec.export_formats)}, not {fmt} "
                          "(GGUF is for causal language models)")
    if fmt == "gguf-lora" and not meta.lora:
        raise ExportError(f"{run}: a full fine-tune has no adapter to export; use --format gguf (or merged)")
    source = Source(checkpoint, meta, RunDir.of_checkpoint(checkpoint) or RunDir(checkpoint))
    out = Path(settings.output_dir) if settings.output_dir else source.run.export_dir
    exporter = {"merged": export_merged, "gguf": export_gguf, "gguf-lora": export_gguf_lora}[fmt]
    result = exporter(source, out, settings)
    record_export(out, result.artifact, result.report)
    folder, form = (Path(result.report["path"]), "merged") if fmt == "merged" else (out, "gguf")
    write_card(folder, form, CardFacts.read(source.run, source.checkpoint))
    if result.failure:
        raise result.failure
    return result


# ----------------------------------------------------------------------------------------------------------------
# merged
# ----------------------------------------------------------------------------------------------------------------


def export_merged(source: Source, out: Path, settings: ExportSettings) -> ExportResult:
    target = out / "merged"
    if not source.meta.lora:
        copy_full_model(source.checkpoint, target)
        return ExportResult(out, "merged", {"path": str(target), "note": "full fine-tune: saved as is, nothing to merge"})
    loaded, check = fidelity_setup(source, settings)
    fidelity, _ = merge_and_check(loaded.model, loaded.tokenizer, check, target, source.meta)
    return ExportResult(out, "merged", {"path": str(target), "dtype": "float32", "fidelity": fidelity,
                                        "base": source.meta.model_id})


def fidelity_setup(source: Source, settings: ExportSettings) -> tuple[Any, Any]:
    """The trained model (the task's inference object) and the task's FidelityCheck on the run's validation rows."""
    task = get_task(source.meta.task)
    loaded = task.load(source.checkpoint)
    samples = source.run.validation_samples()
    return loaded, task.fidelity_check(loaded, samples, prompts=settings.prompts, max_new_tokens=settings.max_new_tokens)


def merge_and_check(model: Any, tokenizer: Any, check: Any, target: Path, meta: CheckpointMeta) -> tuple[dict[str, Any], Any]:
    """Merge the adapter into the fp32 base and save it; fidelity compares the model read back from the saved files
    (what users will load) with the unmerged base + adapter. Returns the fidelity report and the reloaded model."""
    import torch

    from tuneforge.models.loading import model_class

    reference = check.outputs(model)
    merged = model.merge_and_unload()
    with atomic_dir(target) as staged:
        merged.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        meta.model_copy(update={"lora": False, "merged_from": meta.model_id, "model_source": str(target)}).write(staged)
    del merged
    reloaded = model_class(get_spec(meta.task)).from_pretrained(target, dtype=torch.float32).eval()
    return check.compare(reference, check.outputs(reloaded)), reloaded


def copy_full_model(checkpoint: Path, target: Path) -> None:
    with atomic_dir(target) as staged:
        for item in checkpoint.iterdir():
            if item.name != STATE_FILE:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, staged / item.name)


# ----------------------------------------------------------------------------------------------------------------
# gguf
# ----------------------------------------------------------------------------------------------------------------


def export_gguf(source: Source, out: Path, settings: ExportSettings) -> ExportResult:
    from tuneforge.models.loading import base_model_source

    meta = source.meta
    name = f"{source.name} ({meta.model_id} fine-tuned)"
    pre = tokenizer_pre(base_model_source(meta))
    path = out / f"model-{settings.quant}.gguf"
    generator, check = fidelity_setup(source, settings)
    with tempfile.TemporaryDirectory(prefix="tuneforge-merge-", dir=out.parent if out.parent.exists() else None) as tmp:
        if meta.lora:
            merged_dir = Path(tmp) / "merged"
            fidelity, generator.model = merge_and_check(generator.model, generator.tokenizer, check, merged_dir, meta)
        else:
            fidelity, merged_dir = None, source.checkpoint
        info = write_model_gguf(merged_dir, path, settings.quant, name=name, tokenizer_pre=pre)
    checks, failure = check_gguf(path, None, generator, check.probes, settings, artifact=path)
    write_modelfile(out / f"Modelfile.{settings.quant}", path.name, None, generator.tokenizer, meta.system_prompt)
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
        kept = ExportError(f"{crash}. {artifact} was written and is kept; {export_report_file(artifact.parent)} "
                           "records that the parity check could not run")
        return {"parity": {"status": "not run", "reason": f"llama.cpp crashed ({crash.cause})"}}, kept
    torch_tps = torch_speed(generator.model, probes[:4], settings.max_new_tokens, tokenizer.pad_token_id)
    speed = checked["llama_cpp_tokens_per_second"]
    return {**checked, "torch_tokens_per_second": round(torch_tps, 1),
            "speedup": round(speed / torch_tps, 2) if torch_tps else None}, None


def export_gguf_lora(source: Source, out: Path, settings: ExportSettings) -> ExportResult:
    from transformers import AutoConfig

    from tuneforge.models.loading import base_model_source

    meta = source.meta
    base_dir = base_model_source(meta)
    adapter = out / "adapter-f16.gguf"
    info = write_lora_gguf(source.checkpoint, AutoConfig.from_pretrained(base_dir), adapter)
    generator, check = fidelity_setup(source, settings)
    base_name = f"base-{settings.quant}.gguf"
    with tempfile.TemporaryDirectory(prefix="tuneforge-base-") as tmp:
        base_path = out / base_name if settings.with_base else Path(tmp) / "base-f16.gguf"
        quant = settings.quant if settings.with_base else "f16"
        base_info = write_model_gguf(Path(base_dir), base_path, quant, name=meta.model_id,
                                     tokenizer_pre=tokenizer_pre(base_dir))
        checks, failure = check_gguf(base_path, adapter, generator, check.probes, settings, artifact=adapter)
    report = {**info, "base": base_info if settings.with_base else {"checked_against": "temporary f16 base"}, **checks}
    write_modelfile(out / "Modelfile.adapter", base_name if settings.with_base else None, adapter.name,
                    generator.tokenizer, meta.system_prompt)
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


def write_modelfile(path: Path, model_file: str | None, adapter_file: str | None, tokenizer: Any,
                    system: str | None) -> None:
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
    if system:
        lines.append(f'SYSTEM """{system}"""')
    write_text(path, "\n".join(lines) + "\n")
