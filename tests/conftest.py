"""Fixtures shared by every test folder: throwaway shards and external-tool gating.

Every key and certificate is generated at run time; nothing secret is committed.

Tests that need a tool outside Python (java/javac/keytool, openssl, promtool,
PostgreSQL) are marked ``external_service`` and call :func:`require_tool`, which
skips with the reason when the tool is absent, or fails when
``COSIGNER_REQUIRE_ALL=1`` (CI must run everything).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, settings

from cosigner.signing.throwaway import Encryption, make_certificate, pfx_bytes, write_private

# Property tests check invariants, not speed: no per-example deadline, so a slow or
# busy machine never fails them (timing targets live in benchmarks).
settings.register_profile("cosigner", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cosigner")

REQUIRE_ALL_ENV = "COSIGNER_REQUIRE_ALL"
SHARD_PASSWORD = "1bitpayM-TEST-0001"


def require_tool(name_or_check: str | Callable[[], bool], reason: str) -> str | None:
    """Skip (or fail under ``COSIGNER_REQUIRE_ALL=1``) unless a tool is available.

    ``name_or_check`` is an executable looked up on PATH (its full path is
    returned) or a callable that returns True when the service is usable.
    """
    if isinstance(name_or_check, str):
        found = shutil.which(name_or_check)
        ok = found is not None
    else:
        found = None
        ok = bool(name_or_check())
    if not ok:
        if os.environ.get(REQUIRE_ALL_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ALL_ENV}=1 forbids skipping)", pytrace=False)
        pytest.skip(reason)
    return found


@dataclass(frozen=True)
class ThrowawayShard:
    """A PKCS#12 file made for one test, with what was put into it."""

    path: Path
    password: str
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate


ShardFactory = Callable[..., ThrowawayShard]


@pytest.fixture(scope="session")
def rsa_key_2048() -> rsa.RSAPrivateKey:
    """One 2048-bit RSA key per session (key generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def shard_factory(tmp_path: Path, rsa_key_2048: rsa.RSAPrivateKey) -> ShardFactory:
    """Make throwaway shards in ``tmp_path``: ``shard_factory(name=..., password=..., ...)``.

    Keyword arguments: ``key`` (default: the session's 2048-bit key), ``bits``
    (a fresh key of that size), ``encryption`` ("aes" | "3des"), ``not_before``,
    ``not_after``, ``common_name``, ``alias`` and ``mode`` (default 0600).
    """
    counter = iter(range(1_000_000))

    def make(name: str | None = None, *, password: str = SHARD_PASSWORD,
             key: rsa.RSAPrivateKey | None = None, bits: int | None = None,
             encryption: Encryption = "aes", not_before: datetime | None = None,
             not_after: datetime | None = None, common_name: str = "cosigner test shard",
             alias: str = "1BitPay", mode: int = 0o600) -> ThrowawayShard:
        if key is None:
            key = (rsa.generate_private_key(public_exponent=65537, key_size=bits)
                   if bits else rsa_key_2048)
        cert = make_certificate(key, common_name, not_before=not_before, not_after=not_after)
        path = tmp_path / (name or f"shard-{next(counter)}.pfx")
        write_private(path, pfx_bytes(key, cert, password, encryption=encryption, alias=alias))
        path.chmod(mode)
        return ThrowawayShard(path, password, key, cert)

    return make


@pytest.fixture
def shard(shard_factory: ShardFactory) -> ThrowawayShard:
    """A valid AES-protected 2048-bit shard with mode 0600."""
    return shard_factory("shard.pfx")


@pytest.fixture
def cosigner_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Clear every ``COSIGNER_*`` variable (but ``COSIGNER_REQUIRE_ALL``), run in an empty
    directory (no stray ``.env``), and return ``set_env(NAME=value, ...)``."""
    for name in list(os.environ):
        if name.startswith("COSIGNER_") and name != REQUIRE_ALL_ENV:
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    def set_env(**values: str | os.PathLike[str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"COSIGNER_{name.upper()}", os.fspath(value))

    return set_env


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults: a command run in-process configures
    logging onto the (then captured) stdout, which must not leak into the next test."""
    yield
    structlog.reset_defaults()
