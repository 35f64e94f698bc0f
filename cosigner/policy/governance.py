"""Loosening waits, tightening does not (DESIGN section 11).  Pure.

While a new bundle is *pending* (``COSIGNER_POLICY_LOOSEN_DELAY`` has not
passed since its digest was first seen), every item is decided by the
**intersection** of the policy in force and the pending one
(:func:`intersect`): approve only if both approve within both policies'
limits, reject if either rejects, hold otherwise.  A new sanctioned address or a
lower limit therefore applies at once; a new allowlisted address or a higher
limit only after the delay.

Decisions made under the intersection record both digests in the journal's
``policy_sha256`` as ``"<in force>+<pending>"`` (:meth:`Pending.recorded_sha256`).

When the daemon starts on a bundle that is still within its delay it no longer
has the files of the policy that was in force; it then intersects with
*unknown*: the pending policy's rejections apply, every approval is held
(reason ``policy_pending``) until the bundle takes effect.  Stricter, never
looser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

from cosigner.models import Action, PendingItem
from cosigner.policy.engine import Decision, evaluate
from cosigner.policy.ledger import Approval, Ledger
from cosigner.policy.model import CompiledPolicy

PENDING_REASON: Final = "policy_pending"
UNKNOWN_RULE: Final = "<policy-pending>"
UNKNOWN_SHA256: Final = "unknown"



class PolicyMemory(Protocol):
    """Where the first sighting of each bundle digest is kept (the journal)."""

    def remember_policy(self, sha256: str, seen_at: datetime) -> datetime:
        """When the bundle with this digest was first seen (recording ``seen_at`` if never).

        Raises:
            StoreError: it cannot be read or written.
        """
        ...


def _merge(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*first, *second)))


def intersect(current: Decision, candidate: Decision) -> Decision:
    """The decision of the intersection of two policies' decisions on one item.

    Approve only if both approve (each already checked its own limits); reject
    if either rejects; hold otherwise.  When the result is stricter than what
    the candidate alone would do, ``policy_pending`` is among the reasons.
    """
    effects = (*current.limit_effects, *candidate.limit_effects)
    if Action.REJECT in (current.action, candidate.action):
        rejecting = candidate if candidate.action is Action.REJECT else current
        reasons = rejecting.reasons
        if candidate.action is not Action.REJECT:
            reasons = _merge(reasons, (PENDING_REASON,))
        return Decision(Action.REJECT, rejecting.rule, reasons, effects,
                        rejecting.invalid_reason)
    if current.action is Action.APPROVE and candidate.action is Action.APPROVE:
        return Decision(Action.APPROVE, candidate.rule,
                        _merge(candidate.reasons, current.reasons), effects)
    holding = candidate if candidate.action is Action.HOLD else current
    reasons = holding.reasons
    if candidate.action is not Action.HOLD:
        reasons = _merge(reasons, (PENDING_REASON,))
    return Decision(Action.HOLD, holding.rule, reasons, effects,
                    current.invalid_reason or candidate.invalid_reason)


#: What the unknown policy in force "decides" after a restart during the delay.
UNKNOWN_DECISION: Final = Decision(Action.HOLD, UNKNOWN_RULE, (PENDING_REASON,))


@dataclass
class Pending:
    """A bundle that is not yet in force alone, and when it will be.

    ``ledger`` counts the limits of ``policy`` (the same approvals as the
    ledger in force: every enforced approval, whichever policy made it).
    ``previous_known`` is False after a restart during the delay: the policy in
    force is then unknown and only the pending one's refusals are applied.
    """

    policy: CompiledPolicy
    ledger: Ledger
    first_seen: datetime
    activates_at: datetime
    previous_known: bool = True
    previous_sha256: str | None = None  # the digest in force, when its content is unknown

    def due(self, now: datetime) -> bool:
        """True when the delay has passed and the bundle takes effect alone."""
        return now >= self.activates_at

    def evaluate(self, current: CompiledPolicy, current_ledger: Ledger, item: PendingItem,
                 now: datetime) -> Decision:
        """The intersection's decision for *item* (pure; adds nothing to any ledger)."""
        candidate = evaluate(self.policy, item, self.ledger, now)
        if not self.previous_known:
            return intersect(UNKNOWN_DECISION, candidate)
        return intersect(evaluate(current, item, current_ledger, now), candidate)

    def add_approval(self, approval: Approval, current_ledger: Ledger) -> None:
        """Count an approval in the pending policy's limits too."""
        if self.ledger is not current_ledger:
            self.ledger.add(approval)

    def recorded_sha256(self, current: CompiledPolicy) -> str:
        """The journal's ``policy_sha256`` of a decision under the intersection."""
        old = current.sha256 if self.previous_known else (self.previous_sha256
                                                          or UNKNOWN_SHA256)
        return f"{old}+{self.policy.sha256}"


def pending_for(candidate: CompiledPolicy, ledger: Ledger, first_seen: datetime,
                delay: timedelta, now: datetime, *, previous_known: bool = True,
                previous_sha256: str | None = None) -> Pending | None:
    """The :class:`Pending` of *candidate*, or None when it is already due (in force alone)."""
    pending = Pending(candidate, ledger, first_seen, first_seen + delay, previous_known,
                      previous_sha256)
    return None if pending.due(now) else pending

