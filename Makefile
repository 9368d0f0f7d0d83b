# Every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck pytest bench bench-quick bench-profile chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/taskfuture demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -ra --cov=taskfuture --cov-report=term --cov-fail-under=85 $(PYTEST_ARGS)

test: lint typecheck pytest

# Benchmark-only tools go into the project venv; the peer libraries get their own
# environments under benchmarks/.envs/, which the harness creates itself.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet matplotlib py-spy
	touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.profiling
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --quick

bench-profile: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.profiling

chaos: $(STAMP)
	TASKFUTURE_CHAOS_FULL=1 $(BIN)/python -m pytest -q -ra -m chaos tests/test_chaos.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache demo-output
