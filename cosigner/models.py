"""Domain types shared by every layer.  Imports nothing of cosigner's but errors.

A :class:`PendingItem` is what 1BitPay listed for the merchant to sign, kept as
the API sent it: the amount keeps its exact text (``"4.10"`` stays ``"4.10"``, a
JSON number keeps its literal), because the signed ``value`` must be that text.
Items are *not* validated here: a malformed item must still reach the policy so
it can be held with a reason (DESIGN section 2).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any


class JsonNumber(str):
    """The literal text of a JSON number with a fraction or exponent (``4.10``, ``1e3``).

    Used as ``parse_float`` so that no amount ever passes through a binary float.
    """

    __slots__ = ()


_EXACT = json.JSONDecoder(parse_float=JsonNumber)


def loads_exact(text: str | bytes) -> Any:
    """Parse JSON keeping non-integer numbers as :class:`JsonNumber` text."""
    return _EXACT.decode(_source(text))


def _source(text: str | bytes) -> str:
    """The JSON text, checked and decoded exactly as :func:`json.loads` does it."""
    if isinstance(text, str):
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return text
    if not isinstance(text, bytes | bytearray):
        raise TypeError(f"the JSON object must be str, bytes or bytearray, "
                        f"not {text.__class__.__name__}")
    return text.decode(json.detect_encoding(text), "surrogatepass")


class JsonObject(dict[str, Any]):
    """A JSON object as :func:`loads_checked` reads it: ``duplicate_keys`` names every key
    the text gave more than once (the dict holds the last value, as ``json`` does), and
    ``pairs`` keeps every key and value in order when there were duplicates."""

    duplicate_keys: tuple[str, ...] = ()
    pairs: tuple[tuple[str, Any], ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: dict[str, None] = {}
        for key, _ in pairs:
            if key in seen:
                repeated[key] = None
            seen.add(key)
        obj.duplicate_keys = tuple(repeated)
        obj.pairs = tuple(pairs)
    return obj


# Built once: json.loads with hooks builds a new decoder on every call.
_CHECKED = json.JSONDecoder(parse_float=JsonNumber, object_pairs_hook=_object)


def loads_checked(text: str | bytes) -> Any:
    """:func:`loads_exact` whose objects are :class:`JsonObject` and remember duplicate keys.

    A provider parsing first-wins would act on another item than one parsed
    last-wins, so a duplicate key must be seen, never silently resolved.
    """
    return _CHECKED.decode(_source(text))


def duplicate_keys(value: Any) -> tuple[str, ...]:
    """The keys given twice anywhere inside *value* (objects parsed by :func:`loads_checked`)."""
    found: list[str] = []
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            found.extend(getattr(current, "duplicate_keys", ()))
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return tuple(dict.fromkeys(found))


def dumps_exact(obj: Any) -> str:
    """Compact JSON that writes :class:`JsonNumber` back as the number it was.

    Decimals are written as strings in plain notation (money never becomes a float).
    """
    literals: list[str] = []
    tag = secrets.token_hex(8)  # so that no real string can look like a placeholder

    def swap(o: Any) -> Any:
        if isinstance(o, JsonNumber):
            literals.append(str(o))
            return f"\x00{tag}{len(literals) - 1}\x00"
        if isinstance(o, Decimal):
            return format(o, "f")
        if isinstance(o, Mapping):
            return {k: swap(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [swap(v) for v in o]
        return o

    text = json.dumps(swap(obj), separators=(",", ":"), ensure_ascii=False)
    if not literals:
        return text
    return re.sub(r'"\\u0000' + tag + r'(\d+)\\u0000"', lambda m: literals[int(m.group(1))], text)


class Action(enum.StrEnum):
    """The outcome of a decision (DESIGN section 2)."""

    APPROVE = "approve"
    REJECT = "reject"
    HOLD = "hold"

    @property
    def status(self) -> int | None:
        """The approve endpoint's ``status`` for this action (None: nothing is posted)."""
        return {Action.APPROVE: 1, Action.REJECT: 2}.get(self)


class Mode(enum.StrEnum):
    """How decisions are made: ``enforce`` posts them, ``shadow`` never posts anything."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class RecordState(enum.StrEnum):
    """The state of a journal decision record (DESIGN section 4)."""

    DECIDED = "decided"   # recorded; its post has not completed (or it is a hold)
    POSTED = "posted"     # the API accepted it (or said it was already processed)
    FAILED = "failed"     # the API refused it; re-posted while the item is listed
    GONE = "gone"         # outcome unknown, and the item has left the pending list
    SHADOW = "shadow"     # decided in shadow mode: never posted


class EventState(enum.StrEnum):
    """What happened to an item in a cycle (the daemon's events: demo table, tests)."""

    DECIDED = "decided"
    POSTED = "posted"
    FAILED = "failed"
    UNKNOWN = "unknown"
    MUTATED = "mutated"
    SHADOW = "shadow"
    PAUSED = "paused"
    GONE = "gone"


def amount_text(value: Any) -> str | None:
    """The exact text of an amount as the API sent it, or None when it is not text or number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):  # includes JsonNumber
        return str(value)
    if isinstance(value, int):
        return str(value)
    return None


@dataclass(frozen=True, slots=True)
class PendingItem:
    """One entry of ``/api/transaction/pending`` as received (unvalidated).

    ``raw`` is the item's JSON object; the typed accessors return None where the
    field is missing or of the wrong JSON type, so validation can say why.
    """

    raw: Mapping[str, Any]
    content_hash: str = field(init=False)
    duplicate_keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        dupes = duplicate_keys(self.raw)
        object.__setattr__(self, "duplicate_keys", dupes)
        object.__setattr__(self, "content_hash", item_content_hash(self.raw, dupes))

    @property
    def id(self) -> int | None:
        v = self.raw.get("id")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def from_address(self) -> str | None:
        v = self.raw.get("fromAddress")
        return v if isinstance(v, str) else None

    @property
    def to_address(self) -> str | None:
        v = self.raw.get("toAddress")
        return v if isinstance(v, str) else None

    @property
    def amount_text(self) -> str | None:
        return amount_text(self.raw.get("amount"))

    @property
    def amount(self) -> Decimal | None:
        """The amount as a Decimal, or None if it is not a finite decimal number."""
        text = self.amount_text
        if text is None:
            return None
        try:
            d = Decimal(text)
        except (InvalidOperation, ValueError):
            return None
        return d if d.is_finite() else None

    @property
    def chain_id(self) -> str | None:
        v = self.raw.get("chainId")
        if isinstance(v, str):
            return v
        return None

    def label(self) -> str:
        """A short identification for logs and errors (never a secret)."""
        return f"item {self.raw.get('id')!r}"


def item_content_hash(raw: Mapping[str, Any], dupes: tuple[str, ...] = ()) -> str:
    """sha256 of the item's canonical content (sorted keys, exact amount text).

    An item with duplicate keys hashes every pair in order, so it never hashes
    like the clean item its last values would make.
    """
    # JsonNumber is a str: a number and a string with the same text hash alike,
    # which is right, since the signed ``value`` is that text either way.
    content: Any = dict(raw)
    if dupes:
        content = {"duplicate_keys": list(dupes), "pairs": _pairs_of(raw)}
    return hashlib.sha256(_CANONICAL.encode(content).encode("utf-8")).hexdigest()


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
# would build on every call (one per listed item).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              default=str)


def _pairs_of(value: Any) -> Any:
    if isinstance(value, dict):
        pairs = getattr(value, "pairs", ()) or tuple(value.items())
        return [[k, _pairs_of(v)] for k, v in pairs]
    if isinstance(value, list):
        return [_pairs_of(v) for v in value]
    return value


#: Item ids the API can mean: positive and within a signed 64-bit integer.
MAX_ITEM_ID = 2**63 - 1


def valid_item_id(item_id: int | None) -> bool:
    """True for an id the journal can record and the API can mean (1 .. 2**63-1)."""
    return item_id is not None and 0 < item_id <= MAX_ITEM_ID


@dataclass(frozen=True, slots=True)
class PendingPage:
    """One page of ``/api/transaction/pending``."""

    page_num: int
    total: int
    items: list[PendingItem]
    malformed: int = 0  # list entries that were not JSON objects (nothing can be posted for them)


@dataclass(frozen=True, slots=True)
class PendingSnapshot:
    """Every page read into one list, deduplicated by id and capped at ``max_pending``."""

    items: list[PendingItem]
    total: int
    pages: int
    truncated: bool = False
    duplicates: int = 0
    malformed: int = 0
    ids: frozenset[int] = field(default_factory=frozenset)
    #: ids listed more than once with different content (a mutation: every copy is held)
    conflicts: frozenset[int] = field(default_factory=frozenset)
