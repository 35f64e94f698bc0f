"""The intersection of the policy in force and a pending one (DESIGN section 11).  Pure."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cosigner.models import Action
from cosigner.policy import Approval, Decision, Ledger, evaluate, load_policy
from cosigner.policy.governance import (
    PENDING_REASON,
    UNKNOWN_DECISION,
    Pending,
    intersect,
    pending_for,
)
from tests.policy.conftest import BAD, CUSTOMER, HEADER, NOW, TREASURY, item

OLD = HEADER + f"""\
lists:
  treasury: ["{TREASURY}"]
limits:
  - {{name: daily, chain: "56", window: 24h, max_amount: "100", per: chain}}
rules:
  - {{name: sweeps, to: {{in: [treasury]}}, action: approve}}
"""
# Loosens (a new allowlisted address, a higher limit) and tightens (a sanctioned address).
NEW = HEADER + f"""\
lists:
  treasury: ["{TREASURY}", "{CUSTOMER}"]
  sanctioned: ["{BAD}"]
limits:
  - {{name: daily, chain: "56", window: 24h, max_amount: "1000", per: chain}}
rules:
  - {{name: block, to: {{in: [sanctioned]}}, action: reject}}
  - {{name: sweeps, to: {{in: [treasury]}}, action: approve}}
"""

A = Action


def decision(action: Action, rule: str = "r") -> Decision:
    return Decision(action, rule, (f"rule:{rule}",))


class TestIntersect:
    """approve only if both approve, reject if either rejects, else hold."""

    @pytest.mark.parametrize(("current", "candidate"),
                             list(itertools.product(list(Action), repeat=2)))
    def test_truth_table(self, current: Action, candidate: Action) -> None:
        """Every pair of actions."""
        result = intersect(decision(current, "old"), decision(candidate, "new")).action
        if A.REJECT in (current, candidate):
            assert result is A.REJECT
        elif current is candidate is A.APPROVE:
            assert result is A.APPROVE
        else:
            assert result is A.HOLD

    def test_a_held_loosening_says_it_is_pending(self) -> None:
        """When the candidate alone would approve, the hold names policy_pending."""
        result = intersect(decision(A.HOLD, "<default>"), decision(A.APPROVE, "new"))
        assert result.rule == "<default>"
        assert PENDING_REASON in result.reasons

    def test_a_tightening_is_the_candidates_own_decision(self) -> None:
        """A new reject rule applies at once, with its own rule and reasons."""
        result = intersect(decision(A.APPROVE, "old"), decision(A.REJECT, "block"))
        assert (result.action, result.rule, result.reasons) == (A.REJECT, "block",
                                                                ("rule:block",))

    def test_unknown_previous_holds_every_approval(self) -> None:
        """After a restart during the delay only the candidate's refusals apply."""
        assert intersect(UNKNOWN_DECISION, decision(A.APPROVE)).action is A.HOLD
        assert intersect(UNKNOWN_DECISION, decision(A.REJECT)).action is A.REJECT


class TestPending:
    """A pending bundle evaluated with both policies' rules and limits."""

    @pytest.fixture
    def both(self, write: Callable[..., Path]) -> tuple[Pending, Ledger]:
        old = load_policy(write(OLD, "old.yaml"))
        new = load_policy(write(NEW, "new.yaml"))
        pending = pending_for(new, Ledger(new), NOW, timedelta(hours=24), NOW)
        assert pending is not None
        self.old = old
        return pending, Ledger(old)

    def test_new_allowlisted_address_is_held(self, both: tuple[Pending, Ledger]) -> None:
        """CUSTOMER is only allowlisted by the pending bundle: hold, policy_pending."""
        pending, ledger = both
        result = pending.evaluate(self.old, ledger, item(to=CUSTOMER), NOW)
        assert result.action is A.HOLD
        assert PENDING_REASON in result.reasons

    def test_new_sanctioned_address_is_rejected(self, both: tuple[Pending, Ledger]) -> None:
        """BAD is sanctioned by the pending bundle: rejected at once."""
        pending, ledger = both
        assert pending.evaluate(self.old, ledger, item(to=BAD), NOW).action is A.REJECT

    def test_the_lower_limit_of_the_two_holds(self, both: tuple[Pending, Ledger]) -> None:
        """The old daily limit (100) still holds though the new one allows 1000."""
        pending, ledger = both
        assert pending.evaluate(self.old, ledger, item(to=TREASURY, amount="60"),
                                NOW).action is A.APPROVE
        approval = Approval("56", item().from_address or "", TREASURY,
                            Decimal("60"), NOW)
        ledger.add(approval)
        pending.add_approval(approval, ledger)
        result = pending.evaluate(self.old, ledger, item(to=TREASURY, amount="60"), NOW)
        assert result.action is A.HOLD
        assert "limit:daily" in result.reasons
        # the new policy alone would still approve it
        assert evaluate(pending.policy, item(to=TREASURY, amount="60"), pending.ledger,
                        NOW).action is A.APPROVE

    def test_due_and_recorded_digests(self, both: tuple[Pending, Ledger]) -> None:
        """Due exactly at first seen + delay; records name both digests."""
        pending, _ = both
        assert not pending.due(NOW + timedelta(hours=24) - timedelta(microseconds=1))
        assert pending.due(NOW + timedelta(hours=24))
        assert pending.recorded_sha256(self.old) == f"{self.old.sha256}+{pending.policy.sha256}"
        assert pending_for(pending.policy, pending.ledger, NOW - timedelta(hours=25),
                           timedelta(hours=24), NOW) is None


class TestStatusHelpers:
    """What `cosigner status` shows of a pending bundle, from the daemon's metrics."""

    def test_pending_from_metrics(self) -> None:
        """The digest and the activation time, or none."""
        from cosigner.daemon.governed import pending_from_metrics, pending_line
        assert pending_from_metrics(None, 0.0) is None
        assert pending_line(None) == "policy change: none pending"
        report = pending_from_metrics({"sha256": "ab" * 32}, 86400.0)
        assert report == {"sha256": "ab" * 32, "takes_effect": "1970-01-02T00:00:00+00:00"}
        assert pending_line(report).startswith("policy change: PENDING abababababab, takes "
                                               "effect 1970-01-02T00:00:00+00:00")
