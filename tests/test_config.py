from __future__ import annotations

import pytest

from tests.helpers import write_config
from tuneforge.config import TrainConfig, load_config
from tuneforge.errors import ConfigError

BASE = "model_id: smollm2-135m-instruct\ntrain_path: data/demo/meetings_train.jsonl\n"


def test_unknown_key_names_line_and_nearest_key(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "learning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3:")
    assert "unknown key 'learning_rat'" in message
    assert "did you mean 'learning_rate'" in message


def test_unknown_lora_key_is_refused_with_suggestion(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "lora_config:\n  r: 8\n  lora_alpah: 16\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:5: unknown key 'lora_alpah' in lora_config")
    assert "did you mean 'lora_alpha'" in str(error.value)


def test_wrong_type_names_key_value_and_line(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "num_epochs: lots\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:3: num_epochs:")
    assert "'lots'" in str(error.value)


def test_missing_required_key(tmp_path):
    path = write_config(tmp_path / "run.yaml", "model_id: smollm2-135m-instruct\n")
    with pytest.raises(ConfigError, match="missing required key 'train_path'"):
        load_config(path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "lora_config: [r: 8\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:\d+: invalid YAML"):
        load_config(path)


def test_set_overrides_nested_keys_and_errors_name_the_override(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "lora_config:\n  r: 8\n")
    config = load_config(path, ["learning_rate=3e-4", "lora_config.r=16", "num_epochs=2"])
    assert config.learning_rate == pytest.approx(3e-4)
    assert config.lora_config == {"r": 16}
    assert config.num_epochs == 2
    with pytest.raises(ConfigError, match=r"^--set seeed=1: unknown key 'seeed' \(did you mean 'seed'"):
        load_config(path, ["seeed=1"])


def test_anyscale_file_loads_with_notes_for_keys_tuneforge_does_not_use(tmp_path):
    text = BASE + (
        "valid_path: data/demo/meetings_valid.jsonl\ncontext_length: 512\nnum_devices: 2\n"
        "worker_resources:\n  accelerator_type:A10G: 0.001\ntrain_batch_size_per_device: 16\n"
        "eval_batch_size_per_device: 16\nlearning_rate: 1e-4\nlr_scheduler_type: cosine\nnum_warmup_steps: 10\n"
        "padding: longest\nnum_checkpoints_to_keep: 1\nmax_num_checkpoints: 10\ndeepspeed:\n  config_path: z.json\n"
        "flash_attention_2: true\nlora_config:\n  r: 8\n  lora_alpha: 16\n  lora_dropout: 0.05\n"
        "  target_modules: [q_proj, v_proj]\n  task_type: CAUSAL_LM\n  bias: none\n  modules_to_save: []\n"
    )
    config = load_config(write_config(tmp_path / "anyscale.yaml", text))
    assert config.learning_rate == pytest.approx(1e-4)  # PyYAML reads 1e-4 as text; pydantic makes it a float
    assert config.worker_resources == {"accelerator_type:A10G": 0.001}
    assert any("'deepspeed'" in note for note in config.notes)
    assert any("'flash_attention_2'" in note for note in config.notes)


def test_relative_paths_resolve_from_cwd_then_config_dir(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "rows.jsonl").write_text('{"text": "x"}\n')
    path = write_config(tmp_path / "conf" / "run.yaml", "model_id: m\ntrain_path: rows.jsonl\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.train_path == str(tmp_path / "conf" / "rows.jsonl")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = TrainConfig(model_id="m", train_path="t.jsonl", lora_config={"r": 4}, num_epochs=3)
    path = write_config(tmp_path / "saved.yaml", config.to_yaml())
    again = load_config(path)
    assert again.model_dump(exclude={"train_path"}) == config.model_dump(exclude={"train_path"})


def test_classification_requires_its_fields():
    with pytest.raises(ValueError, match="text_fields"):
        TrainConfig(model_id="m", train_path="t.csv", task="classification", label_field="tag")


def test_unknown_key_with_nothing_close_lists_the_valid_keys(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "xyz_unrelated: 3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:3: unknown key 'xyz_unrelated' \(valid keys: .*learning_rate"):
        load_config(path)


def test_malformed_set_value_is_one_clear_error(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE)
    with pytest.raises(ConfigError, match=r"^--set learning_rate=\[1: the value is not valid YAML"):
        load_config(path, ["learning_rate=[1"])


def test_best_metric_must_be_one_the_task_reports(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "best_metric: accuracy\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:3: best_metric: unknown metric 'accuracy'.*eval_perplexity"):
        load_config(path)
    classify = write_config(tmp_path / "c.yaml", BASE + "task: classification\ntext_fields: [t]\nlabel_field: l\n"
                                                        "best_metric: eval_f1\n")
    assert load_config(classify).best_mode == "max"


def test_saved_config_keeps_unset_keys_as_null(tmp_path):
    import yaml

    saved = yaml.safe_load(load_config(write_config(tmp_path / "run.yaml", BASE)).to_yaml())
    assert "valid_path" in saved and saved["valid_path"] is None and "tune" not in saved


def test_an_error_in_a_set_value_names_the_set_not_the_file(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "lora_config:\n  r: 8\n")
    with pytest.raises(ConfigError, match=r"^--set lora_config\.rank=8: unknown key 'rank' in lora_config "
                                          r"\(did you mean 'r'\?\)$"):
        load_config(path, ["lora_config.rank=8"])


def test_a_lora_rank_of_zero_names_its_line(tmp_path):
    path = write_config(tmp_path / "run.yaml", BASE + "lora_config:\n  lora_alpha: 16\n  r: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (f"{path}:5: lora_config.r must be a positive integer, the adapter's rank, e.g. 8 "
                                "(got 0)")
