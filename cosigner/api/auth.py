"""The MD5 ``Sign`` of the 1BitPay API (DESIGN section 1), as pure functions.

The signed parameters are the public parameters (the headers, without ``Sign``)
merged with the JSON body's top-level fields; ``None`` and ``""`` are dropped.
Keys are sorted case-insensitively (``casefold``, the API doc's worked example)
or by plain byte order (``ascii``), joined as ``key=value`` with ``&``, the API
secret is appended with no separator, and the result is md5 in 32 lowercase hex.

Value text: strings as they are; integers in decimal; booleans ``true`` /
``false``; Decimals (and exact JSON number literals) in plain notation, never an
exponent; nested objects and lists as compact JSON.  Binary floats are refused:
money must never pass through one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import httpx

from cosigner.errors import ConfigError
from cosigner.models import JsonNumber, dumps_exact, loads_exact

SignSort = Literal["casefold", "ascii"]
SIGN_SORTS: tuple[SignSort, ...] = ("casefold", "ascii")

#: The public parameters, carried as HTTP headers (``Sign`` is computed last).
PUBLIC_HEADERS = ("Nonce", "TimeStamp", "MerchantNo", "SignType", "Lang", "ApiKey")

_NONCE_ALPHABET = string.ascii_letters + string.digits
_NONCE_SPACE = len(_NONCE_ALPHABET) ** 8
_NONCE_BASE2 = len(_NONCE_ALPHABET) ** 2
#: Two base-62 digits ``lo + 62 * hi`` as their two characters, ``lo`` first.
_NONCE_PAIRS = tuple(lo + hi for hi in _NONCE_ALPHABET for lo in _NONCE_ALPHABET)
_SIGNED_LOWER = frozenset(h.lower().encode("ascii") for h in (*PUBLIC_HEADERS, "Sign"))

#: Request extension carrying the fields a JSON body was encoded from (see :func:`signed_body`).
SIGN_FIELDS = "cosigner.sign_fields"


def format_value(value: Any) -> str | None:
    """The text a parameter value contributes to the signed string, None when dropped."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, JsonNumber):
        return _plain_decimal(Decimal(value), str(value))
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return _plain_decimal(value, str(value))
    if isinstance(value, float):
        raise TypeError("float parameter refused: use Decimal or str for amounts")
    if isinstance(value, Mapping | list | tuple):
        return dumps_exact(value)
    raise TypeError(f"cannot sign a parameter of type {type(value).__name__}")


def _plain_decimal(value: Decimal, text: str) -> str:
    if not value.is_finite():
        raise ValueError(f"non-finite number {text!r} cannot be signed")
    return format(value, "f")


def _casefold_key(key: str) -> tuple[str, str]:
    return key.casefold(), key


def _ascii_key(key: str) -> bytes:
    return key.encode("utf-8")


def _sort_key(sort: SignSort) -> Callable[[str], Any]:
    if sort == "casefold":
        return _casefold_key
    if sort == "ascii":
        return _ascii_key
    raise ValueError(f"COSIGNER_SIGN_SORT must be casefold or ascii, not {sort!r}")


_STR_ONLY = frozenset((str,))


def _signing_order(params: Mapping[str, Any], sort: SignSort
                   ) -> Iterable[tuple[object, str, Any]]:
    """``(_, key, value)`` of every parameter, in signing order."""
    if sort == "casefold" and _STR_ONLY.issuperset(map(type, params)):
        # Plain str keys only: (casefold, key, value) built and sorted in C give the order
        # of the key function (keys are unique: a comparison never reaches the value),
        # without a Python call per key.
        return sorted(zip(map(str.casefold, params), params, params.values(), strict=True))
    return ((None, key, params[key]) for key in sorted(params, key=_sort_key(sort)))


def canonical_string(params: Mapping[str, Any], sort: SignSort = "casefold", *,
                     skip: str | None = "Sign") -> str:
    """``k1=v1&k2=v2...`` over the non-empty parameters, ``skip`` (``Sign``) excluded, sorted."""
    pairs = []
    for _, key, value in _signing_order(params, sort):
        if key == skip:
            continue
        kind = type(value)
        # Plain str and int (the common values) inline, written as format_value writes them.
        if kind is str:
            if value:
                pairs.append(f"{key}={value}")
        elif kind is int:
            pairs.append(f"{key}={value}")
        else:
            text = format_value(value)
            if text is not None:
                pairs.append(f"{key}={text}")
    return "&".join(pairs)


def compute_sign(params: Mapping[str, Any], secret: str, sort: SignSort = "casefold", *,
                 skip: str | None = "Sign") -> str:
    """The 32-character lowercase md5 ``Sign`` of ``params`` under ``secret``."""
    text = canonical_string(params, sort, skip=skip) + secret
    # md5 is the provider's choice for request signing, not ours.
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def signs_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two signatures (case-insensitive hex)."""
    return hmac.compare_digest(a.lower().encode(), b.lower().encode())


def verify_sign(params: Mapping[str, Any], sign: str, secret: str,
                sort: SignSort = "casefold", *, skip: str | None = "Sign") -> bool:
    """True when ``sign`` is the ``Sign`` of ``params`` (``Sign`` itself ignored)."""
    try:
        expected = compute_sign(params, secret, sort, skip=skip)
    except (TypeError, ValueError, InvalidOperation):
        return False
    return signs_equal(expected, sign)


def verify_callback(body: bytes | str | Mapping[str, Any], secret: str,
                    sort: SignSort = "casefold") -> bool:
    """Check the ``signature`` of a C2C order callback (the API doc's "Order Callback").

    The signature covers every other field of the callback body under the same
    rules as ``Sign``.  Pass the raw body so number literals such as
    ``"dealAmount": 10.11`` are signed as their exact text.
    """
    if isinstance(body, bytes | str):
        try:
            data = loads_exact(body)
        except ValueError:
            return False
    else:
        data = body
    if not isinstance(data, Mapping):
        return False
    signature = data.get("signature")
    if not isinstance(signature, str) or not signature:
        return False
    # Every field but ``signature`` is signed, a field named ``Sign`` included.
    fields = {k: v for k, v in data.items() if k != "signature"}
    return verify_sign(fields, signature, secret, sort, skip=None)


def sign_callback(fields: Mapping[str, Any], secret: str, sort: SignSort = "casefold") -> str:
    """The ``signature`` a provider puts on a callback carrying ``fields``."""
    return compute_sign({k: v for k, v in fields.items() if k != "signature"}, secret, sort,
                        skip=None)


def new_nonce() -> str:
    """8 random letters and digits (DESIGN section 1), uniform, from one ``secrets`` draw.

    The draw's base-62 digits, least significant first, taken two at a time.
    """
    n = secrets.randbelow(_NONCE_SPACE)
    n, first = divmod(n, _NONCE_BASE2)
    n, second = divmod(n, _NONCE_BASE2)
    n, third = divmod(n, _NONCE_BASE2)
    return _NONCE_PAIRS[first] + _NONCE_PAIRS[second] + _NONCE_PAIRS[third] + _NONCE_PAIRS[n]


def timestamp_ms() -> int:
    """The 13-digit millisecond ``TimeStamp``."""
    return time.time_ns() // 1_000_000


def _header_safe(value: str) -> bool:
    """Printable ASCII only (a header value that cannot break the request apart)."""
    return value.isascii() and all(32 <= ord(c) < 127 for c in value)


class SignAuth(httpx.Auth):
    """httpx auth flow adding the six public headers and the ``Sign`` to each request.

    The JSON body must already be encoded on the request.  When the request carries
    the fields it was encoded from (:func:`signed_body`), the ``Sign`` is computed
    from them; otherwise the body is parsed back with exact numbers.  Both give the
    same ``Sign``: a field's text is the same before encoding and after decoding
    (strings, integers, booleans, Decimals and exact number literals alike).
    """

    def __init__(self, merchant_no: str, api_key: str, secret: str, *, lang: str = "en",
                 sort: SignSort = "casefold",
                 clock: Callable[[], int] = timestamp_ms,
                 nonce: Callable[[], str] = new_nonce) -> None:
        _sort_key(sort)  # validate early
        for name, value in (("merchant number (COSIGNER_MERCHANT_NO)", merchant_no),
                            ("API key (COSIGNER_API_KEY)", api_key), ("COSIGNER_LANG", lang)):
            if not _header_safe(value):
                # They travel as header values: a line break would split the request.
                raise ConfigError(f"the {name} holds a control or non-ASCII character")
        self._merchant_no = merchant_no
        self._api_key = api_key
        self._secret = secret
        self._lang = lang
        self._sort: SignSort = sort
        self._clock = clock
        self._nonce = nonce
        # The four public parameters that never change, and their header bytes (in order).
        self._fixed = {"MerchantNo": merchant_no, "SignType": "1", "Lang": lang,
                       "ApiKey": api_key}
        self._fixed_wire = [(k.encode("ascii"), v.encode("utf-8"))
                            for k, v in self._fixed.items()]

    def __repr__(self) -> str:
        return f"SignAuth(merchant_no={self._merchant_no!r}, secret=**********)"

    def public_params(self) -> dict[str, str]:
        return {"Nonce": self._nonce(), "TimeStamp": str(self._clock()), **self._fixed}

    def signed_headers(self, fields: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
        """The six public headers and the ``Sign`` for a body made of ``fields``."""
        nonce, stamp = self._nonce(), str(self._clock())
        headers = {"Nonce": nonce, "TimeStamp": stamp, **self._fixed}
        sign = compute_sign({**fields, **headers}, self._secret, self._sort)
        return [(b"Nonce", nonce.encode("utf-8")), (b"TimeStamp", stamp.encode("utf-8")),
                *self._fixed_wire, (b"Sign", sign.encode("utf-8"))]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        fields = request.extensions.get(SIGN_FIELDS)
        if fields is None:
            body = request.content
            fields = loads_exact(body) if body else {}
        if not isinstance(fields, Mapping):
            raise TypeError("1BitPay request bodies are JSON objects")
        # One new Headers instead of seven updates of the old one (each a scan).
        kept = [(k, v) for k, v in request.headers.raw if k.lower() not in _SIGNED_LOWER]
        request.headers = httpx.Headers(kept + self.signed_headers(fields))
        yield request


_PLAIN_TYPES = frozenset((str, int, bool, type(None)))
#: What ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)`` builds on every call.
_PLAIN_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_body(fields: Mapping[str, Any]) -> bytes:
    """The JSON request body for ``fields`` (Decimals as plain strings, exact numbers kept)."""
    if _PLAIN_TYPES.issuperset(map(type, fields.values())):
        # Only plain strings, integers, booleans and nulls (an approve): nothing to keep
        # exact, so the stdlib encoder alone gives the same bytes, faster.
        return _PLAIN_ENCODER.encode(fields).encode("utf-8")
    return dumps_exact(fields).encode("utf-8")


def signed_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``content`` and ``extensions`` for an httpx request whose body is ``fields``.

    The body and the fields :class:`SignAuth` signs come from the same mapping, so the
    ``Sign`` is computed without parsing back the body just built.
    """
    return {"content": encode_body(fields), "extensions": {SIGN_FIELDS: fields}}


