# ecdna-exp: run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY_MODELS ?= .tiny-models
export HF_HUB_OFFLINE ?= 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast ui app bench tiny-models browser lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision are pinned to releases that make the official VLM processors work on CPU.
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[gpu,segmenter,api,demo,dev,slurm]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with all extras

demo: install ## Run the baselines on synthetic patches and print the results table
	$(BIN)/python -m ecdna_exp -m model=constant,classical

browser: ## Install Debian's Chromium for the app's browser tests (needs root and apt)
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium is missing and cannot be installed here; browser tests will be skipped"; fi; }

test: install browser ## Install, then run every test that needs no GPU
	$(BIN)/python -m pytest -m "not gpu" -q

test-fast: install ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not gpu and not slow and not browser" -q

tiny-models: install ## Build tiny random Qwen2-VL, MiniCPM-V and Pixtral checkpoints in .tiny-models/
	$(BIN)/python -m ecdna_exp.models.tiny --out $(TINY_MODELS)

ui: install ## Open the MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

app: install ## Start the demo app on http://127.0.0.1:7860
	$(BIN)/python -m ecdna_exp.app

bench: install ## Print images per second and peak memory per batch size
	$(BIN)/python benchmarks/bench_models.py

lint: install ## Check the code with ruff
	$(BIN)/ruff check ecdna_exp hydra_plugins tests benchmarks

clean: ## Remove Hydra output folders (keeps mlruns/ and .venv/)
	rm -rf outputs multirun
