# Quick start: `make train` (install + train the default model), `make test` (install + whole test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install train test bench lint docs

$(BIN)/cvtool: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,slurm,video,mlflow,docs]'
	@touch $@

install: $(BIN)/cvtool

train: install
	$(BIN)/cvtool train

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/engine_overhead.py

lint: install
	$(BIN)/ruff check cvtool tests benchmarks

docs: install
	$(BIN)/mkdocs build --strict
