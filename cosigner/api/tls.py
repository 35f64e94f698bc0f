"""Whom the API client trusts, and naming a failed certificate check as such.

By default the system trust store, as OpenSSL finds it (``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` are honoured), so a private CA or a TLS-inspecting egress proxy
installed on the host or image is trusted like everywhere else on it.
``COSIGNER_CA_BUNDLE`` (a PEM file) replaces that with exactly the CAs it holds.
Only where the system has no trust store at all does certifi's bundle stand in.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import certifi

from cosigner.errors import ConfigError

CA_BUNDLE_SETTING = "COSIGNER_CA_BUNDLE"


def tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies hostnames and certificates (TLS 1.2 or newer).

    Raises:
        ConfigError: ``ca_bundle`` cannot be read or holds no usable certificate.
    """
    if ca_bundle is not None:
        try:
            context = ssl.create_default_context(cafile=os.fspath(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise ConfigError(f"{CA_BUNDLE_SETTING}: cannot load {ca_bundle} as PEM "
                              f"certificates ({reason})") from None
    else:
        context = ssl.create_default_context()  # set_default_verify_paths: env honoured
        if not _system_store_exists():
            context.load_verify_locations(cafile=certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _system_store_exists() -> bool:
    paths = ssl.get_default_verify_paths()
    return any(p is not None and os.path.exists(p) for p in (paths.cafile, paths.capath))


def certificate_failure(exc: BaseException) -> str | None:
    """A one-line description when ``exc`` (or what caused it) is a failed TLS
    certificate check or handshake; None for any other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            detail = current.verify_message or current.reason or "verification failed"
            return (f"TLS certificate verification failed: {detail} (trust the server's CA: "
                    f"add it to the system trust store or set {CA_BUNDLE_SETTING})")
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {current.reason or type(current).__name__}"
        current = current.__cause__ or current.__context__
    return None
