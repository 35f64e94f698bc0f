"""The sandbox's answer codes (documented in ``cosigner/sandbox/README.md``).

Business errors are HTTP 200 with the envelope ``{"code": C, "message": M,
"data": null}``; only the fault codes come with a non-2xx HTTP status.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Every ``code`` the sandbox answers with."""

    SUCCESS = 200
    MISSING_HEADER = 4001          # a public header is missing (the message names it)
    BAD_PARAMETER = 4002           # a business parameter is missing or invalid (named)
    UNKNOWN_API_KEY = 4011
    UNKNOWN_MERCHANT = 4012        # unknown MerchantNo, or not the ApiKey's merchant
    BAD_SIGN = 4013
    STALE_TIMESTAMP = 4014         # TimeStamp outside +-5 minutes (or not a number)
    NONCE_REUSED = 4015
    IP_NOT_WHITELISTED = 4016
    NOT_FOUND = 4040               # unknown currency pair or order
    ITEM_NOT_FOUND = 4041
    ALREADY_PROCESSED = 4091
    BAD_DATA = 4221                # `data` does not verify against the merchant certificate
    FIELD_MISMATCH = 4222          # from/to/value/chainId differ from the stored item
    RATE_LIMITED = 4290            # fault: HTTP 429
    SERVER_ERROR = 5000            # fault: HTTP 500/502/503


class BusinessError(Exception):
    """A refusal answered as ``{"code": code, "message": message, "data": null}``.

    Internal to the sandbox's request handlers: raised where a check fails and
    turned into the envelope (and recorded) at the edge of the endpoint.
    """

    def __init__(self, code: Code, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{int(code)}: {message}")
