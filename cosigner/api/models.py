"""Typed answers of the 1BitPay API.  Amounts are Decimal and keep the text sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from cosigner.models import PendingItem


@dataclass(frozen=True, slots=True)
class Rate:
    """``/api/otc/rate``: the latest buy and sell rates of a currency pair."""

    crypto: str
    legal: str
    buy_rate: Decimal
    sell_rate: Decimal
    buy_rate_text: str
    sell_rate_text: str


@dataclass(frozen=True, slots=True)
class CreatedOrder:
    """``/api/otc/create``: where the user pays, and whether the order is new."""

    url: str
    is_new: bool
    order_no: str


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
