"""DSN passwords and secret-named settings: masked in text, in log fields and in ledger params.

Properties over generated passwords: whatever characters a password holds (spaces in a
quoted key=value DSN, ``@`` or ``/`` in a URL DSN), ``redact_dsn`` masks all of it and
``dsn_secret`` finds exactly it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.ledger.models import scrub_params
from ingest.logging import MASK, Redactor
from ingest.settings import dsn_secret, is_secret_key, parse_settings, redact_dsn

#: Characters that break naive patterns, drawn often; any other character now and then.
_TRICKY = st.sampled_from(list("@:/?=%'\"\\ abZ9"))
#: Passwords a URL can carry unencoded in a config file: anything but whitespace.
URL_PASSWORDS = st.text(
    _TRICKY.filter(str.strip) | st.characters(blacklist_categories=("Cs", "Z", "Cc")),
    min_size=1,
    max_size=24,
)
#: Passwords a quoted key=value DSN can carry: anything printable, spaces and quotes too.
KV_PASSWORDS = st.text(
    _TRICKY | st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\n\r"),
    min_size=1,
    max_size=24,
)


def kv_quote(password: str) -> str:
    """libpq's quoting of a key=value value: single quotes, backslash escapes."""
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


@given(URL_PASSWORDS)
def test_url_dsn_password_is_masked_whole(password: str) -> None:
    """A URL DSN's password is masked up to the host, even holding ``@``, ``:`` or ``/``."""
    dsn = f"postgresql://ingest:{password}@db-host:5432/ingest"
    text = f"cannot connect to {dsn} now"
    assert redact_dsn(text) == "cannot connect to postgresql://ingest:***@db-host:5432/ingest now"
    assert dsn_secret(dsn) == password


@pytest.mark.parametrize("key", ["password", "sslpassword", "PGPASSWORD"])
@given(password=KV_PASSWORDS)
def test_quoted_kv_password_is_masked_whole(key: str, password: str) -> None:
    """A quoted key=value password (spaces, quotes, backslashes) is masked as one value."""
    dsn = f"host=db user=ingest {key}={kv_quote(password)} dbname=x"
    assert redact_dsn(dsn) == f"host=db user=ingest {key}=*** dbname=x"
    assert dsn_secret(dsn) == password


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "postgresql://u:p@ss@host/db", "postgresql://u:***@host/db", id="at-in-url-password"
        ),
        pytest.param(
            "host=h password='a b c' dbname=x", "host=h password=*** dbname=x", id="quoted-spaces"
        ),
        pytest.param("sslpassword=k3y host=h", "sslpassword=*** host=h", id="sslpassword"),
        pytest.param("password=pw dbname=x", "password=*** dbname=x", id="bare"),
        pytest.param("postgresql://u@h/db", "postgresql://u@h/db", id="no-password"),
        pytest.param("mail me at a@b.c", "mail me at a@b.c", id="not-a-dsn"),
    ],
)
def test_redact_dsn_examples(text: str, expected: str) -> None:
    """The forms the review found leaking, and texts that must stay as they are."""
    assert redact_dsn(text) == expected


#: librdkafka properties whose values are secrets (or a keystore holding one).
KAFKA_SECRETS = {
    "sasl.password": "sasl-pw",
    "sasl.oauthbearer.config": "clientId=ingest clientSecret=oauth-s3cret",
    "sasl.oauthbearer.client.secret": "oauth-client-s3cret",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----MIIEv",
    "ssl.key.password": "key-pw",
    "ssl.keystore.password": "keystore-pw",
    "ssl.keystore.location": "/run/secrets/keystore.p12",
}
KAFKA_PLAIN = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "OAUTHBEARER"}


@pytest.mark.parametrize("key", sorted(KAFKA_SECRETS))
def test_kafka_secret_properties_are_secret(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [*sorted(KAFKA_PLAIN), "bootstrap.servers", "ssl.ca.location"])
def test_plain_properties_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def _settings_with_kafka_client(client: dict[str, Any]) -> Any:
    return parse_settings(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9092", "client": client},
            "search": {"url": "http://127.0.0.1:9200"},
            "ledger": {"dsn": "postgresql://ingest@127.0.0.1/ingest"},
            "streams": [{"name": "s", "topic": "t", "subject": "orders", "alias": "a"}],
        }
    )


def test_kafka_secrets_are_redacted_in_logs() -> None:
    """Each secret property's value is known to the redactor and masked by field name."""
    settings = _settings_with_kafka_client({**KAFKA_SECRETS, **KAFKA_PLAIN})
    secrets = settings.secrets()
    for value in KAFKA_SECRETS.values():
        assert value in secrets
    redactor = Redactor(secrets)
    out = redactor(
        None,
        "info",
        {
            "event": "kafka_client_configured",
            "client": {**KAFKA_SECRETS, **KAFKA_PLAIN},
            "error": "handshake failed: " + " ".join(KAFKA_SECRETS.values()),
        },
    )
    rendered = repr(out)
    for value in KAFKA_SECRETS.values():
        assert value not in rendered
    assert out["client"]["security.protocol"] == "SASL_SSL"
    assert out["client"]["sasl.oauthbearer.config"] == MASK


def test_kafka_secrets_never_reach_ledger_params() -> None:
    """Run and chunk params are scrubbed by key before they are written to the ledger."""
    scrubbed = scrub_params({"kafka": {**KAFKA_SECRETS, **KAFKA_PLAIN}, "stream": "s"})
    rendered = repr(scrubbed)
    for value in KAFKA_SECRETS.values():
        assert value not in rendered
    assert scrubbed["kafka"]["sasl.mechanisms"] == "OAUTHBEARER"
    assert scrubbed["stream"] == "s"
