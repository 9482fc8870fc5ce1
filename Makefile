# Two entry points, both of which install first (idempotently) into ./.venv:
#   make demo   install, then run the whole pipeline offline on the synthetic demo corpus
#   make test   install, then lint (ruff, configured in pyproject.toml) and run the test suite
# TORCH is installed first and pinned so that pip never resolves an unpinned torch to a
# multi-GB CUDA build on a CPU machine; override it for a GPU machine, e.g. TORCH=torch==2.13.0
# with your CUDA index configured, and EXTRAS=gpu,test for faiss-gpu.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= cpu,test
BIN := $(VENV)/bin
# dvc runs `python -m stages.NAME`: that python must be the venv's
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	$(BIN)/python -m clapart_core.scoring.metrics --setup
	touch $@

demo: install
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/clapart bench
