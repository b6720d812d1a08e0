# fluxauth: `make demo` runs it, `make test` checks it. Both build their own virtual environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit quick system-deps stock-servers bench loadtest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fluxauth demo

# What the tests need beyond Python, from Debian and npm (scripts/system-deps.sh):
# Redis and PostgreSQL (each started if it is not running), nginx, Caddy, wrk, Chromium, GDAL, and
# maplibre-gl + playwright-core for the browser test.
system-deps:
	@scripts/system-deps.sh

# The stock tile servers the route tests run behind fluxauth (TiTiler, xpublish with
# xpublish-tiles and xpublish-wms, MapProxy) in .venv-stock, Python >= 3.12, pinned by
# tests/stock/requirements.txt; rebuilt only when that file changes (about 2-3 minutes).
stock-servers:
	@scripts/stock-servers.sh

lint: $(STAMP)
	$(BIN)/ruff check fluxauth tests loadtests
	$(BIN)/ruff format --check fluxauth tests loadtests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest

# The unit tests alone (no servers, no processes): seconds, for the edit-test loop.
quick: $(STAMP)
	$(BIN)/python -m pytest -m "not servers"

test: $(STAMP) system-deps stock-servers lint typecheck unit

# fluxauth side by side with Caddy, nginx auth_basic and nginx forward-auth (about 6 minutes;
# `make bench BENCH_ARGS=--quick` for about 1.5). bench.py installs wrk, nginx and Caddy itself.
bench: $(STAMP)
	$(BIN)/python loadtests/bench.py $(BENCH_ARGS)

# Locust scenarios for 60 s (LOADTEST_ARGS="--scenario rotation", "--soak 30m", "--duration 5m").
loadtest: $(STAMP)
	$(BIN)/python loadtests/run_locust.py $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-stock .fluxauth-demo .pytest_cache .mypy_cache .ruff_cache
