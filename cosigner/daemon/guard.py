"""The policy's limits as the journal re-checks them inside its write transaction.

The daemon's in-memory :class:`~cosigner.policy.ledger.Ledger` is a cache for
fast evaluation; the journal is the authority.  :class:`PolicyLimitGuard`
implements :class:`cosigner.store.base.LimitGuard`: given the enforced
approvals the journal holds (read in the same transaction that will record the
batch) and the batch's approvals, it names every approval that would push a
limit over its maximum.  Pure: no I/O, ``now`` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from cosigner.models import Action
from cosigner.policy import addresses
from cosigner.policy.engine import limit_check
from cosigner.policy.ledger import Approval, Ledger
from cosigner.policy.model import CompiledPolicy, Limit
from cosigner.store.base import ENFORCE, ApprovalRow, NewDecision


class PolicyLimitGuard:
    """Re-checks the limits of ``policy`` against the journal's own approvals."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self._window = max((lim.window for lim in policy.limits), default=timedelta(0))

    def __repr__(self) -> str:
        return f"PolicyLimitGuard({self.policy.name!r}, limits={len(self.policy.limits)})"

    @property
    def window(self) -> timedelta:
        """The longest limit window (0 when the policy has no limits)."""
        return self._window

    def violations(self, history: Sequence[ApprovalRow], approvals: Sequence[NewDecision],
                   now: datetime) -> dict[int, str]:
        """Item id -> ``limit:<name>`` for each approval that would break a limit.

        Each approval counts toward the ones after it (as the batch would be
        recorded).  An approval whose amount is not a finite positive decimal is
        refused as ``limit:invalid_amount`` (it can never count correctly).
        """
        candidates = [d for d in approvals if d.action is Action.APPROVE and d.mode == ENFORCE]
        if not candidates or not self.policy.limits:
            return {}
        ledger = Ledger(self.policy, (_approval(r.chain_id, r.from_address, r.to_address,
                                                r.amount_text, r.created_at) for r in history))
        refused: dict[int, str] = {}
        for decision in candidates:
            chain_id, source, dest = (decision.chain_id or "", decision.from_address or "",
                                      decision.to_address or "")
            try:
                approval = _approval(chain_id, source, dest, decision.amount_text or "", now)
            except ValueError:
                refused[decision.item_id] = "limit:invalid_amount"
                continue
            broken = self._first_broken(ledger, approval, now)
            if broken is not None:
                refused[decision.item_id] = f"limit:{broken.name}"
                continue
            ledger.add(approval)
        return refused

    def _first_broken(self, ledger: Ledger, approval: Approval, now: datetime) -> Limit | None:
        chain = self.policy.chains.get(approval.chain_id)
        fmt = chain.address if chain is not None else "other"
        to_key = addresses.key(approval.to_address, fmt)
        from_key = addresses.key(approval.from_address, fmt)
        for limit in self.policy.limits:
            if not limit.scope.holds(approval.chain_id, fmt, to_key, from_key):
                continue
            # The evaluation's own limit arithmetic (one definition).
            if limit_check(limit, approval.chain_id, to_key, from_key, approval.amount,
                           ledger, now).would_exceed:
                return limit
        return None


def _approval(chain_id: str, source: str, dest: str, amount_text: str,
              at: datetime) -> Approval:
    try:
        amount = Decimal(amount_text)
    except InvalidOperation:
        raise ValueError(f"amount {amount_text!r} is not a decimal") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"amount {amount_text!r} is not a finite positive decimal")
    return Approval(chain_id, source, dest, amount, at)
