"""An independent implementation of DESIGN section 1's ``Sign``, written from the text alone.

It deliberately shares no code with :mod:`cosigner.api.auth`: it works from
what went over the wire (the recorded headers and the raw body bytes) and
re-derives the signed string step by step.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

#: The six public parameters carried as headers (``Sign`` is the seventh).
PUBLIC = ("Nonce", "TimeStamp", "MerchantNo", "SignType", "Lang", "ApiKey")


def _text(value: Any) -> str | None:
    """The value text of DESIGN section 1 (None: the parameter is dropped)."""
    if value is None or value == "":
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        return format(value, "f")  # plain notation, never an exponent
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise AssertionError(f"the oracle does not sign {type(value).__name__} values")


def signed_string(headers: Mapping[str, str], body: bytes, sort: str = "casefold") -> str:
    """``k=v&k=v...`` over the public headers (without Sign) and the body's top-level fields."""
    lower = {k.lower(): v for k, v in headers.items()}
    params: dict[str, Any] = {name: lower[name.lower()] for name in PUBLIC}
    fields = json.loads(body, parse_float=Decimal) if body else {}
    assert isinstance(fields, dict)
    for key, value in fields.items():
        params.setdefault(key, value)  # a public parameter is never overridden by the body
    pairs = [(k, _text(v)) for k, v in params.items() if k != "Sign"]
    kept = [(k, t) for k, t in pairs if t is not None]
    if sort == "casefold":
        kept.sort(key=lambda kv: kv[0].lower())
    elif sort == "ascii":
        kept.sort(key=lambda kv: kv[0].encode("ascii"))
    else:
        raise AssertionError(sort)
    return "&".join(f"{k}={t}" for k, t in kept)


def oracle_sign(headers: Mapping[str, str], body: bytes, secret: str,
                sort: str = "casefold") -> str:
    """md5 (32 lowercase hex) of the signed string with the secret appended."""
    text = signed_string(headers, body, sort) + secret
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def sign_header(headers: Mapping[str, str]) -> str:
    """The ``Sign`` header, whatever the case of its name."""
    return {k.lower(): v for k, v in headers.items()}["sign"]


def accepts(headers: Mapping[str, str], body: bytes, secret: str, sort: str = "casefold") -> bool:
    """True when the request's ``Sign`` is what the oracle computes."""
    return sign_header(headers) == oracle_sign(headers, body, secret, sort)


HEX32 = re.compile(r"[0-9a-f]{32}")
