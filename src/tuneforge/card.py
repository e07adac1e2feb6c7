"""A model card (README.md) beside every model a run leaves: best/ when training ends, each export folder (merged
weights, GGUF files) as it is written, and all of them again after each `tuneforge eval` of the run.

Written with huggingface_hub's ModelCard, so that the Hub and its tools read the metadata: base model, library,
pipeline tag, tags, the base model's license where its own files state one, the training files with their sha256,
and a model-index of the validation and evaluation scores. The body says what the model was trained to do and on
what (the plan's data statistics), the config keys changed from the defaults, the scores (beside the base model's
where `eval --compare-base` ran), how to use it and its limits (the last evaluation's first mistakes). Everything
comes from the run directory; a section whose facts the run does not have is left out, never filled with a
placeholder.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.atomic import write_text
from tuneforge.errors import DataError
from tuneforge.rundir import (
    BENCHMARK_DOCUMENTS,
    BENCHMARK_KEY,
    CheckpointMeta,
    EvalDir,
    RunDir,
    card_file,
    export_report_file,
    is_checkpoint,
    read_json,
    read_jsonl,
)
from tuneforge.taskspec import TaskSpec, get_spec

MISTAKES_SHOWN = 5
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"  # model-index source of benchmark scores


@dataclass
class CardFacts:
    """What every card of a run says, read once from the run directory (a bare checkpoint has only its meta)."""

    run: RunDir
    meta: CheckpointMeta  # the checkpoint the cards describe
    config: dict[str, Any]
    plan: dict[str, Any]
    results: dict[str, Any]
    evals: list[EvalDir]  # the run's evaluations that have results
    license: str | None
    example: dict[str, Any] | None  # the first validation row: the input of the usage examples

    @classmethod
    def read(cls, run: RunDir, checkpoint: Path) -> CardFacts:
        from tuneforge.models.sources import model_license

        meta = CheckpointMeta.read(checkpoint)
        samples = read_jsonl(run.samples_file)
        return cls(run, meta, run.config(), read_json(run.plan_file), run.results(),
                   [evaluation for evaluation in run.evals() if evaluation.results()],
                   model_license(meta.model_id, meta.model_source), samples[0] if samples else None)

    @property
    def spec(self) -> TaskSpec:
        return get_spec(self.meta.task)

    @property
    def method(self) -> str:
        if not self.meta.lora:
            return "full"
        return "qlora" if self.config.get("load_in_4bit") else "lora"

    @property
    def base(self) -> str:
        from tuneforge.models.sources import hub_id

        return hub_id(self.meta.model_id)

    def is_adapter(self, form: str) -> bool:
        """The card's folder holds a LoRA adapter alone (best/ of a LoRA run), not whole weights."""
        return form == "checkpoint" and self.meta.lora

    @property
    def base_weights(self) -> str:
        """Where the base weights the adapter was trained on are (a bundled model's converted directory)."""
        return self.meta.model_source or self.meta.model_id


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def write_card(folder: Path, form: str, facts: CardFacts) -> Path:
    """The card of one model folder, written atomically as folder/README.md. `form`: "checkpoint" (best/: an
    adapter or whole weights), "merged" (merged weights) or "gguf" (an export folder's GGUF files)."""
    path = card_file(folder)
    write_text(path, str(model_card(facts, Path(folder), form)))
    return path


def refresh_cards(run: RunDir) -> list[Path]:
    """Write again the card of every model folder of a completed run: best/, and its export folder's merged
    weights and GGUF files. After training, and after each evaluation, which the cards then show."""
    folders = card_folders(run)
    if not folders or not run.results_file.is_file():
        return []
    facts = CardFacts.read(run, run.checkpoint())
    return [write_card(folder, form, facts) for folder, form in folders.items()]


def card_folders(run: RunDir) -> dict[Path, str]:
    """The run's model folders with the form of each (exports written with --output elsewhere are not tracked)."""
    folders = {run.best_dir: "checkpoint"} if is_checkpoint(run.best_dir) else {}
    report = read_json(run.export_report_file)
    merged = Path((report.get("merged") or {}).get("path") or run.export_dir)
    if merged != run.export_dir and is_checkpoint(merged):
        folders[merged] = "merged"
    if gguf_files(report):
        folders[run.export_dir] = "gguf"
    return folders


def model_card(facts: CardFacts, folder: Path, form: str) -> Any:
    from huggingface_hub import ModelCard

    body = [f"# {facts.run.name}", summary(facts, folder, form), data_section(facts), config_section(facts),
            results_section(facts), usage_section(facts, folder, form), limits_section(facts)]
    text = "\n\n".join(part for part in body if part)
    return ModelCard(f"---\n{card_data(facts, form).to_yaml()}\n---\n\n{text}\n")


# ----------------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------------


def card_data(facts: CardFacts, form: str) -> Any:
    from huggingface_hub import ModelCardData

    adapter = facts.is_adapter(form)
    library = "gguf" if form == "gguf" else "peft" if adapter else "transformers"
    relation = "quantized" if form == "gguf" else "adapter" if adapter else "finetune"
    tags = ["tuneforge", facts.spec.name, facts.method] + (["gguf"] if form == "gguf" else [])
    results = eval_results(facts)
    files = [{"split": split, **entry} for split, entries in data_files(facts).items() for entry in entries]
    return ModelCardData(
        base_model=facts.base, base_model_relation=relation, library_name=library, license=facts.license,
        pipeline_tag=facts.spec.pipeline_tag, tags=tags, model_name=facts.run.name, eval_results=results or None,
        training_files=files or None)


def eval_results(facts: CardFacts) -> list[Any]:
    """model-index entries: the best checkpoint's validation scores, then each evaluation's."""
    from huggingface_hub import EvalResult

    task = facts.spec.pipeline_tag
    found = [EvalResult(task_type=task, dataset_type=validation_file(facts), dataset_name="validation",
                        dataset_split="validation", metric_type=name, metric_value=value)
             for name, value in scores(facts.results.get("best_metrics") or {}, prefix="eval_").items()]
    for evaluation in facts.evals:
        results = evaluation.results()
        if is_benchmark(results):  # lm-eval: each of its tasks is a dataset of its own
            found += [EvalResult(task_type=task, dataset_type=name.split("/")[0], dataset_name=name.split("/")[0],
                                 metric_type=name.split("/", 1)[1], metric_value=value,
                                 source_name="lm-evaluation-harness", source_url=LM_EVAL_URL)
                      for name, value in scores(results).items()]
            continue
        found += [EvalResult(task_type=task, dataset_type=Path(str(results.get("data"))).name,
                             dataset_name=evaluation.name, dataset_config=evaluation.name, metric_type=name,
                             metric_value=value) for name, value in scores(results).items()]
    return found


def is_benchmark(results: dict[str, Any]) -> bool:
    """An evaluation by `tuneforge eval --lm-eval` (tuneforge.benchmarks): `TASK/METRIC` scores, no mistakes."""
    return BENCHMARK_KEY in results


def scores(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scores among a results mapping: its float values (counts are ints), times, lm-eval's standard errors and
    document counts left out, 'eval_' dropped."""
    return {name.removeprefix("eval_"): value for name, value in values.items()
            if name.startswith(prefix) and isinstance(value, float)
            and not name.endswith(("_seconds", "_stderr", f"/{BENCHMARK_DOCUMENTS}"))}


def data_files(facts: CardFacts) -> dict[str, list[dict[str, Any]]]:
    return (facts.plan.get("data") or {}).get("files") or {}


def validation_file(facts: CardFacts) -> str:
    """The file validation rows came from: valid_path, else train_path (a held-out share of it)."""
    path = facts.config.get("valid_path") or facts.config.get("train_path") or facts.run.name
    return Path(str(path)).name


def validation_source(facts: CardFacts) -> str:
    if facts.config.get("valid_path"):
        return validation_file(facts)
    return f"the {facts.config.get('valid_split', 0.1):.0%} of {validation_file(facts)} held out from training"


# ----------------------------------------------------------------------------------------------------------------
# Body
# ----------------------------------------------------------------------------------------------------------------


def summary(facts: CardFacts, folder: Path, form: str) -> str:
    meta = facts.meta
    quantized = " (trained on the base loaded in 4-bit NF4: QLoRA)" if facts.method == "qlora" else ""
    lines = [f"{what_it_is(facts, folder, form)}{quantized}, trained with tuneforge {meta.tuneforge_version} for "
             f"{facts.spec.pipeline_tag} (task `{facts.spec.name}`). {purpose(facts)}"]
    if meta.system_prompt:
        lines.append(f"Every training conversation began with this system message, which the model expects:\n\n"
                     f"> {meta.system_prompt}")
    if meta.answer_schema:
        lines.append("Every training answer was a JSON object matching this schema (inferred from the training "
                     f"targets):\n\n```json\n{json.dumps(meta.answer_schema, indent=2)}\n```")
    return "\n\n".join(lines)


ANSWERS = {"chat": "It answers the last user message of a conversation, taught by the assistant turns of its "
                   "training rows.",
           "prompt_completion": "It completes a prompt, taught by the completions of its training rows.",
           "text": "It continues a text, taught by its training texts."}  # by data shape (CheckpointMeta.shape)


def what_it_is(facts: CardFacts, folder: Path, form: str) -> str:
    if form == "gguf":
        return f"GGUF files of `{facts.base}` fine-tuned, for llama.cpp and Ollama"
    if facts.is_adapter(form):
        lora = facts.config.get("lora_config") or {}
        return f"A LoRA adapter (rank {lora.get('r', 8)}, alpha {lora.get('lora_alpha', 8)}) for `{facts.base}`"
    if facts.meta.lora:
        return f"`{facts.base}` with its LoRA adapter merged into the weights in fp32{merge_check(folder)}"
    return f"`{facts.base}`, fully fine-tuned"


def merge_check(folder: Path) -> str:
    """What export measured of the merged weights against base + adapter, from the export folder's report."""
    fidelity = (read_json(export_report_file(folder.parent)).get("merged") or {}).get("fidelity") or {}
    measured = ", ".join(f"{name.replace('_', ' ')} {cell(value)}" for name, value in fidelity.items())
    return f" (checked against base + adapter on the validation rows: {measured})" if measured else ""


def purpose(facts: CardFacts) -> str:
    meta, spec = facts.meta, facts.spec
    labels = ", ".join(f"`{label}`" for label in meta.labels)
    if spec.classifies_texts:
        fields = ", ".join(f"`{name}`" for name in meta.text_fields or [])
        return (f"It gives a text one of {len(meta.labels)} labels ({labels}); its input is the columns {fields} "
                f"joined with a space, and it learned the labels from the column `{meta.label_field}`.")
    if spec.tags_words:
        return f"It tags each word of a text with one of the {meta.tag_scheme} tags {labels}."
    answers = ANSWERS.get(meta.shape or "", "")
    if spec.learns_preferences:
        return f"{answers} It learned from pairs of a preferred and a rejected answer " \
               f"({facts.config.get('loss_type') or 'dpo'})."
    return answers


def data_section(facts: CardFacts) -> str:
    data = facts.plan.get("data") or {}
    stats = data.get("stats") or {}
    if not stats:
        return ""
    rows = [[split, s.get("rows"), s.get("tokens"), s.get("target_tokens"),
             f"{s.get('p50')} / {s.get('p95')} / {s.get('max')}", s.get("truncated"), s.get("dropped")]
            for split, s in stats.items()]
    parts = ["## Training data", md_table(["split", "rows", "tokens", "target tokens", "length p50 / p95 / max",
                                           "truncated", "dropped"], rows)]
    files = [[split, entry["name"], entry["bytes"], f"`{entry['sha256']}`" if "sha256" in entry else "not hashed "
              "(remote)"] for split, entries in data_files(facts).items() for entry in entries]
    if files:
        parts.append(md_table(["split", "file", "bytes", "sha256"], files))
    plan = facts.plan
    if plan.get("total_steps"):
        epochs = plan["total_steps"] / plan["steps_per_epoch"]  # max_steps may end inside an epoch
        parts.append(f"Context length {data.get('context_length')} tokens. {plan['total_steps']} optimizer steps of "
                     f"{plan['global_batch_size']} rows, {epochs:.3g} epochs" + training_time(facts.results) + ".")
    if data.get("notes"):
        parts.append("\n".join(f"- {note}" for note in data["notes"]))
    return "\n\n".join(parts)


def training_time(results: dict[str, Any]) -> str:
    if results.get("train_seconds") is None:
        return ""
    speed = f" at {results['tokens_per_second']:.0f} tokens/s" if results.get("tokens_per_second") else ""
    return f", trained in {results['train_seconds']:.0f} s{speed}"


def config_section(facts: CardFacts) -> str:
    from tuneforge.config import changed_keys, config_defaults

    if not facts.config:
        return ""
    defaults = config_defaults()
    rows = [[f"`{key}`", value, defaults[key] if key in defaults else "(required)"]
            for key, value in changed_keys(facts.config).items()]
    return "## Config\n\nThe keys of the run's config.yaml that differ from tuneforge's defaults:\n\n" + md_table(
        ["key", "value", "default"], rows)


def results_section(facts: CardFacts) -> str:
    best = facts.results.get("best_metrics") or {}
    validation = scores(best, prefix="eval_")
    parts = ["## Results"] if validation or facts.evals else []
    if validation:
        parts.append(f"Validation on {validation_source(facts)} at step {best.get('step')}, the checkpoint kept as the "
                     f"best by `{facts.results.get('best_metric')}`:")
        parts.append(md_table(["metric", "value"], [[name, value] for name, value in validation.items()]))
    for evaluation in facts.evals:
        parts.append(evaluation_table(evaluation))
    return "\n\n".join(parts)


def evaluation_table(evaluation: EvalDir) -> str:
    results = evaluation.results()
    base = scores(results.get("base") or {})
    counted = ", ".join(f"{results[key]} {key}" for key in ("rows", "sentences", "generated") if key in results)
    heading = f"### Evaluation `{evaluation.name}`\n\n`tuneforge eval` on {Path(str(results.get('data'))).name} " \
              f"({counted})"
    if is_benchmark(results):
        counted = ", ".join(f"{name.split('/')[0]} {int(value)}" for name, value in results.items()
                            if name.endswith(f"/{BENCHMARK_DOCUMENTS}"))
        version = results[BENCHMARK_KEY]["version"]
        heading = (f"### Evaluation `{evaluation.name}`\n\nlm-evaluation-harness {version} "
                   f"through `tuneforge eval --lm-eval` (documents: {counted})")
    tuned = scores(results)
    if base:
        return (f"{heading}, beside the base model (`--compare-base`):\n\n"
                + md_table(["metric", "base model", "fine-tuned"],
                           [[name, base.get(name, "not scored"), value] for name, value in tuned.items()]))
    return f"{heading}:\n\n" + md_table(["metric", "value"], [[name, value] for name, value in tuned.items()])


def limits_section(facts: CardFacts) -> str:
    data = facts.plan.get("data") or {}
    truncated = ((data.get("stats") or {}).get("train") or {}).get("truncated", 0)
    bullets = [f"- It was trained on inputs of at most {data['context_length']} tokens ({truncated} training rows "
               "were cut to fit); longer inputs are outside what it learned."] if data.get("context_length") else []
    if facts.spec.classifies_texts:
        bullets.append(f"- It only ever predicts one of its {len(facts.meta.labels)} labels, even for a text that "
                       "fits none of them.")
    return "\n\n".join(["## Limits", *(["\n".join(bullets)] if bullets else []), mistakes(facts)])


def mistakes(facts: CardFacts) -> str:
    """The first mistakes of the latest evaluation, or the command that finds them."""
    if not facts.evals:
        return (f"No `tuneforge eval` has run on this model yet, so its mistakes on held-out data are not known: "
                f"`tuneforge eval {shlex.quote(str(facts.run.path))} --data` with a file of rows it never saw, in the "
                "training data's format, lists the first ones here (`--compare-base` adds the base model's scores).")
    kept = [evaluation for evaluation in facts.evals if not is_benchmark(evaluation.results())]
    if not kept:
        return ("Only standard benchmarks (lm-eval) have run on this model: `tuneforge eval "
                f"{shlex.quote(str(facts.run.path))} --data` with a file of rows it never saw lists its first "
                "mistakes here.")
    latest = max(kept, key=lambda evaluation: evaluation.results_file.stat().st_mtime)
    found = latest.results().get("mistakes") or []
    if not found:
        return f"The latest evaluation (`{latest.name}`) found no mistakes."
    shown = found[:MISTAKES_SHOWN]
    columns = list(shown[0])
    return (f"The first {len(shown)} of the mistakes in the latest evaluation (`{latest.name}`):\n\n"
            + md_table(columns, [[mistake.get(column) for column in columns] for mistake in shown]))


# ----------------------------------------------------------------------------------------------------------------
# How to use it
# ----------------------------------------------------------------------------------------------------------------


def usage_section(facts: CardFacts, folder: Path, form: str) -> str:
    if form == "gguf":
        return gguf_usage(facts, folder)
    of_run = form == "checkpoint" and facts.run.is_run()  # tuneforge takes the run itself, exports included
    library = "transformers + peft" if facts.is_adapter(form) else "transformers"
    commands = tuneforge_usage(facts, facts.run.path if of_run else folder, exports=of_run)
    return (f"## How to use it\n\nWith tuneforge:\n\n```bash\n{commands}\n```\n\n"
            f"With {library}:\n\n```python\n{python_usage(facts, folder, form)}\n```")


def tuneforge_usage(facts: CardFacts, target: Path, *, exports: bool) -> str:
    where = shlex.quote(str(target))
    spec = facts.spec
    lines = []
    if spec.generates:
        system = f" --system {shlex.quote(facts.meta.system_prompt)}" if facts.meta.system_prompt else ""
        lines.append(f"tuneforge generate {where}{system} --prompt {shlex.quote(user_text(facts))}")
    else:
        lines.append(f"tuneforge predict {where} --text {shlex.quote(example_text(facts))}")
    if spec.serves:
        lines.append(f"tuneforge serve {where}  # an OpenAI-shaped HTTP API")
    if exports and "gguf" in spec.export_formats:
        lines.append(f"tuneforge export {where} --format gguf --quant q8_0  # for llama.cpp and Ollama")
    return "\n".join(lines)


def python_usage(facts: CardFacts, folder: Path, form: str) -> str:
    """Loading the model as the Hugging Face libraries do, and one call on the first validation row."""
    spec, meta = facts.spec, facts.meta
    adapter = facts.is_adapter(form)
    here = repr(str(folder))
    lines = ["import torch", *(["from peft import PeftModel"] if adapter else []),
             f"from transformers import {spec.auto_model}, AutoTokenizer", "",
             f"tokenizer = AutoTokenizer.from_pretrained({here})"]
    if spec.label_head:
        lines.append(f"labels = {meta.labels!r}")
    head = (", num_labels=len(labels), id2label=dict(enumerate(labels)), "
            "label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True"
            if spec.label_head and adapter else "")
    if adapter and facts.base_weights != facts.base:
        lines.append(f"# the base weights the adapter was trained on ({facts.base}, as tuneforge loaded it)")
    lines.append(f"model = {spec.auto_model}.from_pretrained({repr(facts.base_weights) if adapter else here}{head})")
    if adapter:
        if added_pad_token(folder):  # tuneforge gave the tokenizer a pad token: its embedding row was zero
            lines.append("model.resize_token_embeddings(len(tokenizer), mean_resizing=False)")
        lines.append(f"model = PeftModel.from_pretrained(model, {here})")
    lines.append("model.eval()")
    if spec.generates:
        return "\n".join(lines + generation_lines(facts))
    if spec.classifies_texts:
        return "\n".join(lines + [
            f"inputs = tokenizer({example_text(facts)!r}, return_tensors='pt', truncation=True, "
            f"max_length={meta.context_length})",
            "with torch.no_grad():", "    probabilities = model(**inputs).logits.softmax(-1)[0]",
            "print(labels[int(probabilities.argmax())], float(probabilities.max()))"])
    return "\n".join(lines + [
        f"words = {example_text(facts).split()!r}",
        f"inputs = tokenizer(words, is_split_into_words=True, return_tensors='pt', truncation=True, "
        f"max_length={meta.context_length})",
        "with torch.no_grad():", "    tags = model(**inputs).logits.argmax(-1)[0].tolist()",
        "first = {}  # each word's tag is its first subword's",
        "for position, word in enumerate(inputs.word_ids()):",
        "    if word is not None:", "        first.setdefault(word, labels[tags[position]])",
        "print([(word, first[i]) for i, word in enumerate(words) if i in first])"])


def generation_lines(facts: CardFacts) -> list[str]:
    meta = facts.meta
    stop = f", eos_token_id={meta.stop_token_ids!r}" if meta.stop_token_ids else ""
    if meta.shape == "chat":
        encode = [f"messages = {prompt_messages(facts)!r}",
                  "text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
                  "inputs = tokenizer(text, return_tensors='pt', add_special_tokens=False)"]
    else:
        encode = [f"inputs = tokenizer({example_prompt(facts)!r}, return_tensors='pt')"]
    return encode + ["with torch.no_grad():",
                     f"    output = model.generate(**inputs, max_new_tokens=128, do_sample=False{stop})",
                     "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))"]


def gguf_usage(facts: CardFacts, folder: Path) -> str:
    files = gguf_files(read_json(export_report_file(folder)))
    rows = [[f"`{Path(entry['path']).name}`", "LoRA adapter" if artifact == "gguf-lora" else "model",
             entry.get("quant") or entry.get("dtype"), size(entry["bytes"]), parity(entry)]
            for artifact, entry in files]
    header = ["file", "holds", "type", "size", "llama.cpp's greedy tokens equal to the trained model's"]
    parts = ["## GGUF files", md_table(header, rows)]
    ollama_name = re.sub(r"[^a-z0-9_.-]+", "-", facts.run.name.lower()).strip("-") or "tuneforge"
    commands = []
    for artifact, entry in files:
        name = Path(entry["path"]).name
        if artifact == "gguf-lora":
            base = (entry.get("base") or {}).get("path")
            if base:
                commands += [f"llama-cli -m {Path(base).name} --lora {name} -cnv --temp 0",
                             f"ollama create {ollama_name}-adapter -f Modelfile.adapter && ollama run "
                             f"{ollama_name}-adapter"]
            else:
                commands.append(f"# {name} applies on the base model as GGUF: tuneforge export "
                                f"{shlex.quote(str(facts.run.path))} --format gguf-lora --with-base writes it here")
            continue
        commands += [f"llama-cli -m {name} -cnv --temp 0", f"llama-server -m {name}  # an OpenAI-shaped HTTP API",
                     f"ollama create {ollama_name}-{entry['quant']} -f Modelfile.{entry['quant']} && ollama run "
                     f"{ollama_name}-{entry['quant']}",
                     f"tuneforge generate --gguf {shlex.quote(str(folder / name))} --prompt "
                     f"{shlex.quote(user_text(facts))}"]
    parts.append("## How to use it\n\nIn this folder:\n\n```bash\n" + "\n".join(commands) + "\n```")
    return "\n\n".join(parts)


def size(count: int) -> str:
    return next(f"{count / scale:.1f} {unit}" for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "bytes"))
                if count >= scale or unit == "bytes")


def parity(entry: dict[str, Any]) -> str:
    agreement = (entry.get("parity") or {}).get("greedy_token_agreement")
    return f"{agreement:.0%}" if isinstance(agreement, (int, float)) else "not checked"


def gguf_files(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(artifact, report) of each GGUF an export folder's report lists whose file is there."""
    return [(artifact, entry) for artifact, entry in report.items() if isinstance(entry, dict)
            and str(entry.get("path", "")).endswith(".gguf") and Path(entry["path"]).is_file()]


# ----------------------------------------------------------------------------------------------------------------
# The example row, and markdown
# ----------------------------------------------------------------------------------------------------------------


def example_prompt(facts: CardFacts) -> str | list[dict[str, str]]:
    """The first validation row's prompt: its conversation up to the last answer, or its prompt; for a run on plain
    text, the first half of the row's text, which the model continues."""
    from tuneforge.generate import prompt_of

    row = facts.example or {}
    try:
        return prompt_of(row, "the first validation row")[0]
    except DataError:
        words = str(row.get("text", "")).split()
        return " ".join(words[: max(1, len(words) // 2)])


def prompt_messages(facts: CardFacts) -> list[dict[str, str]]:
    """The example prompt as chat messages, the system message the run trained with first."""
    prompt = example_prompt(facts)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    system = facts.meta.system_prompt
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def user_text(facts: CardFacts) -> str:
    return prompt_messages(facts)[-1]["content"]


def example_text(facts: CardFacts) -> str:
    """The first validation row as the model reads it: its text columns joined, or its words."""
    meta, row = facts.meta, facts.example or {}
    if meta.text_fields:
        from tuneforge.data.classification import row_text

        return row_text(row, meta.text_fields)
    return " ".join(str(word) for word in row.get(meta.tokens_field or "tokens", []))


def added_pad_token(folder: Path) -> bool:
    from tuneforge.models.tokenizers import NEW_PAD_TOKEN

    return read_json(folder / "tokenizer_config.json").get("pad_token") == NEW_PAD_TOKEN


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows])


def cell(value: Any, limit: int = 200) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    text = text.replace("|", "\\|").replace("\n", "<br>")
    return text if len(text) <= limit else text[: limit - 1] + "…"
