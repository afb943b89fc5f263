"""Config loading never fails with anything but one ConfigError, whatever the input.

Hypothesis feeds ``parse_settings`` arbitrary nested values (shaped like the real settings
often enough to get past the first check) and ``load_settings`` arbitrary TOML text, bytes
and environment variables. A ``ConfigError`` is the only acceptable failure: the CLI turns
it into one ``error:`` line; anything else would be a traceback.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.errors import ConfigError
from ingest.settings import ENV_OVERRIDES, Settings, load_settings, parse_settings

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECTION_KEYS: dict[str, list[str]] = {
    "kafka": [
        "bootstrap_servers",
        "group_id",
        "session_timeout_ms",
        "assignment_strategy",
        "client",
        "client_files",
    ],
    "search": [
        "url",
        "kind",
        "username",
        "password",
        "password_file",
        "api_key",
        "api_key_file",
        "bearer_token",
        "ca_file",
        "verify_certs",
        "request_timeout_s",
    ],
    "ledger": ["dsn", "dsn_file", "schema", "connect_timeout_s"],
    "schema_registry": ["url", "username", "password", "password_file"],
    "runtime": [
        "max_buffered_bytes",
        "max_retry_s",
        "shutdown_timeout_s",
        "heartbeat_s",
        "summary_every_s",
        "index_poll_s",
        "metrics_port",
    ],
}
STREAM_KEYS = [
    "name",
    "topic",
    "subject",
    "alias",
    "id_field",
    "version_field",
    "tombstones",
    "transform",
    "max_batch_records",
    "max_batch_bytes",
    "linger_s",
    "max_record_bytes",
    "dead_letter_topic",
    "index",
]
INDEX_KEYS = ["shards", "replicas", "refresh_interval", "settings", "field_overrides"]

# Names near the validation rules: case, forbidden characters, dots, lengths.
names = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + '._-+ *?#:/\\"<>|,', max_size=12),
    st.sampled_from(["orders", ".", "..", "-x", "_x", "Orders", "a" * 250, "a" * 300, ""]),
    st.text(max_size=8),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    names,
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)


def _table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly known keys with arbitrary values, sometimes an unknown key."""
    return st.dictionaries(
        st.one_of(st.sampled_from(keys), st.text(max_size=8)), values, max_size=len(keys)
    )


streams = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"name": names, "topic": names, "subject": names, "alias": names},
            optional={
                k: st.one_of(values, _table(INDEX_KEYS)) for k in STREAM_KEYS[4:] if k != "name"
            },
        ),
        values,
    ),
    max_size=3,
)
settings_like = st.fixed_dictionaries(
    {},
    optional={
        **{section: st.one_of(_table(keys), values) for section, keys in SECTION_KEYS.items()},
        "streams": st.one_of(streams, values),
        "schemas_dir": st.one_of(names, values),
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=6), values, max_size=1).map(lambda x: {**d, **x})
)


def _only_config_errors(call: Any) -> Settings | None:
    try:
        return call()  # type: ignore[no-any-return]
    except ConfigError as exc:
        text = str(exc)
        assert text and "\n" not in text, f"ConfigError must be one line: {text!r}"
        assert "Traceback" not in text
        return None


@FUZZ
@given(data=settings_like)
@example(data={"streams": [{"name": "x", "topic": "t", "subject": "s", "alias": "a" * 300}]})
@example(data={"streams": {"name": "x"}})
@example(data={"streams": [1, "a", None]})
@example(data={"kafka": [], "search": 3})
@example(data={"ledger": {"schema": "Bad-Name"}})
@example(data={"streams": [{"name": "o", "topic": "t", "subject": "s", "alias": "\ud800"}]})
def test_parse_settings_raises_only_config_error(data: dict[str, Any]) -> None:
    _only_config_errors(lambda: parse_settings(data))


def _toml_from(data: dict[str, Any]) -> str | None:
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError):
        return None


toml_texts = st.one_of(
    st.text(max_size=300),
    settings_like.map(_toml_from).filter(lambda t: t is not None),
    st.sampled_from(
        [
            "[kafka]\nbootstrap_servers = 1\n",
            "streams = 3\n",
            "[[streams]]\nname = 'o'\n",
            "[ledger]\ndsn_file = '/nonexistent/secret'\n",
            "[ledger]\ndsn_file = 3\n",
            "[search]\npassword_file = 'bad\\u0000path'\n",
            "schemas_dir = '" + "a" * 5000 + "'\n",
            "[kafka]\nclient_files = {'sasl.password' = '/nonexistent'}\n",
            "[kafka\n",
            "x = 1\nx = 2\n",
        ]
    ),
)
env_values = st.dictionaries(
    st.sampled_from(sorted(ENV_OVERRIDES) + [f"{k}_FILE" for k in sorted(ENV_OVERRIDES)]),
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
    ).filter(lambda s: len(s) < 40),
    max_size=3,
)


@FUZZ
@given(text=toml_texts, env=env_values)
def test_load_settings_from_any_toml_text(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    loaded = _only_config_errors(lambda: load_settings(path, env=env))
    if loaded is not None:
        # What the CLI does next with loaded settings must not blow up either.
        _only_config_errors(loaded.secrets)


@FUZZ
@given(raw=st.binary(max_size=200))
@example(raw=b"\xff\xfe[kafka]\n")
@example(raw=b"x = '\xc3'\n")
def test_load_settings_from_any_bytes(tmp_path: Path, raw: bytes) -> None:
    """Not UTF-8 at all (a binary file given by mistake) is a ConfigError too."""
    path = tmp_path / "fuzz.toml"
    path.write_bytes(raw)
    _only_config_errors(lambda: load_settings(path, env={}))


@pytest.mark.parametrize(
    "text",
    [
        "[kafka]\nclient_files = {'sasl.password' = '/nonexistent/secret'}\n",
        "schemas_dir = '" + "a" * 5000 + "'\n",
        '"multi\\nline" = 1\n',
        'x = "\\udc00"\n',
    ],
    ids=["client-file-missing", "schemas-dir-too-long", "newline-in-key", "surrogate-escape"],
)
def test_known_tricky_configs(tmp_path: Path, text: str) -> None:
    """Regression cases found by the fuzzers above."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    loaded = _only_config_errors(lambda: load_settings(path, env={}))
    if loaded is not None:
        _only_config_errors(loaded.secrets)
