"""Masking secrets out of text before it is stored or shown.

Two kinds of masking (DESIGN sections 4 and 6):

* :func:`mask_secrets`: every value registered with :func:`register_secret` (the
  API secret, the shard password, the database URL and its password) is replaced
  wherever it appears.  The log processor (:mod:`cosigner.logs`) applies this to
  every line.
* :func:`mask_text`: that, plus anything *secret-looking* in untrusted text such
  as a provider's error message: PEM blocks, URL userinfo, ``key=value`` pairs
  whose key names a secret or a signature, and long opaque tokens (base64 or
  hex runs: signatures, keys, digests).  A 1BitPay error message that echoes the
  signing string (which ends with the API secret) or the ``data`` signature is
  stored in the journal and exported only in this masked form.

:func:`mask_url` hides a URL's userinfo wherever a URL is shown.

Imports nothing of ours: every layer may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import unquote, urlsplit

MASK = "**********"

#: Registered values shorter than this are not masked (they would mask ordinary words).
MIN_SECRET_LENGTH = 4

_registered: set[str] = set()

_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]*@")
_SECRET_PAIR = re.compile(
    r"(?i)(\b(?:api[_-]?secret|secret|password|passwd|pwd|pass|token|api[_-]?key|"
    r"authorization|sign|signature|data|private[_-]?key|key)\b[\"']?\s*[=:]\s*[\"']?)"
    r"([^\s&\"',;}]+)")
# Long runs of base64 / base64url / hex characters: signatures, DER keys, digests.
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{24,}={0,2}")
# Addresses are long tokens too, but not secret: keep them readable.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}|T[1-9A-HJ-NP-Za-km-z]{33}")


def secret_values(values: Iterable[str | None]) -> set[str]:
    """The texts to mask for these secrets: each value, and the password inside a URL
    (``postgresql://user:pw@host/db``) on its own, raw and decoded (a driver's error
    message may quote it without the URL); none shorter than :data:`MIN_SECRET_LENGTH`."""
    found: set[str] = set()
    for v in values:
        if not v:
            continue
        candidates = [v]
        if "://" in v:
            try:
                password = urlsplit(v).password
            except ValueError:
                password = None
            if password:
                candidates += [password, unquote(password)]
        found.update(c for c in candidates if len(c) >= MIN_SECRET_LENGTH)
    return found


def register_secret(*values: str | None) -> None:
    """Remember secret values so that :func:`mask_secrets` masks them anywhere.

    The password inside a URL (``postgresql://user:pw@host/db``) is registered
    on its own too: a driver's error message may quote it without the URL.
    """
    _registered.update(secret_values(values))
    _masked_short.cache_clear()  # masked before this secret was known


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret value replaced by :data:`MASK`."""
    # Longest first, so that a secret containing another is masked whole.
    for secret in sorted(_registered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _token(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if _ADDRESS.fullmatch(text) else MASK


def mask_text(text: str) -> str:
    """Untrusted text (an API error message) with secrets and secret-looking parts masked."""
    # The same short messages ("Success", "already processed") recur on every post.
    return _masked_short(text) if len(text) <= _CACHED_LENGTH else _mask_text(text)


_CACHED_LENGTH = 64


@lru_cache(maxsize=512)
def _masked_short(text: str) -> str:
    return _mask_text(text)


def _mask_text(text: str) -> str:
    text = mask_secrets(text)
    text = _PEM.sub(MASK, text)
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _SECRET_PAIR.sub(lambda m: m.group(1) + MASK, text)
    return _TOKEN.sub(_token, text)


def mask_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) masked; anything else unchanged."""
    return _USERINFO.sub(lambda m: m.group(1) + MASK + "@", url)
