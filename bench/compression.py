"""What ``compression = "gzip"`` costs and saves: CPU per record and bytes sent per record.

Bulk bodies of the sample orders (2,000 documents each, as the default batch) are compressed
the way :func:`ingest.search.transport.gzip_ndjson` does, at zlib levels 1 (the level used), 6 and 9
(what the client libraries' own ``http_compress`` uses). CPU is process time, the median of
several passes; bytes are the request body as sent. Cheap (about a second), no servers.
"""

from __future__ import annotations

import gzip
import statistics
import time
from typing import Any

import orjson

from ingest.dev.samples import sample_orders
from ingest.pipeline.transform import Transformer
from ingest.search.bulk import action_lines
from ingest.search.transport import GZIP_LEVEL, gzip_ndjson
from ingest.settings import StreamSettings
from ingest.types import IndexAction, RawRecord

BATCH = 2000
BATCHES = 10
PASSES = 5


def _bodies() -> list[bytes]:
    stream = StreamSettings(
        name="orders", topic="t", subject="orders", alias="orders", id_field="order_id"
    )
    transformer = Transformer(stream)
    orders = sample_orders(7)
    bodies = []
    for _ in range(BATCHES):
        lines = []
        for offset in range(BATCH):
            record = RawRecord(topic="t", partition=0, offset=offset, key=None, value=b"")
            action = transformer.to_action(next(orders), record)
            assert isinstance(action, IndexAction)
            lines.append(action_lines(action, "orders-v1"))
        bodies.append(b"".join(lines))
    return bodies


def _cpu_us_per_record(bodies: list[bytes], level: int) -> float:
    runs = []
    for _ in range(PASSES):
        started = time.process_time()
        for body in bodies:
            gzip.compress(body, compresslevel=level, mtime=0)
        runs.append(time.process_time() - started)
    return statistics.median(runs) / (len(bodies) * BATCH) * 1e6


def run() -> dict[str, Any]:
    bodies = _bodies()
    records = len(bodies) * BATCH
    plain = sum(len(b) for b in bodies)
    result: dict[str, Any] = {"records": records, "plain_bytes_per_record": round(plain / records)}
    for level in (1, 6, 9):
        sent = sum(len(gzip.compress(b, compresslevel=level, mtime=0)) for b in bodies)
        result[f"gzip{level}"] = {
            "cpu_us_per_record": round(_cpu_us_per_record(bodies, level), 2),
            "bytes_per_record": round(sent / records),
            "ratio": round(plain / sent, 1),
        }
    packed, _ = gzip_ndjson(bodies[0], {"content-type": "application/x-ndjson"})
    assert packed is not None and gzip.decompress(packed) == bodies[0]
    result["level_used"] = GZIP_LEVEL
    return result


if __name__ == "__main__":
    print(orjson.dumps(run(), option=orjson.OPT_INDENT_2).decode())
