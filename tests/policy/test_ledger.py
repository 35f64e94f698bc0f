"""The ledger: rolling-window usage per (limit, bucket), ratios, compaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from cosigner.policy import Approval, CompiledPolicy, Ledger

from .conftest import CUSTOMER, HOT, NOW, item

BODY = """\
limits:
  - name: daily
    chain: "56"
    window: 24h
    max_amount: "1000"
    max_count: 10
  - name: per-to
    window: 1h
    max_count: 4
    per: to
"""


@pytest.fixture
def policy(compile_: Callable[..., CompiledPolicy]) -> CompiledPolicy:
    return compile_(BODY)


def at(minutes_ago: float, amount: str = "1", to: str = CUSTOMER) -> Approval:
    return Approval("56", HOT, to, Decimal(amount), NOW - timedelta(minutes=minutes_ago))


class TestLedger:
    def test_empty_usage(self, policy: CompiledPolicy) -> None:
        """A bucket with no approvals uses nothing."""
        assert Ledger(policy).usage("daily", "56", NOW) == (Decimal(0), 0)

    def test_usage_sums_window(self, policy: CompiledPolicy) -> None:
        """Usage adds the amounts and counts inside the window only."""
        ledger = Ledger(policy, [at(10, "1.5"), at(60 * 23, "2.25"), at(60 * 25, "100")])
        assert ledger.usage("daily", "56", NOW) == (Decimal("3.75"), 2)

    def test_unsorted_history(self, policy: CompiledPolicy) -> None:
        """Approvals added out of order are placed in time order."""
        ledger = Ledger(policy)
        for a in (at(5, "1"), at(50, "2"), at(1, "4"), at(30, "8")):
            ledger.add(a)
        assert ledger.usage("daily", "56", NOW) == (Decimal(15), 4)
        assert ledger.usage("daily", "56", NOW + timedelta(hours=24, minutes=-40)) == (
            Decimal(13), 3)

    def test_unknown_chain_approval(self, policy: CompiledPolicy) -> None:
        """An approval on a chain the policy no longer declares counts where its scope allows."""
        ledger = Ledger(policy, [Approval("9", "a", "b", Decimal(1), NOW)])
        assert ledger.usage("per-to", "9/b", NOW) == (Decimal(1), 1)
        assert ledger.usage("daily", "9", NOW) == (Decimal(0), 0)

    def test_ratios(self, policy: CompiledPolicy) -> None:
        """ratios gives each limit's highest used/max over its buckets."""
        ledger = Ledger(policy, [at(1, "500"), at(2, "1"), at(3, "1", to=HOT)])
        ratios = ledger.ratios(NOW)
        assert ratios == {"daily": pytest.approx(0.502), "per-to": pytest.approx(0.5)}
        assert Ledger(policy).ratios(NOW) == {"daily": 0.0, "per-to": 0.0}

    def test_compaction_keeps_window_exact(self, policy: CompiledPolicy) -> None:
        """Dropping old entries never changes usage inside the window."""
        ledger = Ledger(policy)
        for i in range(5000):
            ledger.add(Approval("56", HOT, CUSTOMER, Decimal("0.1"),
                                NOW + timedelta(minutes=i)))
        end = NOW + timedelta(minutes=4999)
        assert ledger.usage("daily", "56", end) == (Decimal("144.0"), 1440)
        assert ledger.usage("per-to", f"56/{CUSTOMER.lower()}", end) == (Decimal("6.0"), 60)

    def test_from_item(self) -> None:
        """Approval.from_item copies the item's fields."""
        a = Approval.from_item(item(amount="4.10"), NOW)
        assert (a.chain_id, a.amount, a.at) == ("56", Decimal("4.10"), NOW)

    def test_from_malformed_item(self) -> None:
        """A malformed item cannot become an approval."""
        with pytest.raises(ValueError, match="malformed"):
            Approval.from_item(item(amount=None), NOW)

    def test_unknown_limit(self, policy: CompiledPolicy) -> None:
        """Asking for a limit the policy does not have is a KeyError."""
        with pytest.raises(KeyError):
            Ledger(policy).usage("nope", "56", NOW)
