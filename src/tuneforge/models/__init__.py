"""Models: where they come from (`sources`), their tokenizers (`tokenizers`), the model to train (`training`) and a
trained checkpoint for inference (`loading`) and a LoRA model folded for generation (`inference`)."""

from tuneforge.models.sources import (
    BUNDLED,
    GGUF_ORIGIN_FILE,
    ModelError,
    converted_model_dir,
    load_model_config,
    needs_conversion,
    resolve_model,
    tuneforge_home,
)
from tuneforge.models.tokenizers import ensure_distinct_pad, load_tokenizer, match_vocab, use_pad_token
from tuneforge.models.training import (
    check_lora_targets,
    compile_layers,
    load_model_for_training,
    lora_settings,
    make_lora_config,
)

__all__ = [
    "BUNDLED", "GGUF_ORIGIN_FILE", "ModelError", "check_lora_targets", "compile_layers", "converted_model_dir",
    "ensure_distinct_pad", "load_model_config", "load_model_for_training", "load_tokenizer", "lora_settings",
    "make_lora_config", "match_vocab", "needs_conversion", "resolve_model", "tuneforge_home", "use_pad_token",
]
