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

import hashlib
import operator
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Final, Literal

import base58
import sha3

Format = Literal["evm", "tron", "other"]
FORMATS: Final[tuple[Format, ...]] = ("evm", "tron", "other")

MAX_ADDRESS_LENGTH: Final = 128

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
EVM_SHAPE = re.compile(r"0x[0-9a-fA-F]{40}")
TRON_SHAPE = re.compile(r"T[1-9A-HJ-NP-Za-km-z]{33}")
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_TRON_VERSION: Final = 0x41


def clean_chars(text: str) -> bool:
    """True when *text* is only printable ASCII (no space, control, zero-width, non-ASCII)."""
    return _PRINTABLE_ASCII.fullmatch(text) is not None


def has_clean_chars(text: str) -> bool:
    """True when *text* is 1..128 printable ASCII characters."""
    return len(text) <= MAX_ADDRESS_LENGTH and clean_chars(text)


# Bit masks over the 40 hex characters, as 160-bit numbers with bit 3 of each
# nibble set (computed with C-level bytes.translate and int parsing): "is an
# upper-case letter", "is a letter"; and bit 3 of each keccak nibble ("nibble >= 8").
_UPPER = bytes.maketrans(b"0123456789abcdefABCDEF", b"0000000000000000888888")
_LETTER = bytes.maketrans(b"0123456789abcdefABCDEF", b"0000000000888888888888")
_HIGH_BITS: Final = int("8" * 40, 16)


# Keccak-256 (Ethereum's hash; SHA3-256 pads differently and gives other digests) from
# safe-pysha3: the Keccak Code Package in C behind a hashlib-like object, ~0.7 us a hash
# from Python where pycryptodome's keccak took 4.7 us (1.6 us through its private C
# calls); a 100,000-address list pays it 75,000 times (docs/performance.md).
_KECCAK256: Final = sha3.keccak_256

#: Known answers, checked once at import: a hasher that disagrees is never used (the
#: import fails, so the daemon does not start).  The last one spans two blocks.
_KNOWN_ANSWERS: Final = (
    (b"", "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"),
    (b"abc", "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
    (b"5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
     "d385650ce8fdc6db7ee3a091d34814dbc4ce18219ffae52182efff4034d707e5"),
    (bytes(200), "e1bb54e1bc3af48d01e5dbfc81015c98152a574f6428c6948aa4837c9c0baad9"),
)


def _keccak256(data: bytes) -> bytes:
    digest: bytes = _KECCAK256(data).digest()
    return digest


def _check_known_answers() -> None:
    for message, expected in _KNOWN_ANSWERS:
        if _keccak256(message).hex() != expected:
            raise ImportError(f"keccak-256 of {message[:8]!r}... is not the known answer: "
                              f"the sha3 module installed is unusable")


_check_known_answers()


def _nibbles(hex_lower: str) -> str:
    return _keccak256(hex_lower.encode("ascii")).hex()[:40]


def eip55(address: str) -> str:
    """The EIP-55 checksummed spelling of a ``0x`` + 40 hex address."""
    hex_part = address[2:].lower()
    digest = _nibbles(hex_part)
    return "0x" + "".join(c.upper() if d in "89abcdef" else c
                          for c, d in zip(hex_part, digest, strict=True))


def _checksum_matches(hex_part: str, digest: bytes) -> bool:
    """True when the letter case of 40 hex digits follows the keccak *digest* of their lowercase."""
    return _case_follows(hex_part.encode("ascii"), digest)


def _case_follows(raw: bytes, digest: bytes) -> bool:
    """:func:`_checksum_matches` on the ASCII bytes of the 40 hex digits: a digit is
    upper-case exactly when it is a letter whose keccak nibble is 8 or more."""
    high = int.from_bytes(digest[:20], "big") & _HIGH_BITS
    return int(raw.translate(_UPPER), 16) == high & int(raw.translate(_LETTER), 16)


@lru_cache(maxsize=65536)  # the same wallets recur in every poll; keccak is the costly part
def _checksum_ok(hex_part: str) -> bool:
    return _checksum_matches(hex_part, _keccak256(hex_part.lower().encode("ascii")))


def checksum_checker() -> Callable[[str], bool]:
    """A function telling whether 40 hex digits carry a valid EIP-55 checksum (False for others).

    For checking many addresses at once (a list file): no cache (a big list would
    only flush the evaluation's).
    """
    keccak256 = _KECCAK256

    def check(hex_part: str) -> bool:
        if _HEX40.fullmatch(hex_part) is None:  # total, like everything here
            return False
        raw = hex_part.encode("ascii")
        digest: bytes = keccak256(raw.lower()).digest()
        return _case_follows(raw, digest)

    return check


def evm_validator(checksum_ok: Callable[[str], bool]) -> Callable[[str], bool]:
    """The definition of a well-formed evm address (EIP-55 checksum checked when in mixed
    case), with the checksum test given: cached for evaluation (:func:`is_evm`), a
    :func:`checksum_checker` for a big list file."""
    shape = EVM_SHAPE.fullmatch

    def valid(address: str) -> bool:
        if shape(address) is None:
            return False
        hex_part = address[2:]
        if hex_part.islower() or hex_part.isupper() or hex_part.isdigit():
            return True
        return checksum_ok(hex_part)

    return valid


#: True for a well-formed evm address (EIP-55 checksum checked when in mixed case).
is_evm: Final = evm_validator(_checksum_ok)


def tron_validator(checksum_ok: Callable[[str], bool]) -> Callable[[str], bool]:
    """The definition of a tron address (base58check, version byte 0x41), with the checksum
    test given: cached for evaluation (:func:`is_tron`), uncached for a list file."""
    shape = TRON_SHAPE.fullmatch

    def valid(address: str) -> bool:
        return shape(address) is not None and checksum_ok(address)

    return valid


@lru_cache(maxsize=65536)  # as for evm: recurring wallets skip the base58 arithmetic
def _tron_checksum_ok(address: str) -> bool:
    return tron_checksum_ok(address)


#: True for a base58check tron address with version byte 0x41.
is_tron: Final = tron_validator(_tron_checksum_ok)


_B58_ALPHABET: Final = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_DIGITS: Final = bytes.maketrans(_B58_ALPHABET, bytes(range(58)))
_B58_WEIGHTS: Final = tuple(58 ** (33 - i) for i in range(34))


def tron_checksum_ok(address: str) -> bool:
    """True for a base58check tron address with version byte 0x41 (no cache).

    After the shape check, the 34 digits decode to 25 bytes: version 0x41, the
    20-byte account, and the first 4 bytes of sha256(sha256(version + account)).
    The same verdict as ``base58.b58decode_check`` plus the version check,
    without its per-digit Python loop.
    """
    if TRON_SHAPE.fullmatch(address) is None:
        return False
    number: int = sum(map(operator.mul, address.encode("ascii").translate(_B58_DIGITS),
                     _B58_WEIGHTS))
    if number >> 192 != _TRON_VERSION:  # not exactly 25 bytes starting with 0x41
        return False
    raw = number.to_bytes(25, "big")
    return hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]


def list_entry_key(entry: str) -> tuple[Format, str] | None:
    """``(format, comparison key)`` of a list-file entry that is a valid evm or tron
    address, None for anything else (the loader then classifies it, errors included).

    The same verdicts as ``is_evm`` / ``is_tron`` and :func:`key` (a test checks it),
    in one call and without caches (a big list file's entries would only flush them):
    what ``evm_validator(checksum_checker())`` and ``tron_validator(tron_checksum_ok)``
    do, with the evm shape checked once.  :func:`list_verdicts` calls it for the entries
    its bulk checks do not vouch for.
    """
    if EVM_SHAPE.fullmatch(entry) is not None:
        hex_part = entry[2:]
        lower = hex_part.lower()
        if lower == hex_part or hex_part.isupper() or hex_part.isdigit() or _case_follows(
                hex_part.encode("ascii"), _KECCAK256(lower.encode("ascii")).digest()):
            return "evm", "0x" + lower
        return None
    if tron_checksum_ok(entry):
        return "tron", entry
    return None


#: :func:`list_entry_verdict`'s answers: a valid evm address, a valid tron one, neither.
VERDICTS: Final = b"et-"


def list_entry_verdict(entry: str) -> bytes:
    """:func:`list_entry_key` as one byte of :data:`VERDICTS` (what a forked checker
    sends back: the key is the entry itself, lower-cased for evm)."""
    found = list_entry_key(entry)
    if found is None:
        return b"-"
    return b"e" if found[0] == "evm" else b"t"


#: How many entries of one format a bulk check takes at once (a failed bulk check
#: costs this many one-by-one checks).
BULK: Final = 256
_EVM_LINES = re.compile(r"(?:0x[0-9a-fA-F]{40}\n)*")
_TRON_LINES = re.compile(r"(?:T[1-9A-HJ-NP-Za-km-z]{33}\n)*")
#: Bytes of one tron address in the bulk decode: version byte, 20-byte account, checksum.
_LANE: Final = 25


def list_verdicts(entries: Sequence[str]) -> bytes:
    """``b"".join(map(list_entry_verdict, entries))``, for the entries of a big list file.

    The same verdicts, checked :data:`BULK` entries of one format at a time with
    arithmetic over all of them at once (C-level string, bytes and integer work in
    place of a Python call per entry): :func:`_evm_bulk` and :func:`_tron_bulk` only
    ever answer "every entry of this group is valid", and that answer is exact (each
    entry's own check holds).  A group they do not vouch for, and every entry of
    another shape, gets :func:`list_entry_verdict` one by one.  ~1.7x faster for a
    file of valid entries (docs/performance.md); tests pin it to the one-by-one verdicts.
    """
    out = bytearray(b"-" * len(entries))
    evm = [i for i, entry in enumerate(entries) if entry[:2] == "0x"]
    tron = [i for i, entry in enumerate(entries) if entry[:1] == "T"]
    for at, bulk, verdict in ((evm, _evm_bulk, 101), (tron, _tron_bulk, 116)):
        for start in range(0, len(at), BULK):
            group = at[start:start + BULK]
            members = [entries[i] for i in group]
            if bulk(members):
                for i in group:
                    out[i] = verdict
            else:
                for i, entry in zip(group, members, strict=True):
                    out[i] = list_entry_verdict(entry)[0]
    for i, entry in enumerate(entries):  # the rest (neither prefix): anything at all
        if entry[:2] != "0x" and entry[:1] != "T":
            out[i] = list_entry_verdict(entry)[0]
    return bytes(out)


def _evm_bulk(entries: Sequence[str]) -> bool:
    """True only when every entry is a valid evm address: ``0x`` + 40 hex digits, each
    all lower-case or carrying its EIP-55 checksum.

    The checksum test of :func:`_case_follows` on all of them at once: the 40 hex digits
    of entry *k* are digits ``40k..40k+39`` of one long number, so "upper-case exactly
    where a letter's keccak nibble is 8 or more" holds for the whole number exactly when
    it holds for each entry (the masks are bitwise: no entry's bits reach another's).
    """
    count = len(entries)
    text = "\n".join(entries) + "\n"
    if len(text) != 43 * count or _EVM_LINES.fullmatch(text) is None:
        return False  # exactly `count` lines of 0x + 40 hex digits, or not vouched for
    # Every "x" is a prefix's, right after its "0": removing "0x" leaves the digits.
    digits = "".join(entries).replace("0x", "")
    lower = digits.lower()
    if lower == digits:
        return True  # no upper-case letter: valid without a checksum
    raw = digits.encode("ascii")
    hashed = lower.encode("ascii")
    keccak = _KECCAK256
    high = int.from_bytes(b"".join([keccak(hashed[k:k + 40]).digest()[:20]
                                    for k in range(0, 40 * count, 40)]), "big")
    high &= int("8" * (40 * count), 16)
    return int(raw.translate(_UPPER), 16) == high & int(raw.translate(_LETTER), 16)


def _tron_bulk(entries: Sequence[str]) -> bool:
    """True only when every entry is a valid tron address (:func:`tron_checksum_ok`).

    The base58 decoding of all of them at once: entry *k* is a 25-byte lane of one long
    number, built by Horner's rule over the 34 digit columns (``acc * 58 + column``);
    a lane never overflows into the next (58**34 < 2**200), so each lane ends up
    holding exactly its entry's number.  Then each lane's version byte and checksum.
    """
    count = len(entries)
    text = "\n".join(entries) + "\n"
    if len(text) != 35 * count or _TRON_LINES.fullmatch(text) is None:
        return False
    digits = "".join(entries).encode("ascii").translate(_B58_DIGITS)
    number = 0
    lane = bytearray(_LANE * count)
    for column in range(34):
        lane[_LANE - 1::_LANE] = digits[column::34]
        number = number * 58 + int.from_bytes(lane, "big")
    raw = number.to_bytes(_LANE * count, "big")
    if raw[::_LANE] != bytes([_TRON_VERSION]) * count:
        return False  # a lane whose number is not 25 bytes starting with 0x41
    sha256 = hashlib.sha256
    return all([sha256(sha256(raw[k:k + 21]).digest()).digest()[:4] == raw[k + 21:k + 25]
                for k in range(0, _LANE * count, _LANE)])


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
    return TRON_SHAPE.fullmatch(text) is not None
