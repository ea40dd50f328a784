# One-command set-up: every target installs what it needs into .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

.PHONY: setup demo test bench
setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/n3deploy demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python runtime/bench.py --write-benchmarks
