.DEFAULT_GOAL := help
PY := .venv/bin/python

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

setup: ## Create .venv and install everything (torch 2.13.0 first)
	bash scripts/setup.sh

run: setup ## Run the default job (embedded SmolLM2, offline)
	$(PY) run.py

test: ## Run the test suite (what CI runs)
	$(PY) -m pytest -m "not slow"

test-full: ## Run every test, slow sweeps included
	$(PY) -m pytest

format: ## Lint and format with ruff
	$(PY) -m ruff check --fix src tests scripts run.py
	$(PY) -m ruff format src tests scripts run.py
