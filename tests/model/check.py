"""Compare the real end state with the model, and name each difference by its cause.

A bare "index differs" would make every hole look alike. Each difference is classified from
the model's history of the id, so that issue 11's holes come out as distinct findings:

=============================== ==============================================================
``resurrected``                 the id's newest event is a delete, yet an older version is in
                                the index (a delete forgotten after ``gc_deletes``)
``lost-behind-refused``         the newest version the index accepts is missing or older in
                                the index, and a newer version of the id was refused
``bad-record-indexed:KIND``     the index holds the version of a record that must be
                                dead-lettered (malformed Avro accepted)
``missing`` / ``stale`` /       other disagreements, with both sides shown
``unexpected`` / ``too-new`` /
``wrong-content``
``dead-letter-missing:KIND``    a bad record with no dead letter
``dead-letter-wrong-stage:KIND`` dead-lettered, at another stage than promised
``dead-letter-unexpected:KIND`` a dead letter for a record the model holds good
``offsets``                     ledger offsets differ from the partitions' end offsets
``daemon-exit`` / ``crash-loop`` a daemon exited on its own (several times: a crash loop)
=============================== ==============================================================
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.model.reference import Event, Model, version_ms
from tests.model.world import Finding, World

_TIMESTAMPS = ("created_at", "updated_at")


def _normal(doc: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as epoch ms, so ISO spellings (``.000Z`` or ``Z``) compare equal."""
    out = dict(doc)
    for name in _TIMESTAMPS:
        value = out.get(name)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            out[name] = int(parsed.timestamp() * 1000)
    return out


def _seconds(version: int) -> str:
    """A version in ms as the ops language writes it (``@N``: N seconds after the base)."""
    return f"@{(version - version_ms(0)) // 1000}"


def _history(model: Model, key: str) -> str:
    events = sorted(model.events.get(key, []), key=lambda e: e.n)
    return ", ".join(f"{e.op}{'' if e.applied else ' (refused)'}{e.via}" for e in events)


def _refused_kind(event: Event) -> str:
    return event.op.poison or event.op.kind


def check_index(world: World) -> list[Finding]:
    model = world.model
    expected = model.expected()
    observed = world.index_hits()
    findings = []
    for key in sorted(set(expected) | set(observed)):
        events = model.events.get(key, [])
        refused = [e for e in events if not e.applied]
        winner = model.winner(key)
        history = f"history of {key}: {_history(model, key)}"
        keys = frozenset({key})
        got = observed.get(key)
        want = expected.get(key)
        if got is not None:
            applied_at = {e.n for e in events if e.applied}
            bad = [e for e in refused if version_ms(e.n) == got[0] and e.n not in applied_at]
            if bad and (want is None or want[0] != got[0]):
                kind = _refused_kind(bad[0])
                findings.append(
                    Finding(
                        f"bad-record-indexed:{kind}",
                        f"{key} is in the index at the version of {bad[0].op}, a record that"
                        f" must be dead-lettered; {history}",
                        keys,
                    )
                )
                continue
        if want is None and got is not None:
            if winner is not None and winner.op.kind == "del" and got[0] < version_ms(winner.n):
                findings.append(
                    Finding(
                        "resurrected",
                        f"{key} was deleted by {winner.op} but the index holds version"
                        f" {_seconds(got[0])}; {history}",
                        keys,
                    )
                )
            else:
                findings.append(Finding("unexpected", f"{key} at {got[0]}; {history}", keys))
            continue
        if want is None:
            continue
        newer_refused = [e for e in refused if version_ms(e.n) > want[0]]
        if got is None or got[0] < want[0]:
            where = "absent" if got is None else f"at version {_seconds(got[0])}"
            if newer_refused:
                kinds = ", ".join(str(e.op) for e in newer_refused)
                findings.append(
                    Finding(
                        "lost-behind-refused",
                        f"{key} should be at {winner.op if winner else '?'} but is {where};"
                        f" newer refused: {kinds}; {history}",
                        keys,
                    )
                )
            else:
                kind = "missing" if got is None else "stale"
                findings.append(
                    Finding(
                        kind,
                        f"{key} should be at {winner.op if winner else '?'} but is"
                        f" {where}; {history}",
                        keys,
                    )
                )
            continue
        if got[0] > want[0]:
            findings.append(Finding("too-new", f"{key} at {got[0]} > {want[0]}; {history}", keys))
            continue
        if _normal(got[1]) != _normal(want[1]):
            diff = sorted(
                name
                for name in set(got[1]) | set(want[1])
                if _normal(got[1]).get(name) != _normal(want[1]).get(name)
            )
            shown = {n: (_normal(got[1]).get(n), _normal(want[1]).get(n)) for n in diff}
            findings.append(Finding("wrong-content", f"{key} (got, want) per field: {shown}", keys))
    return findings


def check_dead_letters(world: World) -> list[Finding]:
    findings = []
    rows = {(p, o): (stage, reason) for p, o, stage, reason in world.dead_letters()}
    for origin, (op, stage) in sorted(world.model.bad.items()):
        kind = op.poison or op.kind
        keys = frozenset({op.key})
        got = rows.get(origin)
        if got is None:
            findings.append(
                Finding(
                    f"dead-letter-missing:{kind}",
                    f"{op} at partition/offset {origin} has no dead letter (want {stage})",
                    keys,
                )
            )
        elif got[0] != stage:
            findings.append(
                Finding(
                    f"dead-letter-wrong-stage:{kind}",
                    f"{op} dead-lettered at stage {got[0]!r}, want {stage!r}: {got[1][:200]!r}",
                    keys,
                )
            )
    for origin in sorted(set(rows) - set(world.model.bad)):
        source = world.produced_at.get(origin)
        kind = (source.poison or source.kind) if source else "?"
        findings.append(
            Finding(
                f"dead-letter-unexpected:{kind}",
                f"{source} at {origin} dead-lettered ({rows[origin][0]}: {rows[origin][1][:200]!r})"
                " but the model holds it good",
                frozenset({source.key}) if source else frozenset(),
            )
        )
    return findings


def check_processes(world: World) -> list[Finding]:
    findings = []
    got = world.ledger_offsets()
    want = {p: e for p, e in world.ends.items() if e > 0}
    # The record at a partition's committed offset is its first uncommitted one. One flush
    # commits every partition of a batch, so the record a crash loop dies on is among them,
    # not necessarily each of them.
    stuck = {
        p: world.produced_at.get((p, got.get(p, 0)))
        for p, end in want.items()
        if got.get(p, 0) < end
    }
    culprits = ", ".join(f"p{p} at {op}" for p, op in sorted(stuck.items()))
    keys = frozenset(op.key for op in stuck.values() if op is not None)
    if got != want:
        findings.append(
            Finding(
                "offsets",
                f"ledger offsets {got} != end offsets {want}; first uncommitted: {culprits}",
                keys,
            )
        )
    if world.exits:
        kind = "crash-loop" if len(world.exits) >= 2 else "daemon-exit"
        shown = "\n  ".join(world.exits[:2])
        findings.append(
            Finding(
                kind,
                f"{len(world.exits)} daemon exit(s) nobody asked for; first uncommitted:"
                f" {culprits or '-'}"
                f"\n  {shown}",
                keys,
            )
        )
    return findings


def check(world: World) -> list[Finding]:
    """Every finding of a quiesced world: processes, index, dead letters."""
    return [
        *world.findings,
        *check_processes(world),
        *check_index(world),
        *check_dead_letters(world),
    ]
