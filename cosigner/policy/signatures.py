"""M-of-N approver signatures over a policy bundle's manifest (DESIGN section 11).

Approvers sign the manifest bytes with ``ssh-keygen -Y sign -n cosigner-policy``;
each signature is an armored OpenSSH *SSHSIG* in ``<policy file>.signatures/*.sig``.
Who may sign is an OpenSSH ``allowed_signers`` file (``COSIGNER_POLICY_SIGNERS``)
and how many distinct principals must is ``COSIGNER_POLICY_QUORUM``.

Only the wire format (PROTOCOL.sshsig, RFC 4251 strings and mpints) is parsed
here; every key is loaded and every signature verified by ``cryptography``
(ed25519, ecdsa-sha2-nistp256/384/521, rsa-sha2-256/512).  Security-key
(``sk-*``) signatures and certificate authorities are not supported: such a
signature or ``allowed_signers`` line counts for nothing, and says so.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from cosigner.errors import ConfigError, UnsignedPolicyError
from cosigner.policy.bundle import signature_dir, signature_files

NAMESPACE = "cosigner-policy"
_MAGIC = b"SSHSIG"
_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = "-----END SSH SIGNATURE-----"
_MAX_SIGNATURE_FILE = 64 * 1024
MIN_RSA_BITS = 2048
_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})
_MESSAGE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha512": hashes.SHA512}
_RSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "rsa-sha2-256": hashes.SHA256, "rsa-sha2-512": hashes.SHA512}
_ECDSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ecdsa-sha2-nistp256": hashes.SHA256, "ecdsa-sha2-nistp384": hashes.SHA384,
    "ecdsa-sha2-nistp521": hashes.SHA512}


class SignatureFormatError(ValueError):
    """A signature file is not a well-formed armored SSHSIG."""


# -- wire format -------------------------------------------------------------------


class _Reader:
    """RFC 4251 ``string``/``uint32`` reader over bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def uint32(self) -> int:
        if self.at + 4 > len(self.data):
            raise SignatureFormatError("truncated")
        value = int.from_bytes(self.data[self.at:self.at + 4], "big")
        self.at += 4
        return value

    def string(self) -> bytes:
        size = self.uint32()
        if self.at + size > len(self.data):
            raise SignatureFormatError("truncated")
        value = self.data[self.at:self.at + size]
        self.at += size
        return value

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError:
            raise SignatureFormatError("a name is not ASCII") from None

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big", signed=True)

    def done(self) -> bool:
        return self.at == len(self.data)


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


@dataclass(frozen=True, slots=True)
class SshSignature:
    """A parsed SSHSIG: the signer's public key blob and what it signed how."""

    public_key: bytes
    namespace: str
    hash_algorithm: str
    algorithm: str
    signature: bytes
    reserved: bytes = b""

    def signed_data(self, message: bytes) -> bytes:
        """The bytes the key signed for *message* (PROTOCOL.sshsig)."""
        digest = hashes.Hash(_MESSAGE_HASHES[self.hash_algorithm]())
        digest.update(message)
        return (_MAGIC + _string(self.namespace.encode("ascii")) + _string(self.reserved)
                + _string(self.hash_algorithm.encode("ascii")) + _string(digest.finalize()))


def parse_signature(text: str) -> SshSignature:
    """Parse an armored ``-----BEGIN SSH SIGNATURE-----`` block.

    Raises:
        SignatureFormatError: not armored, not base64, not SSHSIG version 1, or a
            hash algorithm other than sha256/sha512.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _ARMOR_BEGIN or lines[-1] != _ARMOR_END:
        raise SignatureFormatError("not an armored SSH signature")
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise SignatureFormatError("not valid base64") from None
    if not blob.startswith(_MAGIC):
        raise SignatureFormatError("not an SSHSIG blob")
    r = _Reader(blob[len(_MAGIC):])
    version = r.uint32()
    if version != 1:
        raise SignatureFormatError(f"SSHSIG version {version} is not supported")
    public_key, namespace, reserved = r.string(), r.text(), r.string()
    hash_algorithm, wrapped = r.text(), r.string()
    if not r.done():
        raise SignatureFormatError("trailing bytes")
    if hash_algorithm not in _MESSAGE_HASHES:
        raise SignatureFormatError(f"hash algorithm {hash_algorithm!r} is not supported")
    inner = _Reader(wrapped)
    algorithm, signature = inner.text(), inner.string()
    if not inner.done():
        # security-key signatures carry flags and a counter after the signature
        raise SignatureFormatError(f"signature algorithm {algorithm!r} is not supported")
    return SshSignature(public_key, namespace, hash_algorithm, algorithm, signature, reserved)


def key_type(public_key: bytes) -> str:
    """The type name at the head of an SSH public key blob."""
    return _Reader(public_key).text()


def verify(signature: SshSignature, message: bytes, namespace: str = NAMESPACE) -> bool:
    """True when *signature* is a valid signature of *message* in *namespace* by its key.

    The key and the signature are checked by ``cryptography``; anything
    unsupported or malformed is simply not valid.
    """
    if signature.namespace != namespace:
        return False
    try:
        kind = key_type(signature.public_key)
        if kind.startswith("sk-"):
            return False
        key = load_ssh_public_key(
            kind.encode("ascii") + b" " + base64.b64encode(signature.public_key))
        data = signature.signed_data(message)
        algorithm, sig = signature.algorithm, signature.signature
        if isinstance(key, ed25519.Ed25519PublicKey) and algorithm == "ssh-ed25519":
            key.verify(sig, data)
        elif isinstance(key, rsa.RSAPublicKey) and algorithm in _RSA_HASHES \
                and key.key_size >= MIN_RSA_BITS:
            key.verify(sig, data, padding.PKCS1v15(), _RSA_HASHES[algorithm]())
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm == kind \
                and algorithm in _ECDSA_HASHES:
            parts = _Reader(sig)
            r, s = parts.mpint(), parts.mpint()
            if not parts.done() or r <= 0 or s <= 0:
                return False
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(_ECDSA_HASHES[algorithm]()))
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, SignatureFormatError, ValueError):
        return False
    return True


# -- allowed_signers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowedSigner:
    """One usable ``allowed_signers`` line: principals (one person) and a key."""

    principals: tuple[str, ...]
    key: bytes = field(repr=False)
    namespaces: tuple[str, ...] | None
    line: int

    def allows(self, namespace: str) -> bool:
        """True when the line's ``namespaces=`` (if any) admits *namespace*."""
        return self.namespaces is None or any(
            fnmatch.fnmatchcase(namespace, pattern) for pattern in self.namespaces)

    @property
    def who(self) -> str:
        return ",".join(self.principals)


@dataclass(frozen=True, slots=True)
class AllowedSigners:
    """The approvers: every usable line, and why other lines were left out."""

    path: str
    signers: tuple[AllowedSigner, ...]
    skipped: tuple[str, ...] = ()

    def principals(self, namespace: str = NAMESPACE) -> list[str]:
        """Every principal allowed to sign in *namespace*, in file order, once each."""
        seen: dict[str, None] = {}
        for signer in self.signers:
            if signer.allows(namespace):
                for principal in signer.principals:
                    seen.setdefault(principal, None)
        return list(seen)


_TOKEN = re.compile(r'(?:[^\s"]+|"[^"]*")+')


def _split_options(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def parse_allowed_signers(text: str, path: str = "allowed_signers") -> AllowedSigners:
    """Parse an OpenSSH ``allowed_signers`` file (``principals [options] keytype base64``).

    A line with an option other than ``namespaces=`` (``cert-authority``,
    ``valid-after``...) or an unsupported key type is skipped and listed in
    ``skipped``: it can never count towards a quorum.

    Raises:
        ConfigError: a line is malformed (``path:line`` named).
    """
    signers: list[AllowedSigner] = []
    skipped: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parsed = _signer_line(stripped, f"{path}:{number}", number)
        if isinstance(parsed, str):
            skipped.append(parsed)
        else:
            signers.append(parsed)
    return AllowedSigners(path, tuple(signers), tuple(skipped))


def _signer_line(line: str, where: str, number: int) -> AllowedSigner | str:
    """One line: the signer, or why it is skipped.  ConfigError when malformed."""
    tokens = _TOKEN.findall(line)
    malformed = ConfigError(f"{where}: expected 'principals [options] keytype key'")
    if len(tokens) < 3:
        raise malformed
    principals = tuple(p for p in _unquote(tokens[0]).split(",") if p)
    options: list[str] = []
    rest = tokens[1:]
    if rest[0] not in _KEY_TYPES and not rest[0].endswith("-cert-v01@openssh.com"):
        options = _split_options(rest[0])
        rest = rest[1:]
    if len(rest) < 2 or not principals:
        raise malformed
    kind, key = rest[0], _key_blob(rest[0], rest[1], where)
    namespaces, unsupported = _options(options)
    if unsupported:
        return f"{where}: option {', '.join(unsupported)} is not supported; line ignored"
    if kind not in _KEY_TYPES or kind.startswith("sk-"):
        return f"{where}: key type {kind} is not supported; line ignored"
    return AllowedSigner(principals, key, namespaces, number)


def _key_blob(kind: str, encoded: str, where: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
        blob_type = key_type(key)
    except (binascii.Error, SignatureFormatError):
        raise ConfigError(f"{where}: the key is not valid base64 OpenSSH") from None
    if blob_type != kind:
        raise ConfigError(f"{where}: the key is a {blob_type}, not a {kind}")
    return key


def _options(options: list[str]) -> tuple[tuple[str, ...] | None, list[str]]:
    """``namespaces=`` (None when absent) and the names of unsupported options."""
    namespaces: tuple[str, ...] | None = None
    unsupported = []
    for option in options:
        name, _, value = option.partition("=")
        if name.lower() == "namespaces" and value:
            namespaces = tuple(n for n in _unquote(value).split(",") if n)
        else:
            unsupported.append(name)
    return namespaces, unsupported


def load_allowed_signers(path: Path) -> AllowedSigners:
    """Read and parse ``COSIGNER_POLICY_SIGNERS``.

    Raises:
        ConfigError: unreadable, malformed, or allowing nobody to sign policies.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"COSIGNER_POLICY_SIGNERS: cannot read {path}: {reason}") from None
    signers = parse_allowed_signers(text, str(path))
    if not signers.principals(NAMESPACE):
        raise ConfigError(f"COSIGNER_POLICY_SIGNERS: {path} allows nobody to sign in the "
                          f"{NAMESPACE!r} namespace")
    return signers


# -- quorum -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignatureReport:
    """Who signed a manifest, who did not, and whether that makes the quorum."""

    quorum: int
    signed: tuple[str, ...]       # one entry per distinct approver (aliases joined by ',')
    missing: tuple[str, ...]      # allowed principals without a valid signature
    problems: tuple[str, ...] = field(default=())  # per signature file: why it counts for nothing

    @property
    def ok(self) -> bool:
        return len(self.signed) >= self.quorum

    def summary(self) -> str:
        """One line for logs and ``policy check``."""
        signed = ", ".join(self.signed) or "nobody"
        missing = ", ".join(self.missing) or "nobody"
        verdict = "ok" if self.ok else "NOT ENOUGH"
        return (f"signatures {verdict}: {len(self.signed)} of {self.quorum} required "
                f"(signed: {signed}; missing: {missing})")


def check_signatures(manifest_text: str, signature_paths: Sequence[Path],
                     signers: AllowedSigners, quorum: int) -> SignatureReport:
    """Count the distinct approvers whose signature over *manifest_text* verifies.

    A signature counts when it parses, is in the ``cosigner-policy`` namespace,
    its key is on an ``allowed_signers`` line admitting that namespace, and it
    verifies over exactly these manifest bytes.  Approvers are counted by
    principal: two signatures by one person (or by lines sharing a principal)
    count once.
    """
    message = manifest_text.encode("utf-8")
    groups: list[set[str]] = []
    problems: list[str] = []
    for path in signature_paths:
        try:
            if path.stat().st_size > _MAX_SIGNATURE_FILE:
                raise SignatureFormatError("too large")
            signature = parse_signature(path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError, SignatureFormatError) as exc:
            problems.append(f"{path.name}: unreadable signature: {exc}")
            continue
        line = next((s for s in signers.signers if s.key == signature.public_key), None)
        fingerprint = _fingerprint(signature.public_key)
        if line is None:
            problems.append(f"{path.name}: key {fingerprint} is not in {signers.path}")
            continue
        if not line.allows(NAMESPACE):
            problems.append(f"{path.name}: {line.who} may not sign in {NAMESPACE!r}")
            continue
        if not verify(signature, message):
            problems.append(f"{path.name}: {line.who}'s signature does not verify over this "
                            f"manifest (namespace {signature.namespace!r}; signed another "
                            f"version of the bundle?)")
            continue
        _credit(groups, set(line.principals))
    signed = tuple(",".join(sorted(group)) for group in groups)
    credited = set().union(*groups) if groups else set()
    missing = tuple(p for p in signers.principals(NAMESPACE) if p not in credited)
    return SignatureReport(quorum, signed, missing, tuple(problems))


def _credit(groups: list[set[str]], principals: set[str]) -> None:
    """Add one approver, merging every group that shares a principal with it."""
    merged = set(principals)
    for group in [g for g in groups if g & merged]:
        merged |= group
        groups.remove(group)
    groups.append(merged)


def _fingerprint(public_key: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(public_key).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def require_quorum(manifest_text: str, policy_path: Path, signers: AllowedSigners,
                   quorum: int) -> SignatureReport:
    """:func:`check_signatures` over the bundle's signature files; raise when short.

    Raises:
        UnsignedPolicyError: fewer than *quorum* distinct approvers signed.
    """
    report = check_signatures(manifest_text, signature_files(policy_path), signers, quorum)
    if not report.ok:
        raise UnsignedPolicyError([f"{policy_path}:1: {report.summary()}",
                                   *(f"{signature_dir(policy_path)}/{p}"
                                     for p in report.problems)])
    return report
