# codex-hub: `make run` starts the product, `make test` runs the whole suite.
# Both install what they need on first use, and only what the lock files name:
#   uv.lock                  every Python dependency, runtime and dev, with hashes
#   tools/package-lock.json  the pinned Codex CLI (npm ci)
#   tools/uv-requirements.txt  uv itself, with hashes (pip --require-hashes)
# so a fresh machine gets exactly what CI tested, whatever PyPI or npm publish tomorrow.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := tools
UV_VENV := $(TOOLS)/uv
UV := $(UV_VENV)/bin/uv
CODEX_STAMP := $(TOOLS)/node_modules/.installed
# The native codex binary (the npm wrapper spawns it as a child that survives a kill).
CODEX_NATIVE = $(firstword $(wildcard $(TOOLS)/node_modules/@openai/codex-linux-*/vendor/*/bin/codex))
PYTEST_ARGS ?=

# uv uses the Python it is given and never downloads one; the project's venv is .venv.
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_NO_PROGRESS := 1

.PHONY: run install install-run codex test test-latest lint fmt bench faults stress \
	clean browser lock lock-check

run: install-run
	CODEX_BIN=$${CODEX_BIN:-$(abspath $(CODEX_NATIVE))} $(VENV)/bin/codex-hub up

# Runtime dependencies only, exactly as locked; --inexact leaves dev tools a `make test`
# installed in place, so switching between run and test installs nothing twice.
install-run: $(UV) codex
	$(UV) sync --quiet --frozen --no-dev --inexact

# Everything, runtime and dev, exactly as locked (anything else in .venv is removed).
install: $(UV) codex
	$(UV) sync --quiet --frozen

$(UV): $(TOOLS)/uv-requirements.txt
	test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  --require-hashes -r $(TOOLS)/uv-requirements.txt
	touch $@

codex: $(CODEX_STAMP)

$(CODEX_STAMP): $(TOOLS)/package.json $(TOOLS)/package-lock.json
	npm ci --prefix $(TOOLS) --no-audit --no-fund --loglevel=error
	touch $@

# Refresh uv.lock to the newest versions pyproject.toml allows; commit it once
# `make test` passes. (The codex pin moves by editing tools/package.json: see README.)
lock: $(UV)
	$(UV) lock --upgrade

# Fails when uv.lock does not match pyproject.toml (CI runs it before the tests).
lock-check: $(UV)
	$(UV) lock --check

# Headless Chromium for the monitor's browser tests, from Debian (never a download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium unavailable: browser tests will be skipped"; }

test: install browser
	CODEX_BIN=$(abspath $(CODEX_NATIVE)) $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The suite against the newest versions pyproject.toml allows, ignoring the lock, in a
# venv of its own: how to see upstream drift by choice, before `make lock`. Not CI.
LATEST_VENV := .venv-latest
test-latest: $(UV) codex browser
	test -x $(LATEST_VENV)/bin/python || $(UV) venv --quiet $(LATEST_VENV)
	VIRTUAL_ENV=$(abspath $(LATEST_VENV)) $(UV) pip install --quiet --upgrade \
	  --resolution highest -e . --group dev
	@echo "newest versions under test (uv.lock has the tested ones):"
	@VIRTUAL_ENV=$(abspath $(LATEST_VENV)) $(UV) pip freeze \
	  | grep -iE '^(aiohttp|cryptography|asyncssh|pydantic|slack-bolt|python-telegram-bot|openai)==' || true
	CODEX_BIN=$(abspath $(CODEX_NATIVE)) $(LATEST_VENV)/bin/python -m pytest -q \
	  -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

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
	$(VENV)/bin/mypy wire kernel hub executor bridges codex_hub
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# `make bench` runs every suite; `make bench SUITE=hub` (or SUITE="hub feed") only those.
# (`make bench hub` would ask make for a target named hub: the directory, so nothing.)
SUITE ?=
BENCH_ARGS ?=
bench: install
	$(PY) -m bench $(SUITE) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(UV_VENV) $(TOOLS)/node_modules .pytest_cache .mypy_cache .ruff_cache
