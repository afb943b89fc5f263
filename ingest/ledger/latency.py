"""Ingestion latency rows (``flush_latency``): written with each flush, read by ``status``.

``ingest status`` runs in its own process and cannot read a daemon's Prometheus histogram,
so every flush also leaves its latency samples in the ledger — in the flush's own
transaction (:meth:`LatencyLedger._insert_flush_latency` runs on the connection of
:meth:`~ingest.ledger.PostgresLedger.commit`), so a row exists exactly when the flush was
recorded, at the cost of one more ``INSERT`` in a transaction that is open anyway. Each row
holds bucket counts rather than quantiles, so any window of rows adds up to the window's
histogram (see :mod:`ingest.latency`).

Daemons prune rows older than a retention window (:meth:`LatencyLedger.prune_latency`,
called with the heartbeat), keeping the newest row of every (stream, path, source) so an idle stream
still shows how old its newest indexed record is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from ingest.latency import FlushLatency
from ingest.ledger.base import Conn, LedgerBase


@dataclass(frozen=True, slots=True)
class LatencyWindow:
    """One (stream, path, source) series: its summed bucket counts over the window."""

    stream: str
    path: str
    source: str
    flushes: int
    records: int
    counts: tuple[int, ...]
    newest_record_at: datetime | None
    last_acked_at: datetime | None


class LatencyLedger(LedgerBase):
    """The ``flush_latency`` table: rows written with each flush, pruned, summed by status."""

    def _insert_flush_latency(self, conn: Conn, latency: FlushLatency, run_id: int | None) -> None:
        """One row per sample of ``latency``; runs inside the caller's transaction."""
        if not latency.samples:
            return
        acked_at = datetime.fromtimestamp(latency.acked_ms / 1000, UTC)
        query = sql.SQL(
            "INSERT INTO {} (stream, path, source, run_id, acked_at, records, sum_s,"
            " bucket_counts, newest_record_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(self._table("flush_latency"))
        rows = [
            (
                latency.stream,
                latency.path,
                s.source,
                run_id,
                acked_at,
                s.count,
                s.sum_s,
                list(s.counts),
                datetime.fromtimestamp(s.newest_ms / 1000, UTC),
            )
            for s in latency.samples
        ]
        with conn.cursor() as cur:
            cur.executemany(query, rows)

    def prune_latency(self, stream: str, keep_s: float) -> int:
        """Drop ``stream``'s rows acknowledged over ``keep_s`` ago, except each series' newest.

        Called by the daemon with its heartbeat; how many rows went.
        """
        query = sql.SQL(
            "DELETE FROM {t} f WHERE f.stream = %(stream)s"
            " AND f.acked_at < now() - make_interval(secs => %(keep_s)s)"
            " AND EXISTS (SELECT 1 FROM {t} n WHERE n.stream = f.stream AND n.path = f.path"
            " AND n.source = f.source AND n.acked_at > f.acked_at)"
        ).format(t=self._table("flush_latency"))
        with self._conn("prune_latency") as conn:
            return conn.execute(query, {"stream": stream, "keep_s": float(keep_s)}).rowcount

    def latency_windows(
        self, window_s: float, streams: Sequence[str] | None = None
    ) -> list[LatencyWindow]:
        """Every series' counts summed over the last ``window_s`` seconds, plus its newest record.

        Two reads: the series with their newest times over every kept row, then the window's
        bucket arrays, summed here (a few rows per second and stream at most).
        """
        where = sql.SQL("WHERE true")
        params: dict[str, Any] = {"window_s": float(window_s)}
        if streams is not None:
            where = sql.SQL("WHERE stream = ANY(%(streams)s)")
            params["streams"] = list(streams)
        recent = sql.SQL("acked_at >= now() - make_interval(secs => %(window_s)s)")
        series_q = sql.SQL(
            "SELECT stream, path, source, count(*) FILTER (WHERE {recent}),"
            " coalesce(sum(records) FILTER (WHERE {recent}), 0),"
            " max(newest_record_at), max(acked_at)"
            " FROM {t} {where} GROUP BY stream, path, source ORDER BY stream, path, source"
        ).format(t=self._table("flush_latency"), where=where, recent=recent)
        counts_q = sql.SQL(
            "SELECT stream, path, source, bucket_counts FROM {t} {where} AND {recent}"
        ).format(t=self._table("flush_latency"), where=where, recent=recent)
        sums: dict[tuple[str, str, str], list[int]] = {}
        with self._conn("latency_windows") as conn:
            count_rows = conn.execute(counts_q, params).fetchall()
            series_rows = conn.execute(series_q, params).fetchall()
        for stream, path, source, counts in count_rows:
            total = sums.setdefault((stream, path, source), [])
            if len(total) < len(counts):
                total.extend([0] * (len(counts) - len(total)))
            for i, c in enumerate(counts):
                total[i] += int(c)
        return [
            LatencyWindow(
                stream=stream,
                path=path,
                source=source,
                flushes=int(flushes),
                records=int(records),
                counts=tuple(sums.get((stream, path, source), ())),
                newest_record_at=newest,
                last_acked_at=acked,
            )
            for stream, path, source, flushes, records, newest, acked in series_rows
        ]
