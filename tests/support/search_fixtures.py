"""pytest fixtures running a test once per search client library against the session's osmem.

``search_kind`` is parametrized ``opensearch`` / ``elasticsearch``:

- ``opensearch``: ``opensearch-py`` straight to osmem, kind detected (``auto``);
- ``elasticsearch``: the official ``elasticsearch`` client through the session's
  :class:`~tests.support.compat_proxy.CompatProxy` (osmem refuses the client's vendor media
  types), kind forced to ``elasticsearch`` because osmem reports ``distribution: opensearch``.

Use them from a test module with::

    from tests.support.search_fixtures import *  # noqa: F403 (fixtures)

Fixtures: ``compat_proxy`` (session), ``search_kind``, ``search_settings``, ``search_client``,
``search_client_kind`` (``(SearchSettings, SearchClient)``) and ``drop_indices`` (a list;
every index name appended is deleted after the test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ingest.search.client import SearchClient, connect_search
from ingest.settings import SearchSettings
from tests.support.compat_proxy import CompatProxy

__all__ = [
    "compat_proxy",
    "drop_indices",
    "search_client",
    "search_client_kind",
    "search_kind",
    "search_settings",
]

SEARCH_KINDS = ("opensearch", "elasticsearch")


@pytest.fixture(scope="session")
def compat_proxy(search_url: str) -> Iterator[CompatProxy]:
    """One media-type rewriting proxy in front of the session's osmem."""
    with CompatProxy(search_url) as proxy:
        yield proxy


@pytest.fixture(params=SEARCH_KINDS)
def search_kind(request: pytest.FixtureRequest) -> str:
    """``opensearch`` or ``elasticsearch``: which client library the test runs through."""
    kind: str = request.param
    return kind


@pytest.fixture
def search_settings(
    search_kind: str, search_url: str, request: pytest.FixtureRequest
) -> SearchSettings:
    """Settings reaching osmem through the client library of ``search_kind``."""
    if search_kind == "elasticsearch":
        proxy: CompatProxy = request.getfixturevalue("compat_proxy")
        return SearchSettings(url=proxy.url, kind="elasticsearch", request_timeout_s=30)
    return SearchSettings(url=search_url, kind="auto", request_timeout_s=30)


@pytest.fixture
def search_client(search_settings: SearchSettings) -> Iterator[SearchClient]:
    """A connected :class:`SearchClient`, closed after the test."""
    client = connect_search(search_settings)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def search_client_kind(
    search_settings: SearchSettings, search_client: SearchClient
) -> tuple[SearchSettings, SearchClient]:
    """``(settings, client)`` for tests that also need to build their own clients."""
    return search_settings, search_client


@pytest.fixture
def drop_indices(search_url: str) -> Iterator[list[str]]:
    """Append index names to this list; they are deleted (if present) after the test.

    osmem keeps everything in memory, so tests clean up what they create.
    """
    names: list[str] = []
    yield names
    client = connect_search(SearchSettings(url=search_url, kind="opensearch"))
    try:
        for name in names:
            client.delete_index(name, missing_ok=True)
    finally:
        client.close()
