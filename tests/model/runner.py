"""Run an operation list against the real processes, and shrink a failing one.

Why a seeded runner and not hypothesis' ``RuleBasedStateMachine``: each step here is a real
process (a daemon joining a group takes seconds, a reindex tens of seconds, ``gc`` waits
out ``index.gc_deletes``), so one example costs a minute or more. Hypothesis' search and
shrinking assume cheap examples (hundreds of them, with a per-example deadline) and replay
from its own database, not from a string an operator can paste. Here a seed picks the
configuration and an operation list, the list is plain text (:mod:`tests.model.ops`), a
failure is rerun from that text, and the shrinker below spends a bounded time budget:

1. *focus*: drop every record operation on ids the failure does not name (one rerun that
   usually removes most of the list), then
2. *delta debugging*: remove ever smaller chunks of operations while the same finding
   (``Finding.kind``) still appears, until single operations cannot be removed or time is up.

Every rerun uses fresh topic, alias, group and ledger schema, so reruns never see each
other's state. A rerun that does not reproduce (kill -9 timing) just keeps the longer list.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.model.check import check
from tests.model.ops import RECORD_KINDS, Op, format_ops
from tests.model.world import Endpoints, Finding, Profile, World


@dataclass
class Outcome:
    ops: list[Op]
    findings: list[Finding]
    took_s: float
    workdir: Path

    @property
    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}


def profile_for(seed: int) -> Profile:
    """Partitions and batch shape for ``seed``: part of what ``MODEL_SEED`` reproduces."""
    rng = random.Random(f"profile-{seed}")
    return Profile(
        partitions=rng.randint(1, 3),
        max_batch_records=rng.choice([5, 20, 500]),
        linger_s=rng.choice([0.1, 0.3]),
    )


def apply(world: World, op: Op) -> None:
    """Carry out one operation (see :mod:`tests.model.ops` for their meaning)."""
    world.supervise()
    if op.base in RECORD_KINDS:
        world.produce(op)
    elif op.kind == "start":
        if len(world.alive()) < 3:
            world.start_daemon()
    elif op.kind == "kill":
        world.kill()
    elif op.kind == "stop":
        world.stop()
    elif op.kind == "bf":
        world.backfill(op)
    elif op.kind == "files":
        world.files(op)
    elif op.kind == "replay":
        world.replay()
    elif op.kind == "reindex":
        world.reindex(op)
    elif op.kind == "gc":
        world.gc()
    elif op.kind == "settle":
        world.settle()
    else:
        raise ValueError(f"no rule for operation {op}")


Run = Callable[[list[Op]], Outcome]


def executor(
    seed: int, endpoints: Endpoints, root: Path, create_topic: Callable[[str, int], str]
) -> Run:
    """A function running an op list in a fresh world under ``root`` (one folder per run)."""
    counter = iter(range(1_000_000))

    def run(ops: list[Op]) -> Outcome:
        workdir = root / f"run-{next(counter):03d}"
        started = time.monotonic()
        world = World(endpoints, workdir, profile_for(seed), create_topic)
        try:
            for op in ops:
                apply(world, op)
            world.quiesce()
            findings = check(world)
        finally:
            world.close()
        (workdir / "ops.txt").write_text(format_ops(ops) + "\n")
        return Outcome(ops, findings, time.monotonic() - started, workdir)

    return run


def shrink(outcome: Outcome, kind: str, run: Run, deadline: float) -> list[Op]:
    """The shortest list found (before ``deadline``) that still produces a ``kind`` finding."""
    best = list(outcome.ops)

    def fails(candidate: list[Op]) -> bool:
        if time.monotonic() >= deadline or not candidate:
            return False
        return kind in run(candidate).kinds

    keys: set[str] = set()
    for finding in outcome.findings:
        if finding.kind == kind:
            keys |= finding.keys
    if keys:
        # Cheapest first: the named ids' records and one daemon; then the same records
        # with every process operation kept.
        records = [op for op in best if op.keys() & keys and op.kind != "files"]
        focused = [op for op in best if not op.keys() or op.keys() & keys]
        for candidate in ([Op("start"), *records, Op("settle")], focused):
            if len(candidate) < len(best) and fails(candidate):
                best = candidate
                break
    chunks = 2
    while len(best) > 1 and time.monotonic() < deadline:
        size = max(1, len(best) // chunks)
        removed = False
        for start in range(0, len(best), size):
            candidate = best[:start] + best[start + size :]
            if fails(candidate):
                best = candidate
                chunks = max(chunks - 1, 2)
                removed = True
                break
        if not removed:
            if size == 1:
                break
            chunks = min(chunks * 2, len(best))
    return best


#: Findings a crash loop causes by itself: while the daemon dies on one record, its
#: partition's offsets stand still, later records there are neither indexed nor
#: dead-lettered, and a reindex or backfill filling through the same pipeline dies too.
CRASH_CONSEQUENCES = (
    "offsets",
    "dead-letter-missing:",
    "reindex-failed",
    "backfill-failed",
    "stuck",
    "lost-behind-refused",
    "missing",
    "stale",
    "stop-unclean",
)


def primary_kinds(kinds: set[str]) -> list[str]:
    """The finding kinds worth a shrinker's time: with a crash loop, the crash loop itself
    and what it cannot explain; ordered so the crash loop comes first."""
    if "crash-loop" not in kinds and "daemon-exit" not in kinds:
        return sorted(kinds)
    rest = sorted(k for k in kinds if not k.startswith(CRASH_CONSEQUENCES))
    return sorted(rest, key=lambda k: k not in ("crash-loop", "daemon-exit"))


def report(seed: int, outcome: Outcome, shrunk: dict[str, list[Op]]) -> str:
    """What a failure prints: every finding, then per finding kind the shortest reproducer."""
    lines = [
        f"model checker: seed {seed}, {len(outcome.ops)} operations, {outcome.took_s:.0f} s,"
        f" {len(outcome.findings)} finding(s) (logs: {outcome.workdir})",
        f"  full sequence: {format_ops(outcome.ops)}",
        "",
    ]
    lines += [f"  {f}" for f in outcome.findings]
    lines.append("")
    skipped = sorted(outcome.kinds - set(shrunk))
    if skipped:
        lines.append(
            f"not shrunk, a crash loop explains them until it is fixed: {', '.join(skipped)}"
        )
    for kind, ops in shrunk.items():
        lines.append(f"shortest sequence found for [{kind}] ({len(ops)} operations):")
        lines.append(
            f"  MODEL_SEED={seed} MODEL_OPS='{format_ops(ops)}' .venv/bin/pytest tests/model -q"
        )
    return "\n".join(lines)
