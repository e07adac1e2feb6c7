"""Export: merged HF weights, GGUF models and GGUF LoRA adapters, each checked against the trained model."""

from tuneforge.export.run import FORMATS, ExportResult, ExportSettings, export_run

__all__ = ["FORMATS", "ExportResult", "ExportSettings", "export_run"]
