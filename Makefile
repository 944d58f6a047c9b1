# The front door: every way to run, test and measure the Game Gateway.
# Needs only python3 (3.11+) and make; everything else is installed into .venv from the project's files.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=
DATA    ?= .gateway
USERS   ?= 50
TIME    ?= 60s
SHAPE   ?= burst
LOAD_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint load bench bench-ledger bench-e2e bench-hotpath bench-redis bench-ws build clean install help

help:
	@echo "make run     - the whole stack on this machine (gateway up)"
	@echo "make test    - lint, type-check and the whole test suite against real servers"
	@echo "make lint    - ruff, cython-lint and mypy"
	@echo "make load    - Locust tournament load + report + reconciliation (USERS, TIME, SHAPE, LOAD_ARGS)"
	@echo "make bench   - hot-path, Redis quota, ledger and end-to-end benchmarks (not part of make test)"
	@echo "make bench-ws - player websocket: idle sockets per GiB, balance push latency"
	@echo "make build   - (re)build the Cython extensions in place"
	@echo "make clean   - remove build products (keeps .venv and .gateway)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install --quiet -e '.[embedded,dev]'
	@touch $(STAMP)

install: $(STAMP)

build: $(STAMP)
	$(BIN)/python setup.py --quiet build_ext --inplace

run: build
	$(BIN)/gateway up

# Locust scenarios against the gateway on GATEWAY_HTTP_PORT (8080), or a `gateway up` started for the run;
# report and reconciliation in results/load-<time>/; non-zero exit when money was lost or doubled
load: build
	$(BIN)/python -m loadtests.run --users $(USERS) --time $(TIME) --shape $(SHAPE) $(LOAD_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/cython-lint hotpath
	$(BIN)/mypy

test: build
	$(BIN)/ruff check .
	$(BIN)/cython-lint hotpath
	$(BIN)/mypy
	@# a temp folder of this run's own (removed after it): pytest's shared default prunes the folders of
	@# other runs, embedded servers' data included, when several suites run on one machine at once
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(BIN)/pytest -q --basetemp="$$tmp/suite" $(PYTEST_ARGS) && \
	  GATEWAY_NO_EXTENSIONS=1 $(BIN)/pytest -q --basetemp="$$tmp/pure" tests/hotpath

bench: bench-hotpath bench-redis bench-ledger bench-e2e

bench-hotpath: build
	$(BIN)/pytest benchmarks/test_bench_hotpath.py -q -p no:cacheprovider --benchmark-columns=min,median,ops,rounds

bench-redis: build
	$(BIN)/python -m benchmarks.redis_quota_bench

bench-ledger: build
	$(BIN)/python -m benchmarks.ledger_bench

bench-e2e: build
	$(BIN)/python -m benchmarks.e2e_bench

# player websocket: idle sockets per GiB of gateway memory, bet → balance push latency (not in `make bench`)
WS_ARGS ?=
bench-ws: build
	$(BIN)/python -m benchmarks.ws_bench $(WS_ARGS)

clean:
	rm -rf build *.egg-info hotpath/*.c hotpath/*.so .pytest_cache .mypy_cache .ruff_cache .benchmarks
