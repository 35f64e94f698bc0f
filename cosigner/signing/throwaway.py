"""Throwaway shards for the demo, the sandbox rehearsal and the tests.

Never for production: a real shard is downloaded from the 1BitPay merchant
system.  Files are written with mode 0600.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    KeySerializationEncryption,
    PrivateFormat,
    pkcs12,
)
from cryptography.x509.oid import NameOID

Encryption = Literal["aes", "3des"]


def make_certificate(key: rsa.RSAPrivateKey, common_name: str = "cosigner throwaway shard", *,
                     not_before: datetime | None = None,
                     not_after: datetime | None = None) -> x509.Certificate:
    """A self-signed certificate for ``key``."""
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    end = not_after or start + timedelta(days=365)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )


def pfx_bytes(key: rsa.RSAPrivateKey, cert: x509.Certificate, password: str, *,
              encryption: Encryption = "aes", alias: str = "1BitPay") -> bytes:
    """PKCS#12 bytes with modern AES-256 (PBES2) or legacy 3DES (PBES1) protection."""
    algo: KeySerializationEncryption
    if encryption == "aes":
        algo = BestAvailableEncryption(password.encode("utf-8"))
    else:
        algo = (PrivateFormat.PKCS12.encryption_builder()
                .kdf_rounds(2048)
                .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
                .hmac_hash(hashes.SHA1())  # noqa: S303 - what legacy PKCS#12 files use
                .build(password.encode("utf-8")))
    return pkcs12.serialize_key_and_certificates(alias.encode(), key, cert, None, algo)


def write_private(path: str | os.PathLike[str], blob: bytes) -> Path:
    """Write ``blob`` to ``path`` with mode 0600 (created that way, never widened)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    os.chmod(p, 0o600)
    return p


def make_throwaway_shard(path: str | os.PathLike[str], password: str, *, bits: int = 2048,
                         encryption: Encryption = "aes",
                         common_name: str = "cosigner throwaway shard") -> x509.Certificate:
    """Generate a new RSA key and self-signed certificate into a PKCS#12 file at ``path``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    cert = make_certificate(key, common_name)
    write_private(path, pfx_bytes(key, cert, password, encryption=encryption))
    return cert
