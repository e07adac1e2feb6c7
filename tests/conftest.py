"""Shared fixtures: the bundled SmolLM2 (converted once into the repo's cache), tiny models built from its real
tokenizer, one Ray instance for the whole session, and helpers to write data and configs."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from tuneforge.models import resolve_model

    return Path(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from tuneforge.models import ensure_distinct_pad, load_tokenizer

    tokenizer = load_tokenizer(str(smol_dir))
    ensure_distinct_pad(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_dir) -> Path:
    """A 2-layer Llama with SmolLM2's real tokenizer and chat template: trains in milliseconds per step. Embeddings
    are initialised wide (std 0.2) so that LoRA alone, with the tied output layer frozen, can make logits peaky."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(smol_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, initializer_range=0.2, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(config)
    # Like SmolLM2, the config says pad = EOS, so the EOS embedding row was initialised to zeros; a real checkpoint
    # has a trained row there.
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=config.initializer_range)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def wide_terminal(monkeypatch):
    """Rich tables printed one line per row, however long the paths in them (Rich reads COLUMNS as it prints)."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture(scope="session")
def ray_session():
    from tuneforge.cluster import ensure_ray

    info = ensure_ray(dashboard=True)  # the dashboard serves the State API Ray Train needs to clean up
    yield info
    import ray

    ray.shutdown()


# ----------------------------------------------------------------------------------------------------------------
# Tiny runs trained once per session through the real entry point (tuneforge.train.train): later stages (eval,
# export, generate, runs) are tested on what training really leaves behind, not on hand-written run directories.
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_chat_data(tmp_path_factory) -> dict[str, Path]:
    """Chat rows "Say X." -> "X": train.jsonl (16 rows) and valid.jsonl (the 4 distinct rows)."""
    from tests.helpers import SAY_WORDS, chat_row, write_jsonl

    folder = tmp_path_factory.mktemp("tiny-chat-data")
    rows = [chat_row(f"Say {word}.", word) for word in SAY_WORDS]
    return {"train": write_jsonl(folder / "train.jsonl", rows * 4), "valid": write_jsonl(folder / "valid.jsonl", rows)}


@pytest.fixture(scope="session")
def tiny_runs_dir(tmp_path_factory) -> Path:
    """The output_dir both session runs (lora/, full/) live in."""
    return tmp_path_factory.mktemp("tiny-runs") / "runs"


@pytest.fixture(scope="session")
def tiny_lora_run(ray_session, tiny_llama_dir, tiny_chat_data, tiny_runs_dir) -> Path:
    """A completed LoRA run (r 4, alpha 8, every linear layer): 12 steps at lr 2e-2, enough for the adapter to
    change the model's answers; checkpoints at steps 6 and 12."""
    from tests.helpers import train_tiny_causal

    result = train_tiny_causal(tiny_llama_dir, tiny_chat_data, tiny_runs_dir / "lora", num_epochs=3,
                               learning_rate=2e-2, max_num_checkpoints=2, lora_config={"r": 4, "lora_alpha": 8})
    return result.run_dir


@pytest.fixture(scope="session")
def resumed_full_run(ray_session, tiny_llama_dir, tiny_chat_data, tiny_runs_dir) -> SimpleNamespace:
    """A full fine-tune (no lora_config), 4 steps with checkpoints at 2 and 4, finished the way a user recovers from
    a crash: the library run dies right after its first checkpoint (a Ray Train callback raises), then
    `tuneforge train --resume RUN` (the command line, in this process) completes it. Returns `run`, `after_crash`
    (what the run directory said between the two) and `cli` (the resume's CompletedProcess)."""
    from ray.train import UserCallback

    from tests.helpers import train_tiny_causal
    from tests.test_cli import tuneforge_here
    from tuneforge.rundir import RunDir

    class CrashAfterFirstCheckpoint(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            raise RuntimeError("simulated crash")

    run = RunDir(tiny_runs_dir / "full")
    try:
        train_tiny_causal(tiny_llama_dir, tiny_chat_data, run.path, num_epochs=1, learning_rate=3e-3,
                          max_num_checkpoints=2, lora_config=None, callbacks=[CrashAfterFirstCheckpoint()])
    except Exception:  # noqa: BLE001 - the simulated crash, as Ray Train wraps it
        pass
    else:
        pytest.fail("the run was not interrupted by the crashing callback")
    after_crash = SimpleNamespace(state=run.state(), has_results=run.results_file.exists(),
                                  latest_step=run.latest_step(), metrics=run.metrics())
    cli = tuneforge_here("train", "--resume", str(run.path))
    return SimpleNamespace(run=run.path, after_crash=after_crash, cli=cli)


@pytest.fixture(scope="session")
def tiny_full_run(resumed_full_run) -> Path:
    """The completed full fine-tune of `resumed_full_run`."""
    assert resumed_full_run.cli.returncode == 0, resumed_full_run.cli.stderr + resumed_full_run.cli.stdout
    return resumed_full_run.run


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from tuneforge.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("minilm-l6"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    """A one-layer BERT classifier (labels nlp/vision) with MiniLM's tokenizer, saved as an HF model directory:
    trains in milliseconds per step."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    labels = ["nlp", "vision"]
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(minilm_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=2, id2label=dict(enumerate(labels)), label2id={"nlp": 0, "vision": 1}))
    folder = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_classifier_run(tmp_path_factory, tiny_bert_dir, ray_session) -> Path:
    """ROOT/runs/tiny, trained by `tuneforge.train.train`: a LoRA classifier on the tiny BERT, 12 rows split half
    and half (stratified) into training and validation, two steps."""
    from tests.helpers import config_for, rows, write_csv
    from tuneforge.train import train

    root = tmp_path_factory.mktemp("tiny-classifier")
    data = write_csv(root / "p.csv", rows({"nlp": 6, "vision": 6}))
    run = root / "runs" / "tiny"
    config = config_for(data, model_id=str(tiny_bert_dir), valid_split=0.5, lora_config={"r": 4},
                        train_batch_size_per_device=3, eval_batch_size_per_device=6, num_epochs=1, learning_rate=5e-2,
                        num_warmup_steps=0, max_num_checkpoints=1, precision="fp32", seed=1,
                        output_dir=str(run.parent), run_name="tiny")
    train(config, run_dir=run)
    return run


@pytest.fixture(scope="session")
def tagger_checkpoint(tmp_path_factory) -> Path:
    """A token classification checkpoint laid out as a merged export (weights, tokenizer, tuneforge.json), its head
    untrained: serving it must give exactly the spans its Tagger finds."""
    import torch
    from transformers import AutoModelForTokenClassification

    from tests.helpers import TAGGER_CONTEXT, TAGS
    from tuneforge.models import load_tokenizer
    from tuneforge.models.sources import resolve_model
    from tuneforge.rundir import CheckpointMeta

    source = resolve_model("minilm-l6")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("served") / "places"
    AutoModelForTokenClassification.from_pretrained(source, num_labels=len(TAGS)).save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    CheckpointMeta(task="token_classification", model_id="minilm-l6", labels=TAGS, tag_scheme="IOB2",
                   context_length=TAGGER_CONTEXT).write(folder)
    return folder


@pytest.fixture(scope="session")
def classifier(tmp_path_factory):
    """A MiniLM classifier (billing, bug, praise; head untrained) as the server holds one, named `tickets`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tuneforge.models import load_tokenizer
    from tuneforge.models.sources import resolve_model
    from tuneforge.predict import Predictor
    from tuneforge.rundir import CheckpointMeta
    from tuneforge.serve.engines import Classifier

    source = resolve_model("minilm-l6")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=3).eval()
    meta = CheckpointMeta(task="classification", model_id="minilm-l6", shape="classification",
                          labels=["billing", "bug", "praise"], text_fields=["text"], context_length=64)
    return Classifier("tickets", Predictor(model, load_tokenizer(source), meta))
