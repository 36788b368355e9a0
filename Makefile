# The two commands: `make run` runs Chute, `make test` passes the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean chromium wrk

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("chute needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

run: $(STAMP)
	$(BIN)/chute serve --host 127.0.0.1 --port 8000

# The browser tests drive Debian's Chromium (never a downloaded one): installed here when it is missing.
chromium:
	@[ -x /usr/bin/chromium ] || { echo "make: installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && apt-get install -y -qq chromium; } || \
	  { echo "make: the browser tests need /usr/bin/chromium: apt-get install chromium (as root)" >&2; exit 1; }

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# bench/upload.py's small-upload part drives wrk: installed here when it is missing.
wrk:
	@command -v wrk >/dev/null || { echo "make: installing Debian's wrk for bench/upload.py"; \
	  apt-get update -qq && apt-get install -y -qq wrk; } || \
	  { echo "make: bench/upload.py needs wrk: apt-get install wrk (as root)" >&2; exit 1; }

bench: $(STAMP) wrk
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/notify.py
	$(BIN)/python bench/cost.py
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
