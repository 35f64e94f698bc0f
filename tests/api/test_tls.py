"""Trust (issue 11 item 4): the system trust store by default, honouring SSL_CERT_FILE;
COSIGNER_CA_BUNDLE for an explicit CA; a failed certificate check named as such.

A real TLS server on 127.0.0.1 with a certificate from a CA made for the test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cosigner.api.client import ApiClient, error_kind
from cosigner.api.tls import certificate_failure, tls_context
from cosigner.errors import ApiCertificateError, ApiHTTPError, ConfigError


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA (ca.pem) and a server certificate for 127.0.0.1 signed by it."""
    out = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name("cosigner test CA"))
          .issuer_name(_name("cosigner test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.pem", "cert": out / "server.pem", "key": out / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


@pytest.fixture
async def https_url(pki: dict[str, Path]) -> AsyncIterator[str]:
    """A TLS server on 127.0.0.1 that answers every request with HTTP 503."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def client(url: str, tls: ssl.SSLContext | None = None) -> ApiClient:
    return ApiClient(url, "M1", "K1", "secret", retries=1, timeout=5.0, max_connections=1,
                     tls=tls)


class TestTrust:
    """Whom the client trusts."""

    async def test_unknown_ca_is_named_a_certificate_failure(self, https_url: str,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
        """A server whose CA is not trusted: ApiCertificateError saying so, kind "tls"
        (it used to be "could not connect: ConnectError")."""
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        async with client(https_url) as api:
            with pytest.raises(ApiCertificateError) as caught:
                await api.rate("USDT", "CNY")
        message = str(caught.value)
        assert "TLS certificate verification failed" in message
        assert "COSIGNER_CA_BUNDLE" in message
        assert error_kind(caught.value) == "tls"

    async def test_ca_bundle_is_trusted(self, https_url: str, pki: dict[str, Path]) -> None:
        """COSIGNER_CA_BUNDLE's CA makes the handshake succeed (the 503 proves it)."""
        async with client(https_url, tls_context(pki["ca"])) as api:
            with pytest.raises(ApiHTTPError):
                await api.rate("USDT", "CNY")

    async def test_system_store_honours_ssl_cert_file(self, https_url: str,
                                                      pki: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """The default context reads SSL_CERT_FILE, as OpenSSL does (no certifi pin)."""
        monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))
        async with client(https_url) as api:
            with pytest.raises(ApiHTTPError):
                await api.rate("USDT", "CNY")

    def test_unreadable_bundle_is_a_config_error(self, tmp_path: Path) -> None:
        """A bundle that is missing or not PEM names COSIGNER_CA_BUNDLE (exit 2)."""
        with pytest.raises(ConfigError, match="COSIGNER_CA_BUNDLE: cannot load"):
            tls_context(tmp_path / "absent.pem")
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a certificate", encoding="utf-8")
        with pytest.raises(ConfigError, match="COSIGNER_CA_BUNDLE: cannot load"):
            tls_context(garbage)

    def test_other_failures_are_not_called_certificate_failures(self) -> None:
        """A refused connection is not described as a TLS problem."""
        assert certificate_failure(ConnectionRefusedError(111, "refused")) is None

    def test_context_verifies_and_refuses_old_tls(self) -> None:
        """Hostname check and verification on; TLS 1.2 at least."""
        context = tls_context()
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname is True
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
