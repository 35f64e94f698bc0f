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


def loads_exact(text: str | bytes) -> Any:
    """Parse JSON keeping non-integer numbers as :class:`JsonNumber` text."""
    return json.loads(text, parse_float=JsonNumber)


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_hash", item_content_hash(self.raw))

    @classmethod
    def from_fields(cls, id: int, fromAddress: str, toAddress: str, amount: str,
                    chainId: str) -> PendingItem:
        """Build an item the way the API would list it (tests, sandbox, demo)."""
        return cls({"id": id, "fromAddress": fromAddress, "toAddress": toAddress,
                    "amount": amount, "chainId": chainId})

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


def item_content_hash(raw: Mapping[str, Any]) -> str:
    """sha256 of the item's canonical content (sorted keys, exact amount text)."""
    # JsonNumber is a str: a number and a string with the same text hash alike,
    # which is right, since the signed ``value`` is that text either way.
    canonical = json.dumps(dict(raw), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
