# The two commands a new user runs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/gateway.yaml
HOST   ?= 127.0.0.1
PORT   ?= 8080
DEMO_UPSTREAM_PORT ?= 9090
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run demo test check lint typecheck fmt install install-test redis-server chromium clean bench fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(TEST_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP) $@

install: $(STAMP)
install-test: $(TEST_STAMP)

## make run: the gateway on http://$(HOST):$(PORT) against W&B, in-process limiter.
run: $(STAMP)
	@if [ -z "$$WANDB_API_KEY" ]; then \
	  echo "WANDB_API_KEY is not set." >&2; \
	  echo "  Set it to a W&B API key (https://wandb.ai/authorize) and your project:" >&2; \
	  echo "    export WANDB_API_KEY=...  WANDB_PROJECT=<entity>/<project>" >&2; \
	  echo "  No W&B account? 'make demo' runs the gateway against the bundled fake upstream." >&2; \
	  exit 2; fi
	@if [ -z "$$WANDB_PROJECT" ]; then \
	  billed=$$(sed -n 's/.*$${WANDB_PROJECT:-\([^}]*\)}.*/\1/p' $(CONFIG) | head -n 1); \
	  [ -z "$$billed" ] || echo "warning: WANDB_PROJECT is not set: W&B bills this gateway's usage to the project '$$billed' ($(CONFIG)); export WANDB_PROJECT=<entity>/<project> to choose yours" >&2; fi
	@test -s config/default.keys || $(BIN)/inference-gateway keys new --save config/default.keys
	$(BIN)/inference-gateway serve --config $(CONFIG) --host $(HOST) --port $(PORT)

## make demo: the bundled fake W&B upstream plus the gateway wired to it; no account needed.
## Ports: PORT (the gateway) and DEMO_UPSTREAM_PORT (the fake upstream); both must be free.
demo: $(STAMP)
	@$(BIN)/inference-gateway demo --host $(HOST) --port $(PORT) --upstream-port $(DEMO_UPSTREAM_PORT)

## make check: linters and the type checker.
check: $(TEST_STAMP)
	$(BIN)/ruff check gateway tests fuzz
	$(BIN)/ruff format --check gateway tests fuzz
	$(BIN)/mypy
	$(BIN)/mypy tests

## redis-server: the tests start their own on a free port; install Debian's package when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing Debian's package"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

## chromium: the browser tests (tests/browser) drive Debian's headless Chromium through Playwright;
## install Debian's package when missing (Playwright's own browser download is never used).
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "/usr/bin/chromium not found: installing Debian's package"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## make test: linters, then the whole suite (unit, in-process API, end-to-end over real sockets,
## the /ui pages in a real browser).
test: $(TEST_STAMP) redis-server chromium check
	$(BIN)/pytest -q

## make bench: gateway vs direct under load (wrk; installs it when missing). BENCH_ARGS=--smoke etc.
bench: $(TEST_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## make fuzz: schemathesis (the gateway's /openapi.json; OpenAI's chat schema from the openai SDK)
## and hand-made bad requests against a real gateway and fake upstream; fails on any 5xx, error
## outside OpenAI's envelope, or key in an answer. Not part of `make test`; its own venv, .venv-fuzz.
## FUZZ_EXAMPLES=300 (cases per operation), FUZZ_SEED, FUZZ_PHASES, FUZZ_ARGS (schemathesis options).
FUZZ_VENV  := .venv-fuzz
FUZZ_STAMP := $(FUZZ_VENV)/.installed

$(FUZZ_VENV)/bin/python:
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/python -m pip install -q --upgrade pip

$(FUZZ_STAMP): pyproject.toml constraints.txt fuzz/constraints.txt | $(FUZZ_VENV)/bin/python
	$(FUZZ_VENV)/bin/pip install -q -c constraints.txt -c fuzz/constraints.txt -e . openai schemathesis
	touch $@

fuzz: $(FUZZ_STAMP)
	$(FUZZ_VENV)/bin/python fuzz/run.py

fmt: $(TEST_STAMP)
	$(BIN)/ruff format gateway tests fuzz
	$(BIN)/ruff check --fix gateway tests fuzz

clean:
	rm -rf $(VENV) $(FUZZ_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
