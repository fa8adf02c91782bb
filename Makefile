# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdet-installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m kdet.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile -q

test-all: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

# Regenerates docs/benchmarks.md (~20 min on a quiet 2-core machine before precision.py joined; its full run, with
# YOLOv3-416 and three architectures at batch 8 in two dtypes, adds several minutes there and did not finish in 20 min
# on a 2-core machine at load 12; finetune.py adds four 416-px yolov3-tiny trainings, ~5 min each when quiet). The slow tests (bar protocols, full-size training steps) run in `make test-all`;
# running them here too would double the page's learning runs. Check that every script runs:
# `$(PY) benchmarks/run_all.py --quick --out /tmp/bench.md --fragments /tmp/fragments` (all 9 scripts exit 0,
# 17 min at load 11-16 on 2 shared cores, 2026-12-02).
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info
