# Two commands a fresh machine needs (Python 3.11 + make): `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STATE  := .ingest-dev
COUNT  ?= 20000

.PHONY: install run demo test test-fast sanitize lint typecheck bench soak clean dev-up dev-down

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

## soak: the model checker over many seeds and longer operation lists (tests/model).
## Knobs: MODEL_SEED (first seed), MODEL_SEEDS (how many), MODEL_STEPS (steps per seed),
## MODEL_DURATION_S (stop starting seeds after this), MODEL_SHRINK_S (shrinking per failure).
soak: $(STAMP)
	MODEL_SOAK=1 MODEL_SEED=$${MODEL_SEED:-100} MODEL_SEEDS=$${MODEL_SEEDS:-20} \
	MODEL_STEPS=$${MODEL_STEPS:-40} MODEL_DURATION_S=$${MODEL_DURATION_S:-3600} \
	MODEL_SHRINK_S=$${MODEL_SHRINK_S:-600} \
	$(BIN)/pytest -q -p no:cacheprovider -s tests/model -k test_model_checker

dev-up: $(STAMP)
	$(BIN)/ingest dev up --state-dir $(STATE)

dev-down: $(STAMP)
	$(BIN)/ingest dev down --state-dir $(STATE)

clean:
	-$(BIN)/ingest dev down --state-dir $(STATE) 2>/dev/null
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
