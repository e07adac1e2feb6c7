"""Export: merged HF weights, GGUF models and GGUF LoRA adapters, each checked against the trained model."""

from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "ExportResult", "ExportSettings", "export_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the child process that runs llama.cpp (export.parity) never imports torch.
    if name in __all__:
        from tuneforge.export import exporters

        return getattr(exporters, name)
    raise AttributeError(f"module 'tuneforge.export' has no attribute '{name}'")
