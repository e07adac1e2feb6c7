"""Export: merged weights, GGUF models and GGUF LoRA adapters from a tiny Llama LoRA run trained once per session
(conftest's `tiny_lora_run`), checked through llama.cpp (the `gguf` extra that `make test` installs)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_card import check_card
from tuneforge.errors import TuneforgeError
from tuneforge.export import ExportSettings, export_model
from tuneforge.export.gguf_file import ExportError, rotary_permute
from tuneforge.rundir import RunDir

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def lora_run(tiny_lora_run):
    """A LoRA run as `tuneforge.train.train` leaves it (conftest's session run): config.yaml,
    validation_samples.jsonl, checkpoints/ and best/ with the adapter."""
    return tiny_lora_run


@pytest.fixture(scope="module")
def full_run(tiny_full_run):
    return tiny_full_run


SETTINGS = dict(prompts=4, max_new_tokens=8)


def prompt_logits(model_dir: Path, prompt: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_merged_export_matches_base_plus_adapter(lora_run, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    result = export_model(lora_run, "merged", ExportSettings(**SETTINGS))
    fidelity = result.report["fidelity"]
    assert fidelity["prompts"] == 4  # the run's validation rows, read back from validation_samples.jsonl
    assert fidelity["max_abs_logit_diff"] <= 1e-3
    assert fidelity["greedy_token_agreement"] == 1.0 and fidelity["positions"] > 0
    merged = lora_run / "export" / "merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_model.safetensors").exists()
    assert AutoModelForCausalLM.from_pretrained(merged).config.model_type == "llama"
    # The trained adapter moves the logits far beyond the fidelity bound: a merge that lost it would fail above.
    assert float((prompt_logits(merged, "Say apple.") - prompt_logits(tiny_llama_dir, "Say apple.")).abs().max()) > 0.5
    report = json.loads((lora_run / "export" / "export_report.json").read_text())
    assert report["merged"]["fidelity"] == fidelity
    card = check_card(merged, RunDir(lora_run), library="transformers", tags=("causal_lm", "lora"))
    assert f"AutoModelForCausalLM.from_pretrained({str(merged)!r})" in card.text


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_export_runs_in_llama_cpp_like_the_torch_model(lora_run, quant):
    import gguf

    result = export_model(lora_run, "gguf", ExportSettings(quant=quant, **SETTINGS))
    path = Path(result.report["path"])
    assert path.name == f"model-{quant}.gguf"
    assert result.report["parity"]["greedy_token_agreement"] >= 0.9
    assert result.report["llama_cpp_tokens_per_second"] > 0 and result.report["torch_tokens_per_second"] > 0
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    kinds = {tensor.tensor_type.name for tensor in reader.tensors}
    assert ("Q8_0" in kinds) == (quant == "q8_0") and "F32" in kinds
    modelfile = (lora_run / "export" / f"Modelfile.{quant}").read_text()
    assert f"FROM ./model-{quant}.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    card = check_card(path.parent, RunDir(lora_run), library="gguf", tags=("gguf", "lora"))
    assert f"llama-cli -m {path.name} " in card.text and f" -f Modelfile.{quant} " in card.text
    assert f"| `{path.name}` | model | {quant} |" in card.text


def test_q4_k_m_goes_through_llama_cpps_quantizer(lora_run):
    import gguf

    result = export_model(lora_run, "gguf", ExportSettings(quant="q4_k_m", **SETTINGS))
    reader = gguf.GGUFReader(result.report["path"])
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert not list(Path(result.report["path"]).parent.glob(".*f16.gguf"))  # the f16 intermediate is gone
    assert result.report["parity"]["positions"] > 0 and result.report["parity"]["greedy_token_agreement"] >= 0.5


def test_gguf_lora_adapter_applies_on_an_unchanged_base(lora_run):
    import gguf

    result = export_model(lora_run, "gguf-lora", ExportSettings(**SETTINGS))
    adapter = gguf.GGUFReader(result.report["path"])
    assert adapter.fields["general.type"].contents() == "adapter"
    assert adapter.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0)
    names = {tensor.name for tensor in adapter.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names
    assert result.report["parity"]["greedy_token_agreement"] >= 0.9
    modelfile = (lora_run / "export" / "Modelfile.adapter").read_text().splitlines()
    assert "ADAPTER ./adapter-f16.gguf" in modelfile
    assert "FROM ./base.gguf" in modelfile  # Ollama reads no trailing comments on FROM


def test_generate_runs_a_gguf_with_its_chat_template(lora_run):
    from tuneforge.generate import GenerationSettings, Generator
    from tuneforge.gguf_chat import GgufChat

    path = lora_run / "export" / "model-f16.gguf"
    if not path.exists():
        export_model(lora_run, "gguf", ExportSettings(quant="f16", **SETTINGS))
    settings = GenerationSettings(max_new_tokens=5)  # greedy
    with GgufChat(path) as chat:
        text = chat.complete("Say apple.", settings)
        pieces = list(chat.stream("Say apple.", settings))
    assert pieces and "".join(pieces).strip() == text  # the stream is the same greedy completion, piece by piece
    # ...and the same answer the trained torch model (base + adapter) gives through the same chat template
    assert text == Generator.from_path(lora_run).complete(["Say apple."], settings)[0].text


def test_a_json_schema_constrains_gguf_answers_through_llama_cpps_grammar(lora_run):
    from tuneforge.constrain import gguf_grammar
    from tuneforge.generate import GenerationSettings
    from tuneforge.gguf_chat import GgufChat

    path = lora_run / "export" / "model-f16.gguf"
    if not path.exists():
        export_model(lora_run, "gguf", ExportSettings(quant="f16", **SETTINGS))
    schema = lora_run.parent / "colour.schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"colour": {"enum": ["red", "green"]}},
                                  "required": ["colour"], "additionalProperties": False}))
    with GgufChat(path, json_schema=gguf_grammar(schema_path=schema)) as chat:
        text = chat.complete("Say apple.", GenerationSettings(max_new_tokens=24))
    assert json.loads(text)["colour"] in ("red", "green")  # the tiny model was never trained on this format


def test_llama3_rope_scaling_is_exported_as_llama_cpp_frequency_factors(tmp_path, smol_tokenizer):
    """Llama 3.1/3.2-style rotary scaling: llama.cpp reproduces the torch logits only with the rope_freqs tensor."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.export.gguf_file import write_model_gguf
    from tuneforge.export.parity import open_gguf

    torch.manual_seed(0)
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, rope_parameters=rope)
    model = LlamaForCausalLM(config)
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.2)
    model.save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    ids = smol_tokenizer("The quick brown fox jumps over the lazy dog and runs far away into the forest")["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    path = tmp_path / "model.gguf"
    info = write_model_gguf(tmp_path, path, "f16", name="llama3-rope", tokenizer_pre=None)
    assert info["tensor_types"]["F32"] >= 1
    llm = open_gguf(path, logits_all=True)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    assert np.abs(got - expected).max() < 0.1
    assert (got.argmax(-1) == expected.argmax(-1)).mean() == 1.0


def test_unsupported_rope_scaling_is_refused_naming_what_is_supported():
    from transformers import LlamaConfig

    from tuneforge.export.gguf_file import ModelShape

    config = LlamaConfig(architectures=["LlamaForCausalLM"],
                         rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(ExportError, match="does not support rope scaling 'yarn'; supported: default, linear, llama3"):
        ModelShape.of(config)


def test_rotary_permutation_interleaves_each_heads_halves():
    rows = np.arange(8)[:, None].astype(np.float32)  # one head of dim 8: x0..x3 then y0..y3
    assert rotary_permute(rows, heads=1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_full_fine_tune_has_no_adapter_to_export(full_run):
    with pytest.raises(ExportError, match="full fine-tune has no adapter"):
        export_model(full_run, "gguf-lora")


def test_unknown_quant_type_is_refused(lora_run):
    with pytest.raises(ExportError, match="unknown quant type 'q3'; choose one of f16, q8_0, q4_0, q4_k_m"):
        export_model(lora_run, "gguf", ExportSettings(quant="q3", **SETTINGS))


def test_cli_export_errors_are_one_line(lora_run, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    for args, fragment in (([str(lora_run), "--format", "gguf", "--quant", "q3"], "unknown quant type 'q3'"),
                           ([str(tmp_path / "nowhere")], "no such run")):
        result = CliRunner().invoke(app, ["export", *args])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.stderr


def test_unsupported_architecture_is_refused_naming_it(tmp_path):
    from transformers import GPT2Config

    from tuneforge.export.gguf_file import ModelShape

    with pytest.raises(ExportError, match="does not support GPT2LMHeadModel; supported: LlamaForCausalLM"):
        ModelShape.of(GPT2Config(architectures=["GPT2LMHeadModel"]))


def test_run_without_checkpoint_and_missing_base(tmp_path, lora_run):
    import shutil

    with pytest.raises(TuneforgeError, match="not a tuneforge run or checkpoint directory"):
        export_model(tmp_path, "merged")
    moved = tmp_path / "run"
    shutil.copytree(lora_run, moved)
    meta_path = moved / "best" / "tuneforge.json"
    meta = json.loads(meta_path.read_text())
    meta.update(model_id=str(tmp_path / "gone"), model_source=str(tmp_path / "gone"))
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TuneforgeError, match="gone.*no such directory"):
        export_model(moved, "merged")


def test_full_disk_while_writing_leaves_no_partial_file(lora_run, monkeypatch):
    import gguf

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    target = lora_run / "export" / "model-q4_0.gguf"
    with pytest.raises(ExportError, match=r"writing .*model-q4_0\.gguf failed \(No space left on device\)"):
        export_model(lora_run, "gguf", ExportSettings(quant="q4_0", **SETTINGS))
    assert not target.exists()
    assert not list(target.parent.glob(".*partial"))
