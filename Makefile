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

test: $(STAMP)
	$(PY) -m ruff check mosaicsync tests scripts
	$(PY) -m pytest -q -m "not heavy"

# Also the heavy reliability suites (tests/test_reliability.py): faults, SIGKILL, races, outage.
test-all: $(STAMP)
	$(PY) -m ruff check mosaicsync tests scripts
	$(PY) -m pytest -q

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
