"""Typed answers of the 1BitPay API.  Amounts are Decimal and keep the text sent.

The pending list's types are domain types (:mod:`cosigner.models`), re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cosigner.models import PendingPage, PendingSnapshot

__all__ = ["CreatedOrder", "PendingPage", "PendingSnapshot", "Rate"]


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
