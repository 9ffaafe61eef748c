# Two commands a newcomer needs: `make run` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m connector.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app workers connector sandbox
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
