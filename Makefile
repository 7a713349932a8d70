# hacnn_nbdev — every target sets itself up: a fresh clone needs nothing but python3 and make.
#   make demo   the main job: synthetic world -> train HA-CNN on the CPU -> evaluate -> runs/demo/
#   make test   export/clean checks, the notebooks' own tests (nbdev_test) and pytest
#   make docs   the documentation site in docs/ (offline; see nbs/index.ipynb)
#   make bench  benchmarks side by side with torchreid's HACNN (see benchmarks/README.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel that lies on these machines' disk: a bare `torch` pulls a CUDA build of GBs.
TORCH ?= torch==2.13.0
# one thread per worker: two test workers x default threads on 2 cores oversubscribe
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
N_WORKERS ?= 2

.PHONY: help venv dev test check-export check-clean check-readme readme nbtest pytest demo docs docs-test chromium bench export clean-nbs lab

help:
	@sed -n '1,6p' Makefile

$(BIN)/.installed-test: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip setuptools wheel
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed-test

$(BIN)/.installed-dev: $(BIN)/.installed-test
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

dev: $(BIN)/.installed-dev     ## + jupyterlab, for reading and editing the notebooks

lab: dev
	$(BIN)/jupyter lab nbs/

export: venv
	$(BIN)/nbdev_export

clean-nbs: venv
	$(BIN)/nbdev_clean

# hacnn_nbdev/ must be exactly what nbdev_export makes of nbs/
check-export: venv
	@tmp=$$(mktemp -d) && cp -r hacnn_nbdev $$tmp/before && $(BIN)/nbdev_export && \
	if ! diff -r -q -x __pycache__ $$tmp/before hacnn_nbdev; then \
	  echo "FAIL: hacnn_nbdev/ was out of step with nbs/ (nbdev_export changed the files above); commit the exported files."; exit 1; \
	else echo "ok: hacnn_nbdev/ matches nbs/"; fi

# notebooks must be committed clean (nbdev_clean is a no-op)
check-clean: venv
	@tmp=$$(mktemp -d) && cp -r nbs $$tmp/before && $(BIN)/nbdev_clean && \
	if ! diff -r -q -x .ipynb_checkpoints $$tmp/before nbs; then \
	  echo "FAIL: notebooks were not clean (nbdev_clean changed the files above); commit them cleaned."; exit 1; \
	else echo "ok: notebooks are clean"; fi

nbtest: venv
	$(TEST_ENV) $(BIN)/nbdev_test --n_workers $(N_WORKERS) --timing

pytest: venv
	$(TEST_ENV) $(BIN)/python -m pytest -q -n $(N_WORKERS) tests

# README.md is made from nbs/index.ipynb (tools/make_readme.py: standard library only, no venv, < 1 s)
readme:
	$(PYTHON) tools/make_readme.py

check-readme:
	@$(PYTHON) tools/make_readme.py --check

test: check-readme check-export check-clean nbtest pytest

# In CI (the runner sets CI=true) `make test` also runs the browser test of the docs: installing Chromium
# (~40 s) + building docs/ (~30-60 s) + loading every page (~20-30 s) fits the 15-minute budget of make test.
# On a developer's machine `make test` stays root-free; run `make docs-test` there.
ifeq ($(CI),true)
test: docs-test
endif

# ---- the main job ---------------------------------------------------------
DEMO_OUT ?= runs/demo
SYNTH_ROOT ?= data/synthetic
demo: venv
	$(BIN)/hacnn_demo --root $(SYNTH_ROOT) --out $(DEMO_OUT)

# ---- documentation --------------------------------------------------------
$(BIN)/.installed-docs: $(BIN)/.installed-test
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

# docs/ from nbs/ without Quarto: nbdev's processing -> MkDocs Material + mkdocs-jupyter (also refreshes README.md)
DOCS_FLAGS ?=   # e.g. --keep-going: build the pages of the notebooks that work, list the others
docs: $(BIN)/.installed-docs
	$(TEST_ENV) $(BIN)/python tools/build_docs.py $(DOCS_FLAGS)

# headless Chromium for docs-test: Debian's chromium + chromium-driver, installed here when missing (as root)
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "docs-test needs Chromium: sudo apt-get install chromium chromium-driver"; exit 1; fi

# every page in headless Chromium over http://127.0.0.1: no console errors, no request to another host,
# no broken link/image/#anchor, math typeset, search answers; screenshot in /tmp/hacnn_nbdev-docs-test/home.png
docs-test: docs chromium
	$(BIN)/python tools/test_docs.py

# ---- benchmarks -----------------------------------------------------------
$(BIN)/.installed-bench: $(BIN)/.installed-test
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

# the evaluator against a full argsort first (1 thread, ~1.5 min): run.py's targets table reads its metrics.json
bench: $(BIN)/.installed-bench
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_metrics.py --threads 1 --out benchmarks/results/metrics.json
	$(BIN)/python benchmarks/run.py --out benchmarks/results
