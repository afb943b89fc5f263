"""Dead-letter replay: run stored records through the current pipeline again.

After a schema, transform or mapping fix, records that were dead-lettered may now pass.
:func:`replay_dead_letters` feeds their original bytes through the very pipeline the daemon
uses (:func:`ingest.pipeline.wiring.build_pipeline`: decode -> transform -> bulk sink -> one
ledger transaction) with no offsets to commit, because a replay never moves a consumer's
position. Records that go through are stamped ``replayed_at``; records that fail again stay
dead letters, and the pipeline's own ledger commit updates their stage, reason and attempt
count. Which records failed again is read back from the ledger (their attempt count went up),
so index rejections count as failures just like decode errors.

Replaying is idempotent: documents carry external versions, so a record replayed twice, or
one older than what the index holds now (a 409), changes nothing and counts as passed. A
dry run only decodes and transforms, writing nothing.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from ingest.errors import ConfigError, IngestError
from ingest.ledger import DeadLetterRow, PostgresLedger
from ingest.pipeline.batch import Batch
from ingest.pipeline.wiring import Components, build_pipeline
from ingest.settings import StreamSettings

log = structlog.get_logger(__name__)

#: Run kind recorded in the ledger for a replay (shown by ``ingest status``).
RUN_KIND = "replay"


@dataclass(slots=True)
class StreamReplay:
    """What a replay did for one stream."""

    stream: str
    selected: int = 0
    #: Dead-letter ids that went through (indexed, deleted, filtered or already applied).
    passed: list[int] = field(default_factory=list)
    #: Dead-letter id -> the stage that refused it this time.
    failed: dict[int, str] = field(default_factory=dict)
    #: Why the whole stream was skipped (e.g. not in the configuration), if it was.
    skipped: str | None = None
    run_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "selected": self.selected,
            "passed": len(self.passed),
            "failed": len(self.failed),
            "failed_by_stage": dict(sorted(Counter(self.failed.values()).items())),
            "passed_ids": sorted(self.passed),
            "failed_ids": sorted(self.failed),
            "skipped": self.skipped,
            "run_id": self.run_id,
        }


@dataclass(slots=True)
class ReplaySummary:
    dry_run: bool
    streams: list[StreamReplay] = field(default_factory=list)

    @property
    def selected(self) -> int:
        return sum(s.selected for s in self.streams)

    @property
    def passed(self) -> int:
        return sum(len(s.passed) for s in self.streams)

    @property
    def failed(self) -> int:
        return sum(len(s.failed) for s in self.streams)

    @property
    def skipped(self) -> int:
        return sum(s.selected for s in self.streams if s.skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selected": self.selected,
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "streams": [s.to_json() for s in self.streams],
        }


def select_dead_letters(
    ledger: PostgresLedger,
    *,
    stream: str | None = None,
    ids: Sequence[int] | None = None,
    since: datetime | None = None,
    limit: int = 10_000,
) -> list[DeadLetterRow]:
    """Not-yet-replayed dead letters matching every given filter, oldest id first."""
    return ledger.dead_letters(stream, ids=ids, since=since, limit=limit)


def replay_dead_letters(
    components: Components, rows: Sequence[DeadLetterRow], *, dry_run: bool = False
) -> ReplaySummary:
    """Replay ``rows`` stream by stream; see the module docstring.

    Blocks while the sink writes (through its retries); raises what the pipeline raises
    for the infrastructure (RetriesExhausted, ledger errors) after recording the run as
    failed. Rows of streams missing from the configuration are skipped, not failed.
    """
    summary = ReplaySummary(dry_run=dry_run)
    by_stream: dict[str, list[DeadLetterRow]] = defaultdict(list)
    for row in rows:
        by_stream[row.stream].append(row)
    for name in sorted(by_stream):
        chosen = by_stream[name]
        try:
            stream = components.settings.stream(name)
        except ConfigError:
            result = StreamReplay(name, selected=len(chosen), skipped="stream not configured")
            log.warning("replay_stream_skipped", stream=name, records=len(chosen))
        else:
            if dry_run:
                result = _dry_run(components, stream, chosen)
            else:
                result = _replay_stream(components, stream, chosen)
        summary.streams.append(result)
    return summary


def _ordered(rows: Sequence[DeadLetterRow]) -> list[DeadLetterRow]:
    return sorted(rows, key=lambda r: (r.source, r.topic, r.partition, r.offset))


def _chunks(rows: list[DeadLetterRow], size: int) -> list[list[DeadLetterRow]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _identity(source: str, topic: str, partition: int, offset: int) -> tuple[str, str, int, int]:
    return (source, topic, partition, offset)


def _dry_run(
    components: Components, stream: StreamSettings, rows: Sequence[DeadLetterRow]
) -> StreamReplay:
    """Decode and transform only: what would pass before the index is asked."""
    processor = build_pipeline(components, stream).processor
    result = StreamReplay(stream.name, selected=len(rows))
    for chunk in _chunks(_ordered(rows), stream.max_batch_records):
        batch = Batch()
        processor.process([r.to_raw_record() for r in chunk], batch, time.monotonic())
        refused = {
            _identity(d.record.source, d.record.topic, d.record.partition, d.record.offset): d
            for d in batch.dead_letters
        }
        for row in chunk:
            dead = refused.get(_identity(row.source, row.topic, row.partition, row.offset))
            if dead is None:
                result.passed.append(row.id)
            else:
                result.failed[row.id] = dead.stage
    return result


def _replay_stream(
    components: Components, stream: StreamSettings, rows: Sequence[DeadLetterRow]
) -> StreamReplay:
    from ingest.search.indices import IndexRouter, ensure_live_index

    ledger = components.ledger
    result = StreamReplay(stream.name, selected=len(rows))
    ensure_live_index(
        components.search,
        ledger,
        stream,
        components.catalog,
        gc_deletes_s=components.settings.gc_deletes_s(stream),
    )
    router = IndexRouter(stream, ledger)
    router.refresh()
    run_id = ledger.start_run(RUN_KIND, stream.name, {"records": len(rows)})
    result.run_id = run_id
    pipeline = build_pipeline(components, stream, run_id=run_id, path="replay")
    log.info("replay_started", stream=stream.name, records=len(rows), run_id=run_id)
    try:
        for chunk in _chunks(_ordered(rows), stream.max_batch_records):
            batch = Batch()
            pipeline.processor.process([r.to_raw_record() for r in chunk], batch, time.monotonic())
            pipeline.writer.flush(batch, router.targets(), offsets=[])
            after = {
                r.id: r
                for r in ledger.dead_letters(
                    ids=[r.id for r in chunk], include_replayed=True, limit=len(chunk)
                )
            }
            passed = []
            for row in chunk:
                now_row = after.get(row.id)
                if now_row is not None and now_row.attempts > row.attempts:
                    result.failed[row.id] = now_row.stage
                else:
                    passed.append(row.id)
            if passed:
                ledger.mark_replayed(passed)
            result.passed += passed
    except IngestError as exc:
        ledger.finish_run(run_id, "failed", error=str(exc), counters=_counters(result))
        raise
    except BaseException:
        ledger.finish_run(run_id, "failed", error="interrupted", counters=_counters(result))
        raise
    ledger.finish_run(run_id, "succeeded", counters=_counters(result))
    log.info(
        "replay_finished",
        stream=stream.name,
        run_id=run_id,
        passed=len(result.passed),
        failed=len(result.failed),
    )
    return result


def _counters(result: StreamReplay) -> dict[str, int]:
    return {"replayed": len(result.passed), "still_failing": len(result.failed)}
