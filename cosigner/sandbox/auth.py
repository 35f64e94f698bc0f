"""Authentication of an API request, as a provider would do it.

Checked in this order, each failure with its own code (see ``codes.py``):
the six public headers and ``Sign`` present (4001), ``SignType``/``Lang``/
``Nonce`` well-formed (4002), the ``ApiKey`` known (4011), the ``MerchantNo``
the key's own (4012), the caller's address in the key's whitelist (4016), the
``Sign`` right under the merchant's sort mode (4013), the ``TimeStamp`` within
the window (4014), and last the ``Nonce`` unused within the window (4015), so
that only a request that passed every other check uses up its nonce.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from cosigner.api.auth import PUBLIC_HEADERS, verify_sign
from cosigner.sandbox.codes import BusinessError, Code
from cosigner.sandbox.state import Merchant, SandboxState

#: Window for TimeStamp and Nonce: +-5 minutes.
DEFAULT_WINDOW_MS = 5 * 60 * 1000
_NONCE = re.compile(r"[A-Za-z0-9]{6,64}")
_TIMESTAMP = re.compile(r"\d{13}")


def ip_allowed(whitelist: tuple[str, ...], client_ip: str | None) -> bool:
    """True when the whitelist is empty or names ``client_ip`` (address or network)."""
    if not whitelist:
        return True
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    for entry in whitelist:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def authenticate(state: SandboxState, headers: Mapping[str, str], fields: Mapping[str, Any],
                 *, client_ip: str | None, now_ms: int,
                 window_ms: int = DEFAULT_WINDOW_MS) -> Merchant:
    """The merchant a request comes from, or :class:`BusinessError` saying why not.

    ``headers`` must look names up case-insensitively (Starlette's ``Headers``
    does); ``fields`` is the parsed JSON body, numbers kept exact.
    """
    public: dict[str, str] = {}
    for name in (*PUBLIC_HEADERS, "Sign"):
        value = headers.get(name)
        if value is None or value == "":
            raise BusinessError(Code.MISSING_HEADER, f"missing public header {name}")
        public[name] = value
    if public["SignType"] != "1":
        raise BusinessError(Code.BAD_PARAMETER,
                            f"invalid parameter SignType: {public['SignType']!r} is not "
                            f"supported (1: MD5)")
    if public["Lang"] not in ("en", "zh"):
        raise BusinessError(Code.BAD_PARAMETER, "invalid parameter Lang: must be en or zh")
    if _NONCE.fullmatch(public["Nonce"]) is None:
        raise BusinessError(Code.BAD_PARAMETER,
                            "invalid parameter Nonce: 6 to 64 letters or digits")

    merchant = state.merchant_by_api_key(public["ApiKey"])
    if merchant is None:
        raise BusinessError(Code.UNKNOWN_API_KEY, "unknown ApiKey")
    if public["MerchantNo"] != merchant.merchant_no:
        raise BusinessError(Code.UNKNOWN_MERCHANT,
                            "unknown MerchantNo, or not the merchant of this ApiKey")
    if not ip_allowed(merchant.ip_whitelist, client_ip):
        raise BusinessError(Code.IP_NOT_WHITELISTED,
                            f"IP {client_ip} is not in the whitelist of this ApiKey")

    sign = public.pop("Sign")
    if not verify_sign({**fields, **public}, sign, merchant.api_secret, merchant.sign_sort):
        raise BusinessError(Code.BAD_SIGN, "Sign does not match")

    stamp = public["TimeStamp"]
    if _TIMESTAMP.fullmatch(stamp) is None:
        raise BusinessError(Code.STALE_TIMESTAMP,
                            "TimeStamp must be a 13-digit millisecond timestamp")
    if abs(now_ms - int(stamp)) > window_ms:
        raise BusinessError(Code.STALE_TIMESTAMP,
                            f"TimeStamp is more than {window_ms // 1000} s away from "
                            f"the server's time")
    if not state.use_nonce(merchant.api_key, public["Nonce"], now_ms, window_ms):
        raise BusinessError(Code.NONCE_REUSED, "Nonce already used")
    return merchant
