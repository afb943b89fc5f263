"""The model checker: seeded operation lists on the real processes, end state vs the model.

CI profile (the normal suite): seed ``MODEL_SEED`` (default 1), ``MODEL_STEPS`` random steps
(default 8) plus one of every operation kind the list lacks, so every kind runs in CI; a
failure is shrunk for up to ``MODEL_SHRINK_S`` seconds (default 240) and reported with a
command that reruns the shortest sequence. ``MODEL_OPS='...'`` runs exactly that sequence
(no shrinking unless ``MODEL_SHRINK_S`` is set).

Soak (``make soak``): ``MODEL_SOAK=1`` runs seeds from ``MODEL_SEED`` on, ``MODEL_SEEDS`` of
them (default 20) or until ``MODEL_DURATION_S`` (default 3600) is spent, each with
``MODEL_STEPS`` steps (default 40 there), and reports every failing seed, shrunk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.model.ops import COVERAGE, Generator, Op, parse
from tests.model.runner import Outcome, Run, executor, primary_kinds, report, shrink
from tests.model.world import Endpoints

SOAK = os.environ.get("MODEL_SOAK") == "1"
#: pytest-timeout's bound for the CI profile: one run (about 3 minutes) plus the shrinking
#: budget, with room for a slow machine.
CI_TIMEOUT_S = 600 + int(os.environ.get("MODEL_SHRINK_S") or 240)
#: The soak starts no seed after ``MODEL_DURATION_S`` and cuts shrinking to what is left
#: (at least a minute), so it ends within one more run and one more shrink.
SOAK_TIMEOUT_S = (
    int(os.environ.get("MODEL_DURATION_S") or 3600)
    + int(os.environ.get("MODEL_SHRINK_S") or 240)
    + 1200
)


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


@pytest.fixture
def endpoints(stack: object) -> Endpoints:
    return Endpoints(
        kafka_bootstrap=stack.kafka_bootstrap,  # type: ignore[attr-defined]
        search_url=stack.search_url,  # type: ignore[attr-defined]
        ledger_dsn=stack.ledger_dsn,  # type: ignore[attr-defined]
    )


def _ops(seed: int, steps: int) -> list[Op]:
    given = os.environ.get("MODEL_OPS")
    if given:
        return parse(given)
    return Generator(seed).ops(steps, cover=True)


def _shrunk(outcome: Outcome, run: Run, budget_s: float) -> dict[str, list[Op]]:
    """Each primary finding kind shrunk in turn, the budget shared out evenly among them."""
    kinds = primary_kinds(outcome.kinds)
    out: dict[str, list[Op]] = {}
    end = time.monotonic() + budget_s
    for i, kind in enumerate(kinds):
        share = (end - time.monotonic()) / (len(kinds) - i)
        out[kind] = shrink(outcome, kind, run, time.monotonic() + max(0.0, share))
    return out


def _check_seed(
    seed: int,
    steps: int,
    endpoints: Endpoints,
    root: Path,
    create_topic: Callable[..., str],
    *,
    until: float = float("inf"),
) -> str | None:
    run = executor(seed, endpoints, root / f"seed-{seed}", create_topic)
    outcome = run(_ops(seed, steps))
    print(f"model checker: seed {seed}: {len(outcome.ops)} ops in {outcome.took_s:.1f} s")
    if not outcome.findings:
        return None
    default_budget = 0 if os.environ.get("MODEL_OPS") else 240
    budget = float(os.environ.get("MODEL_SHRINK_S") or default_budget)
    budget = min(budget, max(60.0, until - time.monotonic()))
    return report(seed, outcome, _shrunk(outcome, run, budget))


def test_generated_ci_profile_covers_every_operation_kind() -> None:
    """The CI profile's list holds one of every kind, so CI exercises them all."""
    gen = Generator(_int("MODEL_SEED", 1))
    gen.ops(_int("MODEL_STEPS", 8), cover=True)
    assert set(COVERAGE) <= gen.covered


@pytest.mark.timeout(SOAK_TIMEOUT_S if SOAK else CI_TIMEOUT_S)
def test_model_checker(
    endpoints: Endpoints, tmp_path: Path, create_topic: Callable[..., str]
) -> None:
    """Seeded lists of every operation kind on the real processes end exactly as the model
    says: documents, dead letters and stages, ledger offsets, no crash loop.

    The normal suite runs the CI profile (one seed); ``make soak`` (``MODEL_SOAK=1``) runs
    many seeds with longer lists and reports every failing one, shrunk.
    """
    if not SOAK:
        failure = _check_seed(
            _int("MODEL_SEED", 1), _int("MODEL_STEPS", 8), endpoints, tmp_path, create_topic
        )
        if failure:
            pytest.fail(failure, pytrace=False)
        return
    first, count = _int("MODEL_SEED", 1), _int("MODEL_SEEDS", 20)
    end = time.monotonic() + _int("MODEL_DURATION_S", 3600)
    failures = []
    for seed in range(first, first + count):
        if time.monotonic() >= end:
            break
        steps = _int("MODEL_STEPS", 40)
        failure = _check_seed(seed, steps, endpoints, tmp_path, create_topic, until=end)
        if failure:
            failures.append(failure)
            print(failure, flush=True)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
