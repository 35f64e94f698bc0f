"""Loading the PKCS#12 shard and producing the approve/collect ``data``.

``java-rsa`` (default) is what the API doc's Java snippet does:
``Cipher.getInstance("RSA")`` in ``ENCRYPT_MODE`` with the private key, i.e. the
RSA private-key operation over EMSA-PKCS1-v1_5 type-1 padding *without*
DigestInfo, base64-encoded.  ``rsa-sha256`` is RSASSA-PKCS1-v1_5 over SHA-256.
All RSA comes from ``cryptography``; nothing here is hand-written crypto.

The password never appears in a message, a repr or a log.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo
from cryptography.hazmat.primitives.serialization import pkcs12

from cosigner.errors import ShardError, SigningError

SignScheme = Literal["java-rsa", "rsa-sha256"]
SIGN_SCHEMES: tuple[SignScheme, ...] = ("java-rsa", "rsa-sha256")
MIN_KEY_BITS = 2048
EXPIRY_WARNING_DAYS = 30
_PKCS1_OVERHEAD = 11


def default_password(merchant_no: str) -> str:
    """The API doc's shard password: ``"1bitpay"`` followed by the merchant number."""
    return "1bitpay" + merchant_no


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """What may be shown about a shard: never key material."""

    path: str
    subject: str
    issuer: str
    key_bits: int
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    scheme: SignScheme

    @property
    def expires_in(self) -> timedelta:
        """Time left until ``not_after`` (negative once expired)."""
        return self.not_after - datetime.now(UTC)

    @property
    def expiry_timestamp(self) -> float:
        """``not_after`` in Unix seconds (the ``shard_cert_expiry_timestamp_seconds`` gauge)."""
        return self.not_after.timestamp()

    def expires_soon(self, now: datetime | None = None,
                     days: int = EXPIRY_WARNING_DAYS) -> bool:
        """True when the certificate expires within ``days`` of ``now``."""
        return self.not_after - (now or datetime.now(UTC)) <= timedelta(days=days)

    def lines(self) -> list[str]:
        """Human-readable ``label: value`` lines (what ``cosigner shard inspect`` prints)."""
        return [
            f"file:        {self.path}",
            f"subject:     {self.subject}",
            f"issuer:      {self.issuer}",
            f"key:         RSA {self.key_bits} bits",
            f"sha256:      {self.fingerprint_sha256}",
            f"not before:  {self.not_before.isoformat()}",
            f"not after:   {self.not_after.isoformat()}",
            f"scheme:      {self.scheme}",
        ]


class Shard:
    """A loaded, checked shard that signs payloads.  Build it with :func:`load_shard`."""

    __slots__ = ("_key", "certificate", "info", "scheme")

    def __init__(self, key: rsa.RSAPrivateKey, certificate: x509.Certificate, info: ShardInfo,
                 scheme: SignScheme) -> None:
        self._key = key
        self.certificate = certificate
        self.info = info
        self.scheme: SignScheme = scheme

    def __repr__(self) -> str:
        return f"Shard(subject={self.info.subject!r}, bits={self.info.key_bits})"

    @property
    def max_payload(self) -> int:
        """The longest ``java-rsa`` payload this key can carry (k - 11 bytes)."""
        return self._key.key_size // 8 - _PKCS1_OVERHEAD

    def sign(self, payload: bytes | str) -> str:
        """The base64 ``data`` for ``payload`` under this shard's scheme."""
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        if self.scheme == "java-rsa":
            if len(data) > self.max_payload:
                raise SigningError(
                    f"payload is {len(data)} bytes; an RSA-{self._key.key_size} shard carries "
                    f"at most {self.max_payload} (java-rsa never splits a payload)")
            raw = self._key.sign(data, padding.PKCS1v15(), NoDigestInfo())
        else:
            raw = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(raw).decode("ascii")


def verify_data(certificate: x509.Certificate, payload: bytes | str, data: str,
                scheme: SignScheme = "java-rsa") -> bool:
    """True when ``data`` is ``payload`` signed by the certificate's key under ``scheme``."""
    message = payload.encode("utf-8") if isinstance(payload, str) else payload
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        return False
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        if scheme == "java-rsa":
            recovered = public.recover_data_from_signature(raw, padding.PKCS1v15(), NoDigestInfo())
            return recovered == message
        public.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_mode(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ShardError(
            f"{path}: shard file mode is {stat.S_IMODE(mode):04o}; it must not be accessible "
            f"to group or others (chmod 0400 {path})")


def load_shard(path: str | os.PathLike[str], password: str, *, scheme: SignScheme = "java-rsa",
               now: datetime | None = None, check_mode: bool = True,
               password_setting: str = "COSIGNER_PFX_PASSWORD",  # noqa: S107 - a setting name
               ) -> Shard:
    """Load and check the PKCS#12 shard at ``path``.

    Raises :class:`ShardError` naming the file and the cause (never the password):
    missing file, group/other access, wrong password or not PKCS#12, no private key,
    non-RSA key, RSA below 2048 bits, key not matching its certificate, expired
    or not-yet-valid certificate.
    """
    if scheme not in SIGN_SCHEMES:
        raise ShardError(f"COSIGNER_SIGN_SCHEME must be one of {', '.join(SIGN_SCHEMES)}, "
                         f"not {scheme!r}")
    p = Path(path)
    blob = _read_shard(p, check_mode)
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(blob, password.encode("utf-8"))
    except ValueError:
        # Deliberately no detail from the library and never the password itself.
        raise ShardError(
            f"{p}: wrong password or not a PKCS#12 file (the password comes from "
            f"{password_setting}, default '1bitpay' + COSIGNER_MERCHANT_NO)") from None
    rsa_key = _check_key(p, key)
    cert = _check_certificate(p, rsa_key, cert, len(extra), now or datetime.now(UTC))
    key = rsa_key
    info = ShardInfo(
        path=str(p),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        key_bits=key.key_size,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        scheme=scheme,
    )
    return Shard(key, cert, info, scheme)


def _read_shard(p: Path, check_mode: bool) -> bytes:
    try:
        if check_mode:
            _check_mode(p)
        return p.read_bytes()
    except FileNotFoundError:
        raise ShardError(f"{p}: shard file not found (COSIGNER_PFX_PATH)") from None
    except IsADirectoryError:
        raise ShardError(f"{p}: is a directory, not a PKCS#12 shard (COSIGNER_PFX_PATH)") from None
    except PermissionError:
        raise ShardError(f"{p}: shard file is not readable by this user") from None


def _check_key(p: Path, key: object) -> rsa.RSAPrivateKey:
    if key is None:
        raise ShardError(f"{p}: the PKCS#12 file holds no private key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ShardError(f"{p}: the private key is {type(key).__name__.removeprefix('_')}, "
                         f"not RSA")
    if key.key_size < MIN_KEY_BITS:
        raise ShardError(f"{p}: RSA key is {key.key_size} bits; at least {MIN_KEY_BITS} "
                         f"are required")
    return key


def _check_certificate(p: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate | None,
                       others: int, moment: datetime) -> x509.Certificate:
    if cert is None and others:
        # The loader pairs the key with the certificate holding its public key; a
        # file whose certificates are all for other keys comes back this way.
        raise ShardError(f"{p}: the private key does not match its certificate "
                         f"(none of the {others} certificates in the file is for this key)")
    if cert is None:
        raise ShardError(f"{p}: the PKCS#12 file holds no certificate for its key")
    cert_key = cert.public_key()
    if (not isinstance(cert_key, rsa.RSAPublicKey)
            or cert_key.public_numbers() != key.public_key().public_numbers()):
        # Defence in depth: the loader already pairs key and certificate by public key.
        raise ShardError(f"{p}: the private key does not match its certificate")  # pragma: no cover
    if cert.not_valid_after_utc <= moment:
        raise ShardError(f"{p}: certificate expired on {cert.not_valid_after_utc.isoformat()}")
    if cert.not_valid_before_utc > moment:
        raise ShardError(f"{p}: certificate is not valid before "
                         f"{cert.not_valid_before_utc.isoformat()}")
    return cert


def certificate_from_pfx(path: str | os.PathLike[str], password: str) -> x509.Certificate:
    """Only the certificate of a shard (what the sandbox registers); raises ShardError."""
    p = Path(path)
    try:
        _key, cert, _extra = pkcs12.load_key_and_certificates(p.read_bytes(),
                                                               password.encode("utf-8"))
    except (OSError, ValueError):
        raise ShardError(f"{p}: cannot read the certificate (wrong password, or not a "
                         f"PKCS#12 file)") from None
    if cert is None:
        raise ShardError(f"{p}: the PKCS#12 file holds no certificate")
    return cert


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
