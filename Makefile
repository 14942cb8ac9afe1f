# Two commands on a fresh machine: `make run` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
# The platform black-box suite (Telegram and Discord fakes, the tests marked `platform`):
# `make test` runs it a second time with every test's bot on its own database of a real
# PostgreSQL, ~70 s more.
POSTGRES_PASS := -q -m platform --storage=postgresql

.PHONY: run test test-postgres setup lint format bench docs locales clean

run: setup  ## set everything up and start the bot (console chat when no platform token is set)
	@$(PY) -m bot run

test: setup  ## set everything up, lint, type-check, and run the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy bot adapters tests bench
	$(VENV)/bin/pytest
	$(VENV)/bin/pytest $(POSTGRES_PASS)

test-postgres: setup  ## only the platform suite, on PostgreSQL
	$(VENV)/bin/pytest $(POSTGRES_PASS)

setup:
	@scripts/setup.sh

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
