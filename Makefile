# CityGate — `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes for the fast suite (pytest-xdist; a file's tests stay in one process). Most
# tests wait on brokers, processes and serial lines, so two processes on two cores take about
# half the time of one.
TEST_WORKERS ?= 2

.PHONY: demo test chaos soak cluster-demo bench lint install system-deps clean

$(PY):
	$(PYTHON) -c 'import sys; sys.exit("CityGate needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash scripts/ensure-system-deps.sh

demo: $(STAMP)
	$(VENV)/bin/citygate demo $(DEMO_ARGS)

# Browser tests run in their own process: Playwright keeps an event loop in the main thread.
test: $(STAMP) system-deps
	$(PY) -m pytest -m "not slow and not browser" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(PY) -m pytest -m "browser" -p no:cacheprovider $(PYTEST_ARGS)

chaos: $(STAMP) system-deps
	CHAOS_FULL=1 $(PY) -m pytest -m "hil and not soak" $(PYTEST_ARGS)

# One hour at the reference load with the broker restarted every ten minutes.
soak: $(STAMP) system-deps
	$(PY) -m pytest -m soak -s -p no:cacheprovider $(PYTEST_ARGS) hil_tests/test_soak.py

cluster-demo: $(STAMP) system-deps
	$(VENV)/bin/citygate cluster-demo $(DEMO_ARGS)

bench: $(STAMP) system-deps
	$(PY) -m bench $(BENCH)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
