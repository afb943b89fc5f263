"""Creating a stream's first index version: safe when several processes race to do it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ingest.pipeline.wiring import open_components
from ingest.search.indices import ensure_live_index
from ingest.settings import Settings


def test_concurrent_first_starts_create_one_index_behind_the_alias(
    make_settings: Callable[..., Settings],
) -> None:
    """Four workers starting at once all end up writing to the same v1 through the alias."""
    settings = make_settings(partitions=None)
    stream = settings.streams[0]
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            with open_components(settings) as components:
                barrier.wait(10)
                results.append(
                    ensure_live_index(
                        components.search,
                        components.ledger,
                        stream,
                        components.catalog,
                        gc_deletes_s=settings.gc_deletes_s(stream),
                    )
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == [f"{stream.alias}-v1"] * 4
    with open_components(settings) as components:
        assert list(components.search.get_alias(stream.alias)) == [f"{stream.alias}-v1"]
        versions = components.ledger.index_versions(stream.alias)
    assert [(v.version, v.state) for v in versions] == [(1, "live")]


def test_losing_the_create_race_still_adds_the_alias(
    make_settings: Callable[..., Settings],
) -> None:
    """Another process creates the index between our check and our create: we must not
    fail (the backfill workers hit exactly this) but finish the alias on the same index."""
    settings = make_settings(partitions=None)
    stream = settings.streams[0]
    with open_components(settings) as components:
        real = components.search

        class RacingClient:
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def create_index(self, name: str, body: dict[str, object]) -> None:
                real.create_index(name, body)  # the other process wins the race
                real.create_index(name, body)  # ours then finds it there

        index = ensure_live_index(
            RacingClient(),
            components.ledger,
            stream,
            components.catalog,
            gc_deletes_s=settings.gc_deletes_s(stream),
        )
        assert index == f"{stream.alias}-v1"
        assert list(real.get_alias(stream.alias)) == [index]
