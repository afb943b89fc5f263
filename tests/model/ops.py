"""The model checker's operations: a tiny text language, and a seeded generator of it.

Every operation is self-contained text (``put:k3@17``, ``del:k3@21``, ``bad:utf8:k1@9``,
``kill``, ``bf:4-30`` ...), so a failing run prints as a string that reruns it exactly
(``MODEL_OPS='...'``), and a shrinker can drop any operation and still have a meaningful
sequence: no operation refers to another by position. ``K@N`` names a document id and a
version: the record's ``updated_at`` (and its Kafka timestamp) is the model's base time plus
``N`` seconds; a tombstone's version is its Kafka timestamp, so ``del:k3@21`` deletes at the
same clock.

Record kinds (what is produced to Kafka):

=========== ===============================================================================
put         a valid record framed with the newest schema (orders v2)
put1        a valid record written with the older schema (orders v1): its document ends
            with v2's defaults
del         a tombstone (null value) keyed by the id
refuse      valid Avro the index refuses (``discount`` beyond the integer mapping) → index
big         a valid record over the stream's ``max_record_bytes`` → size, until a
            ``replay`` raises the limit and replays it
bad:KIND    a poison record, see :data:`POISON_STAGES`
=========== ===============================================================================

Process kinds: ``start`` (one more daemon, at most three), ``kill`` (kill -9 the oldest),
``stop`` (SIGTERM the newest), ``bf:A-B`` (``backfill kafka`` over [A, B) seconds),
``files:K@N,...`` (``backfill files`` from an Avro archive of those valid versions),
``replay`` (raise the size limit everywhere, then ``ingest dlq replay``), ``reindex:SRC``
(``backfill reindex --source SRC``), ``gc`` (settle, then wait past ``index.gc_deletes``),
``settle`` (wait until the running daemons caught up).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

#: Poison kind -> the dead-letter stage the product promises for it (README, issue 11).
POISON_STAGES: dict[str, str] = {
    "magic": "framing",  # first byte not 0x00
    "short": "framing",  # fewer than the 5 header bytes
    "nulkey": "framing",  # bad magic, and a NUL inside the Kafka key
    "schemaid": "schema",  # a schema id neither in the catalog nor a registry
    "truncated": "decode",  # the Avro body cut in half
    "utf8": "decode",  # a string field holding invalid UTF-8
    "int32": "decode",  # an Avro int beyond 32 bits is malformed Avro (issue 11, defect 3)
    "blockmin": "decode",  # an array block count of INT64_MIN (issue 11, defect 7)
    "trailing": "validation",  # bytes after the record
    "emptyid": "transform",  # order_id "": no document id
    "nokey": "transform",  # a tombstone without a key names no document
    "nulreason": "index",  # the index refuses it and its reason quotes a NUL (defect 4)
}

#: Record kinds that carry a document version the model may apply.
WRITE_KINDS = ("put", "put1", "big")
RECORD_KINDS = ("put", "put1", "del", "refuse", "big", "bad")
PROCESS_KINDS = ("start", "kill", "stop", "bf", "files", "replay", "reindex", "gc", "settle")

_RECORD = re.compile(r"^(put1?|del|refuse|big|bad:[a-z0-9]+):(k\d+)@(\d+)$")


@dataclass(frozen=True)
class Op:
    """One operation. ``kind`` is ``put``/``del``/``bad:utf8``/``kill``/``bf`` ...;
    ``key``/``n`` name the record (record kinds); ``arg`` holds the rest as text."""

    kind: str
    key: str = ""
    n: int = 0
    arg: str = ""

    def __str__(self) -> str:
        if self.key:
            return f"{self.kind}:{self.key}@{self.n}"
        return f"{self.kind}:{self.arg}" if self.arg else self.kind

    @property
    def base(self) -> str:
        """``bad`` for every poison kind, else the kind itself."""
        return self.kind.split(":", 1)[0]

    @property
    def poison(self) -> str:
        return self.kind.split(":", 1)[1] if self.base == "bad" else ""

    def window(self) -> tuple[int, int]:
        low, _, high = self.arg.partition("-")
        return int(low), int(high)

    def archive(self) -> list[tuple[str, int]]:
        out = []
        for item in self.arg.split(","):
            key, _, n = item.partition("@")
            out.append((key, int(n)))
        return out

    def keys(self) -> set[str]:
        """The document ids this operation touches (for the shrinker's first cut)."""
        if self.key:
            return {self.key}
        if self.kind == "files":
            return {k for k, _ in self.archive()}
        return set()


def parse(text: str) -> list[Op]:
    """``format_ops``'s inverse; raises ValueError naming the first token it cannot read."""
    ops = []
    for token in text.split():
        match = _RECORD.match(token)
        if match:
            kind, key, n = match.groups()
            if kind.startswith("bad:") and kind[4:] not in POISON_STAGES:
                raise ValueError(f"unknown poison kind in {token!r}")
            ops.append(Op(kind, key, int(n)))
            continue
        kind, _, arg = token.partition(":")
        if kind not in PROCESS_KINDS:
            raise ValueError(f"cannot read operation {token!r}")
        ops.append(Op(kind, arg=arg))
    return ops


def format_ops(ops: list[Op]) -> str:
    return " ".join(str(op) for op in ops)


#: Every kind of step the CI profile must cover at least once (``coverage``'s names).
COVERAGE = (
    "new",
    "older",
    "dup",
    "put1",
    "del",
    "refuse",
    "big",
    *(f"bad:{kind}" for kind in POISON_STAGES),
    "start",
    "kill",
    "stop",
    "daemons>1",
    "bf",
    "files",
    "replay",
    "reindex:kafka",
    "reindex:index",
    "gc",
)


class Generator:
    """Builds a random but plausible operation list from a seed.

    Plausible: new versions move a per-run clock forward, older versions reuse a gap below
    an id's newest, duplicates repeat an earlier record verbatim, a ``gc`` usually follows
    a delete and is followed by something that re-sends older versions (backfill, archive,
    replay, an older record): the paths issue 11 says resurrect deleted documents.
    """

    def __init__(self, seed: int, keys: int = 6) -> None:
        self.rng = random.Random(seed)
        self.keys = [f"k{i}" for i in range(keys)]
        self.clock = 0
        self.used: dict[str, set[int]] = {k: set() for k in self.keys}
        self.puts: list[Op] = []
        self.daemons = 0
        self.covered: set[str] = set()

    def _new_n(self) -> int:
        self.clock += self.rng.randint(1, 3)
        return self.clock

    def _older_n(self, key: str) -> int | None:
        used = self.used[key]
        if not used:
            return None
        gaps = [n for n in range(1, max(used)) if n not in used]
        return self.rng.choice(gaps) if gaps else None

    def _record(self, kind: str, key: str, *, older: bool = False) -> Op:
        n = self._older_n(key) if older else None
        self.covered.add("older" if n is not None else "new")
        if n is None:
            n = self._new_n()
        self.used[key].add(n)
        op = Op(kind, key, n)
        if kind in ("put", "put1"):
            self.puts.append(op)
        return op

    def step(self, kind: str) -> list[Op]:
        """The operations for one step of ``kind`` (one of :data:`COVERAGE`)."""
        rng = self.rng
        key = rng.choice(self.keys)
        self.covered.add(kind)
        if kind in ("new", "older"):
            return [self._record(rng.choice(("put", "put", "put1")), key, older=kind == "older")]
        if kind == "dup":
            return [rng.choice(self.puts)] if self.puts else self.step("new")
        if kind in ("put1", "del", "refuse", "big"):
            return [self._record(kind, key, older=kind == "del" and rng.random() < 0.2)]
        if kind.startswith("bad:"):
            return [self._record(kind, key, older=rng.random() < 0.3)]
        if kind == "start" or (kind == "daemons>1" and self.daemons < 3):
            if self.daemons >= 3:
                return []
            self.daemons += 1
            if self.daemons > 1:
                self.covered.add("daemons>1")
            return [Op("start")]
        if kind == "daemons>1":
            return []
        if kind in ("kill", "stop"):
            if self.daemons == 0:
                return [*self.step("start"), Op(kind)]
            self.daemons -= 1
            return [Op(kind)]
        if kind == "bf":
            low = rng.randint(0, max(0, self.clock - 1))
            high = rng.randint(low + 1, self.clock + 2)
            return [Op("bf", arg=f"{low}-{high}")]
        if kind == "files":
            chosen = rng.sample(self.puts, min(len(self.puts), rng.randint(1, 3)))
            if not chosen:
                return self.step("new")
            return [Op("files", arg=",".join(f"{o.key}@{o.n}" for o in chosen))]
        if kind.startswith("reindex"):
            source = kind.partition(":")[2] or rng.choice(("kafka", "index"))
            self.covered.add(f"reindex:{source}")
            return [Op("reindex", arg=source)]
        if kind in ("replay", "settle"):
            return [Op(kind)]
        if kind == "gc":
            # The hazard window of issue 11: a delete applied, gc_deletes passed, then an
            # older version of that id re-sent by some path.
            deleted = self._record("del", key)
            again = rng.choice(("bf", "files", "older", "replay"))
            if again == "bf":
                # A window holding older versions but not the delete itself: a backfill
                # that re-reads the tombstone too would apply it again.
                self.covered.add("bf")
                tail = [Op("bf", arg=f"0-{deleted.n}")]
            elif again == "older":
                tail = [self._record("put", key, older=True)]
            else:
                tail = self.step(again)
            return [deleted, Op("settle"), Op("gc"), *tail]
        raise ValueError(f"no generator step for {kind!r}")

    def ops(self, steps: int, *, cover: bool) -> list[Op]:
        """``steps`` random steps (records weigh more than processes); with ``cover``, each
        kind of :data:`COVERAGE` missing afterwards is inserted once at a random place."""
        weights = {
            "new": 10,
            "older": 4,
            "dup": 2,
            "put1": 3,
            "del": 3,
            "refuse": 2,
            "big": 1,
            "bad": 3,
            "start": 2,
            "kill": 2,
            "stop": 1,
            "bf": 2,
            "files": 1,
            "replay": 1,
            "reindex": 1,
            "gc": 1,
            "settle": 1,
        }
        kinds, w = zip(*weights.items(), strict=True)
        out: list[Op] = [*self.step("start")]
        for _ in range(steps):
            kind = self.rng.choices(kinds, w)[0]
            if kind == "bad":
                kind = "bad:" + self.rng.choice(sorted(POISON_STAGES))
            out += self.step(kind)
        if cover:
            for kind in COVERAGE:
                if kind not in self.covered:
                    at = self.rng.randint(1, len(out))
                    out[at:at] = self.step(kind)
        return out
