# The two commands of the README, and the pieces they are made of.
# Each target creates .venv when it is missing and installs what it needs;
# an install is redone only when pyproject.toml changes.

VENV := .venv
BIN := $(VENV)/bin

# The first interpreter on PATH that is Python 3.11 or newer.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)

.PHONY: demo canary test lint typecheck unit bench clean

demo: $(VENV)/.installed-run
	$(BIN)/meshkit up -p examples/shop

# With the shop running (SHOP_ADMIN_KEY=... make demo, in another terminal; the
# same key here): a canary of payments.
canary: $(VENV)/.installed-run
	$(BIN)/python examples/shop/canary.py

test: lint typecheck unit

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	$(BIN)/pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.policies

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "meshkit needs Python 3.11 or newer on PATH (python3.11, python3.12, python3.13 or python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[shop]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,etcd,jwt,nats,postgres,redis,shop]'
	@touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
