# The two commands of the README: `make demo` (the main job on embedded defaults) and
# `make test` (the whole suite). Both create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip prints "Location ... is ignored" for every package on these machines: noise.
QUIET := sed -u '/is ignored/d'

.PHONY: demo test lint install

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt 2>&1 | $(QUIET)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET)
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pulserank demo $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
