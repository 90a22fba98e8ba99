# The two commands of the README: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint clean bench bench-quick

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# On two workers (pytest-xdist): most of the suite's time is spent waiting on the subprocesses
# it starts (the CLI, the platform, PostgreSQL), so two workers overlap it even on two cores.
# `--dist loadfile` keeps each file on one worker, so a module's platform is started once; the
# files go out in collection order, which tests/conftest.py starts with the heavy ones.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PY) -m ruff check mosaicsync tests scripts
	$(PYTEST) -m "not heavy"

# Also the heavy reliability suites (tests/test_reliability.py): faults, SIGKILL, races, outage.
test-all: $(STAMP)
	$(PY) -m ruff check mosaicsync tests scripts
	$(PYTEST)

# Benchmarks against a local platform the harness starts; results land in bench/results/.
bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
