# Every target works from a fresh clone with only Python 3.10+: the first one that needs the
# virtualenv creates it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where `make run` serves; change them on the command line: make run PORT=9000 HOST=0.0.0.0.
# Not from the environment (?=): some shells and platforms set HOST or PORT for their own ends,
# and they must not move the server, or expose it.
HOST := 127.0.0.1
PORT := 8000

.DEFAULT_GOAL := help
.PHONY: help setup run test test-fast tqdm-suite lint fmt bench dist clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' -v host='$(HOST)' -v port='$(PORT)' \
		'{gsub(/[$$][(]HOST[)]/, host, $$2); gsub(/[$$][(]PORT[)]/, port, $$2); \
		printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the package with its dev tools

run: $(STAMP) ## start the server (in-memory store) on $(HOST):$(PORT) (change: make run PORT=9000 HOST=0.0.0.0)
	$(BIN)/python -m progressista.server --host $(HOST) --port $(PORT)

test: $(STAMP) ## run the whole test suite, tqdm's own tests with RemoteTqdm included
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory tqdm-suite

test-fast: $(STAMP) ## the quick loop: every test but the slow ones (real processes, wheel, browser)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

tqdm-suite: $(STAMP) ## tqdm's own tests with RemoteTqdm in tqdm's place, server up and down
	$(BIN)/python -m tests.tqdm_suite

lint: $(STAMP) ## ruff and strict mypy over package and tests
	$(BIN)/ruff check progressista tests
	$(BIN)/ruff format --check progressista tests
	$(BIN)/mypy

fmt: $(STAMP) ## format and fix imports
	$(BIN)/ruff check --fix --select I progressista tests
	$(BIN)/ruff format progressista tests

bench: $(STAMP) ## measure server, Redis store, client, dashboard and slow connections against their targets (needs wrk, redis-server, chromium)
	$(BIN)/python -m tests.bench.server
	$(BIN)/python -m tests.bench.scale
	$(BIN)/python -m tests.bench.fanout
	$(BIN)/python -m tests.bench.redis
	$(BIN)/python -m tests.bench.jobs
	$(BIN)/python -m tests.bench.client
	$(BIN)/python -m tests.bench.dashboard
	$(BIN)/python -m tests.bench.slowloris

dist: $(STAMP) ## build the sdist and wheel into dist/
	$(BIN)/python -m build --outdir dist .

clean: ## remove the virtualenv, builds and caches
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
