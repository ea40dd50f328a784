# One-command set-up: every target installs what it needs into .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	@# setuptools' editable build prints an informational "Editable installation." warning wall on every
	@# first install; this filter drops exactly that message (warnings only: errors still print)
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# NVIDIA's tensorrt-stubs live in their own small environment (never in .venv: there they would make
# `import tensorrt` succeed); tests/test_typecheck.py runs mypy with it. Offline, the tests skip instead.
STUBS := .venv-trt-stubs/.n3deploy-ready

$(STUBS): $(STAMP) tests/trt_stubs.py
	-$(BIN)/python tests/trt_stubs.py && touch $(STUBS)

.PHONY: setup demo test bench trt-stubs
setup: $(STAMP)

trt-stubs: $(STUBS)

demo: $(STAMP)
	$(BIN)/n3deploy demo

test: $(STAMP) $(STUBS)
	$(BIN)/python -m pytest -q -rs; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python runtime/bench.py --write-benchmarks
