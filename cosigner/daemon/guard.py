"""The policy's limits as the journal re-checks them inside its write transaction.

The daemon's in-memory :class:`~cosigner.policy.ledger.Ledger` is a cache for
fast evaluation; the journal is the authority.  :class:`PolicyLimitGuard`
implements :class:`cosigner.store.base.LimitGuard`: given the enforced
approvals the journal holds (read in the same transaction that will record the
batch) and the batch's approvals, it names every approval that would push a
limit over its maximum.  No I/O, ``now`` passed in.

A guard kept from one batch to the next counts only the history rows it has not
seen yet: the journal hands back the same row objects, in order, with new ones
appended, so the guard finds the last row it counted (by identity) and adds what
follows it.  When it cannot find it (another journal, a window read afresh), it
counts the whole history again.  The batch itself is counted in a ledger of its
own, stacked on the history's, so a refused or rolled-back batch leaves nothing
behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from cosigner.models import Action
from cosigner.policy import addresses
from cosigner.policy.engine import limit_exceeded
from cosigner.policy.ledger import Approval, Ledger, Stacked, Usage
from cosigner.policy.model import CompiledPolicy, Limit
from cosigner.store.base import ENFORCE, ApprovalRow, NewDecision


class PolicyLimitGuard:
    """Re-checks the limits of ``policy`` against the journal's own approvals."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self._window = max((lim.window for lim in policy.limits), default=timedelta(0))
        self._history: Ledger | None = None  # the history rows counted so far ...
        self._last: ApprovalRow | None = None  # ... the last of which is this one

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
        batch = Ledger(self.policy)
        ledger = Stacked(self._counted(history), batch)
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
            batch.add(approval)
        return refused

    def _counted(self, history: Sequence[ApprovalRow]) -> Ledger:
        """The ledger of ``history``: the one kept, grown by the rows after the last one it
        counted, or a new one when that row is not in ``history``."""
        start = self._resume_at(history)
        if self._history is None or start is None:
            self._history, start = Ledger(self.policy), 0
        ledger = self._history
        try:
            for row in history[start:]:
                ledger.add(_approval(row.chain_id, row.from_address, row.to_address,
                                     row.amount_text, row.created_at))
        except BaseException:
            self._history = self._last = None  # half counted: start afresh next time
            raise
        self._last = history[-1] if history else None
        return ledger

    def _resume_at(self, history: Sequence[ApprovalRow]) -> int | None:
        """The index after the last row counted, or None when it is not in ``history``."""
        last = self._last
        if last is None:
            return None
        for index in range(len(history) - 1, -1, -1):
            if history[index] is last:
                return index + 1
        return None

    def _first_broken(self, ledger: Usage, approval: Approval, now: datetime) -> Limit | None:
        chain_id = approval.chain_id
        chain = self.policy.chains.get(chain_id)
        fmt = chain.address if chain is not None else "other"
        to_key = addresses.key(approval.to_address, fmt)
        from_key = addresses.key(approval.from_address, fmt)
        for limit in self.policy.limits:
            if not limit.scope.holds(chain_id, fmt, to_key, from_key):
                continue
            # The evaluation's own limit arithmetic (one definition), as limit_check does it.
            used_amount, used_count = ledger.usage(
                limit.name, limit.bucket(chain_id, to_key, from_key), now)
            if limit_exceeded(limit, used_amount, used_count, approval.amount):
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


class BothLimits:
    """The limits of two policies at once (the policy in force and a pending bundle,
    DESIGN section 11): an approval is refused when either guard refuses it."""

    def __init__(self, first: PolicyLimitGuard, second: PolicyLimitGuard) -> None:
        self.guards = (first, second)

    def __repr__(self) -> str:
        return f"BothLimits{self.guards!r}"

    @property
    def window(self) -> timedelta:
        """The longer of the two windows."""
        return max(guard.window for guard in self.guards)

    def violations(self, history: Sequence[ApprovalRow], approvals: Sequence[NewDecision],
                   now: datetime) -> dict[int, str]:
        """Every approval either policy's limits refuse (the first reason given wins)."""
        refused: dict[int, str] = {}
        for guard in self.guards:
            for item_id, reason in guard.violations(history, approvals, now).items():
                refused.setdefault(item_id, reason)
        return refused
