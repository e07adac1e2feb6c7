"""tuneforge: config-driven fine-tuning of transformer models on Ray Train, from one validated YAML."""

__version__ = "0.1.0"
