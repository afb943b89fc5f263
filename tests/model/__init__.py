"""The model checker: real processes on the embedded stack against an independent model.

- :mod:`tests.model.ops` — the operation language and the seeded generator;
- :mod:`tests.model.avro` — the model's own Avro writer (valid and poison records);
- :mod:`tests.model.reference` — the expected documents and dead letters, product-free;
- :mod:`tests.model.world` — the processes (daemons, backfills, replay, reindex) and the
  end state read from the search server and the ledger;
- :mod:`tests.model.check` — the differences, each named by its cause;
- :mod:`tests.model.runner` — running a list, shrinking a failing one.

Run: ``.venv/bin/pytest tests/model`` (CI profile), ``make soak`` (many seeds), and a
printed failure's ``MODEL_SEED=... MODEL_OPS='...' .venv/bin/pytest tests/model`` to rerun
its shortest sequence.
"""
