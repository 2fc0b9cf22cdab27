# shrinkflow: two commands on a fresh machine with Python 3.11 and make.
#   make run    set up .venv, then run the pipeline on params.yaml (digits by default)
#   make test   set up .venv, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Project-local state and no telemetry (the CLI sets the same defaults when run without make).
export PREFECT_HOME ?= $(CURDIR)/.prefect
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false

.PHONY: install run test test-fast test-slow lint ui server bench lock clean help
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# requirements.lock pins the whole dependency tree; pyproject.toml pins the direct ones
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install shrinkflow with pinned dependencies

run: $(STAMP)  ## run the pipeline (prepare -> ... -> deploy) on params.yaml
	$(BIN)/shrinkflow run

# tests run in parallel workers, one CPU thread each; tests sharing a costly fixture stay together
TEST_WORKERS ?= 2
PYTEST = $(BIN)/pytest -n $(TEST_WORKERS)

test: $(STAMP)  ## run the test suite (all but the slowest: make test-slow)
	$(PYTEST) -m "not slow"

test-fast: $(STAMP)  ## core and stage tests only: no servers, subprocess pipelines, services or accuracy targets
	$(PYTEST) -m "not slow and not integration"

test-slow: $(STAMP)  ## the slowest tests: accuracy targets, whole pipelines per kind of input (CI runs it)
	$(PYTEST) -m slow

lint: $(STAMP)  ## ruff (style, imports, bugbear) and bandit (security) on the code
	$(BIN)/ruff check .
	$(BIN)/bandit -q -c pyproject.toml -r shrinkflow serving tasks flows bench infra

ui: $(STAMP)  ## open the MLflow UI on the project's store (http://127.0.0.1:5000)
	$(BIN)/shrinkflow ui

.PHONY: browser
browser:  ## headless Chromium and chromedriver for the UI test (apt-get, only when none is on PATH)
	@if { command -v chromium || command -v google-chrome; } >/dev/null && command -v chromedriver >/dev/null; \
	then echo "browser: $$(command -v chromium || command -v google-chrome), $$(command -v chromedriver)"; \
	else sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends chromium chromium-driver; fi

server: $(STAMP)  ## run a local MLflow tracking server on the project's store
	bash infra/mlflow-server.sh

.PHONY: stack-up stack-down stack-status
stack-up: $(STAMP)  ## start the service stack here (PostgreSQL, S3, MLflow, Prefect, Dask); see .stack/stack.env
	$(BIN)/python infra/stack.py up

stack-down: $(STAMP)  ## stop the service stack
	$(BIN)/python infra/stack.py down

stack-status: $(STAMP)  ## which services of the stack are up
	$(BIN)/python infra/stack.py status

bench: $(STAMP)  ## measure the pipeline and write reports/bench.{md,json}
	$(BIN)/python bench/run.py

lock: $(STAMP)  ## re-pin the whole dependency tree into requirements.lock
	$(BIN)/pip freeze --exclude-editable > requirements.lock

clean:  ## remove outputs, stores and caches (keeps .venv)
	rm -rf data/raw data/processed models metrics reports mlflow.db optuna.db mlartifacts .shrinkflow/search .prefect .dvc/cache .dvc/tmp .dvc-storage
