# Two commands a fresh machine needs (Python 3.11 + make): `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STATE  := .ingest-dev
COUNT  ?= 20000

.PHONY: install run demo test test-fast sanitize lint typecheck bench clean dev-up dev-down

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $(STAMP)

install: $(STAMP)

## run: embedded stack + sample producer + the streaming daemon, until Ctrl-C.
run: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/run-demo.sh $(COUNT)

## test: the whole suite (unit, integration and fault tests on the embedded stack).
test: $(STAMP)
	$(BIN)/ruff check ingest backfill tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

## sanitize: the native transcoder's property tests under ASan + UBSan (its own build, in build/).
sanitize: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/sanitize.sh

lint: $(STAMP)
	$(BIN)/ruff check ingest backfill tests bench
	$(BIN)/ruff format --check ingest backfill tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

dev-up: $(STAMP)
	$(BIN)/ingest dev up --state-dir $(STATE)

dev-down: $(STAMP)
	$(BIN)/ingest dev down --state-dir $(STATE)

clean:
	-$(BIN)/ingest dev down --state-dir $(STATE) 2>/dev/null
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
