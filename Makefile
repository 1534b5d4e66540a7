# Everything installs into .venv from scratch; torch first (the CPU build, exactly 2.13.0),
# so that the project's `torch>=...` requirement is already met and nothing downloads CUDA.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-all test-ray test-service lint bench-quick bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev,plots]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/expunge demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow and not ray and not service" $(PYTEST_ARGS)

# Ray is an optional extra (~330 MB, ~4 s per cluster start): its tests have their own target.
test-ray: $(STAMP)
	$(PY) -m pip install -e ".[ray]"
	$(PY) -m pytest -m ray $(PYTEST_ARGS)

# `expunge serve` needs the optional service extra (FastAPI, uvicorn): its tests, including
# the 200-request load test against a real server process, have their own target.
test-service: $(STAMP)
	$(PY) -m pip install -e ".[service]"
	$(PY) -m pytest -m service $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist .pytest_cache
