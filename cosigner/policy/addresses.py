"""Address formats: validation and the key an address is compared by.

Three formats (DESIGN section 3):

* ``evm``: ``0x`` and 40 hex digits, compared case-insensitively; an address in
  mixed case must carry a valid EIP-55 checksum (keccak-256 of the lowercase hex).
* ``tron``: base58check, ``T`` then 33 base58 characters, decoding to 21 bytes
  that start with the version byte 0x41.
* ``other``: any printable ASCII without whitespace, compared exactly.

Every function here is pure and total: hostile text gives ``False``/``None``,
never an exception.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final, Literal

import base58
from Crypto.Hash import keccak

Format = Literal["evm", "tron", "other"]
FORMATS: Final[tuple[Format, ...]] = ("evm", "tron", "other")

MAX_ADDRESS_LENGTH: Final = 128

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_EVM = re.compile(r"0x[0-9a-fA-F]{40}")
_TRON = re.compile(r"T[1-9A-HJ-NP-Za-km-z]{33}")
_TRON_VERSION: Final = 0x41


def clean_chars(text: str) -> bool:
    """True when *text* is only printable ASCII (no space, control, zero-width, non-ASCII)."""
    return _PRINTABLE_ASCII.fullmatch(text) is not None


def has_clean_chars(text: str) -> bool:
    """True when *text* is 1..128 printable ASCII characters."""
    return len(text) <= MAX_ADDRESS_LENGTH and clean_chars(text)


# Bit masks over the 40 hex characters, computed with C-level str.translate:
# "is an upper-case letter", "is a letter", "keccak nibble >= 8".
_UPPER = str.maketrans("0123456789abcdefABCDEF", "0000000000000000111111")
_LETTER = str.maketrans("0123456789abcdefABCDEF", "0000000000111111111111")
_HIGH = str.maketrans("0123456789abcdef", "0000000011111111")


def _nibbles(hex_lower: str) -> str:
    return keccak.new(data=hex_lower.encode("ascii"), digest_bits=256).digest().hex()[:40]


def eip55(address: str) -> str:
    """The EIP-55 checksummed spelling of a ``0x`` + 40 hex address."""
    hex_part = address[2:].lower()
    digest = _nibbles(hex_part)
    return "0x" + "".join(c.upper() if d in "89abcdef" else c
                          for c, d in zip(hex_part, digest, strict=True))


@lru_cache(maxsize=65536)  # the same wallets recur in every poll; keccak is the costly part
def _checksum_ok(hex_part: str) -> bool:
    upper = int(hex_part.translate(_UPPER), 2)
    letters = int(hex_part.translate(_LETTER), 2)
    high = int(_nibbles(hex_part.lower()).translate(_HIGH), 2)
    return upper == high & letters


def is_evm(address: str) -> bool:
    """True for a well-formed evm address (EIP-55 checksum checked when in mixed case)."""
    if _EVM.fullmatch(address) is None:
        return False
    hex_part = address[2:]
    if hex_part.islower() or hex_part.isupper() or hex_part.isdigit():
        return True
    return _checksum_ok(hex_part)


def is_tron(address: str) -> bool:
    """True for a base58check tron address with version byte 0x41."""
    if _TRON.fullmatch(address) is None:
        return False
    return _tron_checksum_ok(address)


@lru_cache(maxsize=65536)  # as for evm: recurring wallets skip the base58 arithmetic
def _tron_checksum_ok(address: str) -> bool:
    try:
        raw = base58.b58decode_check(address)
    except ValueError:
        return False
    return len(raw) == 21 and raw[0] == _TRON_VERSION


def tron_from_bytes(payload20: bytes) -> str:
    """The tron address of a 20-byte account id (used to build examples and tests)."""
    return base58.b58encode_check(bytes([_TRON_VERSION]) + payload20).decode("ascii")


def is_valid(address: str, fmt: Format) -> bool:
    """True when *address* is valid for *fmt*."""
    if not has_clean_chars(address):
        return False
    if fmt == "evm":
        return is_evm(address)
    if fmt == "tron":
        return is_tron(address)
    return True


def key(address: str, fmt: Format) -> str:
    """The comparison key of an address already known valid for *fmt*."""
    return address.lower() if fmt == "evm" else address


def looks_evm(text: str) -> bool:
    """True when *text* is meant as an evm address (starts with ``0x``)."""
    return text[:2] in ("0x", "0X")


def looks_tron(text: str) -> bool:
    """True when *text* has the shape of a tron address (checksum not checked)."""
    return _TRON.fullmatch(text) is not None
