"""A throwaway PKI generated at test time with the ``openssl`` command: CA, server, clients.

:func:`make_pki` writes, under a directory, a CA, a server certificate for ``127.0.0.1``
signed by it, a client certificate signed by it (``client``), and a client certificate
signed by a second, untrusted CA (``stranger``) — PEM files, keys unencrypted except
``client_encrypted.key`` (password :data:`KEY_PASSWORD`).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

KEY_PASSWORD = "k3y-pass"


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_key_encrypted: str
    stranger_cert: str
    stranger_key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[str, str]:
    cert, key = str(directory / f"{name}.pem"), str(directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", f"/CN={name}", "-keyout", key, "-out", cert,
    )  # fmt: skip
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[str, str], *, server: bool) -> tuple[str, str]:
    cert, key, csr = (str(directory / f"{name}.{ext}") for ext in ("pem", "key", "csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        if server
        else "extendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes",
        "-subj", f"/CN={name}", "-keyout", key, "-out", csr,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "1", "-extfile", str(ext), "-out", cert,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Generate every file under ``directory`` (a few hundred ms)."""
    ca = _ca(directory, "ca")
    stranger_ca = _ca(directory, "stranger-ca")
    server = _signed(directory, "server", ca, server=True)
    client = _signed(directory, "client", ca, server=False)
    stranger = _signed(directory, "stranger", stranger_ca, server=False)
    encrypted = str(directory / "client_encrypted.key")
    _openssl(
        "pkey", "-in", client[1], "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
        "-out", encrypted,
    )  # fmt: skip
    return Pki(ca[0], *server, *client, encrypted, *stranger)
