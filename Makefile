# codex-hub: `make run` starts the product, `make test` runs the whole suite.
# Both install what they need on first use (virtualenv, package, pinned codex CLI).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
CODEX_VERSION := 0.169.0
CODEX_STAMP := $(TOOLS)/.codex-$(CODEX_VERSION)
VENV_STAMP := $(VENV)/.installed
# The native codex binary (the npm wrapper spawns it as a child that survives a kill).
CODEX_NATIVE = $(firstword $(wildcard $(TOOLS)/node_modules/@openai/codex-linux-*/vendor/*/bin/codex))
PYTEST_ARGS ?=

.PHONY: run install test lint fmt bench faults stress clean browser

run: install
	CODEX_BIN=$${CODEX_BIN:-$(abspath $(CODEX_NATIVE))} $(VENV)/bin/codex-hub up

install: $(VENV_STAMP) $(CODEX_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(CODEX_STAMP):
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error @openai/codex@$(CODEX_VERSION)
	touch $@

# Headless Chromium for the monitor's browser tests, from Debian (never a download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium unavailable: browser tests will be skipped"; }

test: install browser
	CODEX_BIN=$(abspath $(CODEX_NATIVE)) $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Every slow test, then the quick fault tests `make test` also runs (tests/faults/).
faults: install browser
	CODEX_BIN=$(abspath $(CODEX_NATIVE)) $(PY) -m pytest -q -m slow $(PYTEST_ARGS)
	CODEX_BIN=$(abspath $(CODEX_NATIVE)) $(PY) -m pytest -q -m "not slow" tests/faults $(PYTEST_ARGS)

# The quick suite twice at once, STRESS_ROUNDS times: a loaded machine is where timing
# races show (the kind that fail CI once in a while). Logs in artifacts/stress-*.log.
STRESS_ROUNDS ?= 3
stress: install browser
	@mkdir -p artifacts; export CODEX_BIN=$(abspath $(CODEX_NATIVE)); \
	for round in $$(seq $(STRESS_ROUNDS)); do \
	  $(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS) > artifacts/stress-a.log 2>&1 & a=$$!; \
	  $(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS) > artifacts/stress-b.log 2>&1 & b=$$!; \
	  wait $$a; ra=$$?; wait $$b; rb=$$?; \
	  tail -n 1 artifacts/stress-a.log artifacts/stress-b.log; \
	  if [ $$ra -ne 0 ] || [ $$rb -ne 0 ]; then \
	    grep -h -E '^(FAILED|ERROR) ' artifacts/stress-a.log artifacts/stress-b.log; \
	    echo "round $$round failed: see artifacts/stress-a.log and artifacts/stress-b.log"; exit 1; \
	  fi; \
	done

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy hub executor bridges codex_hub

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
