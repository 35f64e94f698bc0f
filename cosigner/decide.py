"""The whole per-item decision, in one pure function: :func:`decide`.

Why was item 42 approved?  Everything that answers it is here, in order, and
nowhere else (the daemon only does the I/O around it; ``policy explain`` and
``policy test`` call it and print its trace):

1. **unidentifiable**: no integer id -> hold, nothing recorded (there is no id to record).
2. **bad id**: an id <= 0 or >= 2**63 -> hold as invalid, nothing recorded.
3. **mutation**: the snapshot lists the id twice with different content, or the
   journal recorded other content under it -> hold every copy, never re-evaluated.
4. **recorded**: a recorded approve/reject whose post completed (``posted``) or that
   never posts (``shadow``) is skipped; otherwise (``decided``, ``failed``,
   ``gone``) the *recorded* decision is posted again, except in shadow mode (never
   posts) or while paused (the kill switch).
5. **duplicate key**: an item whose JSON repeats a key is malformed -> hold
   (``invalid:duplicate_key``), whatever the policy's ``on_invalid`` says: a reject
   would sign content the provider may read differently.
6. **policy**: validation, first matching rule, then the limits (:func:`evaluate`).
7. **pause**: an approve or reject decided while paused is recorded as a hold.
8. **unsignable**: a decision that would post but lacks one of the item's signed
   fields is a hold.
9. **unchanged hold**: a hold with the same reasons as the recorded one records nothing.
10. **new**: recorded; posted when not a hold and the mode is ``enforce``.

Refusals are values (an :class:`Outcome`); nothing here raises for what an item
contains, and nothing here reads the clock, a file or the network.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Final, Protocol

from cosigner.durations import format_duration
from cosigner.models import Action, Mode, PendingItem, RecordState, valid_item_id
from cosigner.policy.engine import (
    INVALID_RULE,
    Decision,
    LimitEffect,
    RuleCheck,
    evaluate,
    explain_rules,
    item_facts,
    limit_effect,
)
from cosigner.policy.governance import Pending
from cosigner.policy.ledger import Approval, Ledger
from cosigner.policy.model import CompiledPolicy

MUTATED_RULE: Final = "<mutated>"
ERROR_RULE: Final = "<error>"

#: States whose recorded approve/reject is never posted again.
_SETTLED: Final = frozenset({RecordState.POSTED, RecordState.SHADOW})


class Step(enum.StrEnum):
    """What the daemon does with the item (the I/O the outcome asks for)."""

    NEW = "new"                  # record a new decision (post it if ``post``)
    REPOST = "repost"            # post the recorded decision again
    SKIP = "skip"                # nothing to do: settled, or shadow mode
    UNCHANGED = "unchanged"      # the same hold as recorded: nothing to record
    PAUSED = "paused"            # a recorded decision waits for the pause to end
    MUTATION = "mutation"        # held, counted and alerted; nothing recorded
    UNRECORDABLE = "unrecordable"  # held; no usable id to record it under


class Recorded(Protocol):
    """What :func:`decide` reads of a recorded decision (a journal ``DecisionRecord``)."""

    @property
    def action(self) -> Action: ...
    @property
    def rule(self) -> str: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...
    @property
    def state(self) -> RecordState: ...


class History(Protocol):
    """What the journal knows of an id (a journal ``ItemView``)."""

    @property
    def first_content_hash(self) -> str: ...
    @property
    def latest(self) -> Recorded | None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision for one item and what to do about it, with the trace that explains it.

    ``action``/``rule``/``reasons`` are the decision (a re-post's are the recorded
    ones).  ``approval`` is what the limits must count when the outcome is recorded.
    """

    step: Step
    action: Action
    rule: str
    reasons: tuple[str, ...]
    trace: tuple[str, ...]
    post: bool = False
    decision: Decision | None = None
    invalid_reason: str | None = None
    approval: Approval | None = None
    recorded: Recorded | None = field(default=None, repr=False)

    @property
    def limit_effects(self) -> tuple[LimitEffect, ...]:
        return self.decision.limit_effects if self.decision is not None else ()

    def as_json(self) -> dict[str, object]:
        """The outcome as ``policy explain --json`` prints it."""
        return {"action": self.action.value, "rule": self.rule, "reasons": list(self.reasons),
                "step": self.step.value, "post": self.post,
                "invalid": self.invalid_reason,
                "limits": [_effect_json(e) for e in self.limit_effects],
                "trace": list(self.trace)}


def _effect_json(effect: LimitEffect) -> dict[str, object]:
    return {"limit": effect.limit, "bucket": effect.bucket,
            "used_amount": str(effect.used_amount), "used_count": effect.used_count,
            "max_amount": None if effect.max_amount is None else str(effect.max_amount),
            "max_count": effect.max_count, "would_exceed": effect.would_exceed}


def _hold(step: Step, rule: str, reasons: tuple[str, ...], trace: list[str],
          invalid: str | None = None) -> Outcome:
    trace.append(f"decision: hold ({', '.join(reasons)})")
    return Outcome(step, Action.HOLD, rule, reasons, tuple(trace), invalid_reason=invalid)


@lru_cache(maxsize=8)  # one line per chunk (same policy, mode and clock reading), not per item
def _header(name: str, sha256: str, mode: Mode, paused: bool, now: datetime,
            zone: tzinfo | None) -> str:
    # ``zone`` is part of the key: equal instants in two zones print differently.
    return (f"policy {name} ({sha256[:12]}), mode {mode.value}"
            f"{', paused' if paused else ''}, now {now.isoformat()}")


def decide(item: PendingItem, history: History | None, policy: CompiledPolicy, ledger: Ledger,
           now: datetime, *, paused: bool = False, mode: Mode = Mode.ENFORCE,
           conflicting: bool = False, explain: bool = False,
           pending: Pending | None = None) -> Outcome:
    """Decide *item* (see the module docstring for the order of the steps).

    *history* is what the journal recorded under the item's id (None: never seen);
    *conflicting* says the snapshot listed the id again with other content;
    *explain* adds every rule and limit tried to the trace (``policy explain``),
    which the daemon leaves out for speed.  While a signed bundle is *pending*
    (DESIGN section 11), step 6 is the intersection of *policy* and the pending one
    (:meth:`Pending.evaluate`).  The ledger is read, never changed: the
    caller counts ``outcome.approval`` once the outcome is recorded.
    """
    trace: list[str] = [_header(policy.name, policy.sha256, mode, paused, now, now.tzinfo)]
    item_id = item.id
    if item_id is None:
        trace.append("item: no integer id")
        return _hold(Step.UNRECORDABLE, INVALID_RULE, ("invalid:missing_field",), trace,
                     "missing_field")
    if not valid_item_id(item_id):
        trace.append(f"item {item_id}: id out of range (1 .. 2**63-1)")
        return _hold(Step.UNRECORDABLE, INVALID_RULE, ("invalid:bad_id",), trace, "bad_id")
    if conflicting:
        trace.append(f"item {item_id}: listed again in the same snapshot with other content")
        return _hold(Step.MUTATION, MUTATED_RULE, ("mutation",), trace)
    latest = history.latest if history is not None else None
    if history is not None:
        if history.first_content_hash != item.content_hash:
            trace.append(f"item {item_id}: content differs from the recorded "
                         f"{history.first_content_hash[:12]}")
            return _hold(Step.MUTATION, MUTATED_RULE, ("mutation",), trace)
        if latest is not None and latest.action is not Action.HOLD:
            return _recorded(latest, trace, paused=paused, mode=mode)
    if item.duplicate_keys:
        trace.append(f"item {item_id}: duplicate key(s) {', '.join(item.duplicate_keys)}")
        outcome = _hold(Step.NEW, INVALID_RULE, ("invalid:duplicate_key",), trace,
                        "duplicate_key")
        return _unchanged(outcome, latest)
    return _unchanged(_evaluate(item, policy, ledger, now, paused=paused, mode=mode,
                                trace=trace, explain=explain, pending=pending), latest)


def _recorded(latest: Recorded, trace: list[str], *, paused: bool, mode: Mode) -> Outcome:
    what = f"recorded {latest.action.value} (rule {latest.rule}), state {latest.state}"
    common = (latest.action, latest.rule, tuple(latest.reasons))
    if latest.state in _SETTLED:
        trace.append(f"{what}: settled, nothing to do")
        return Outcome(Step.SKIP, *common, tuple(trace), recorded=latest)
    if mode is Mode.SHADOW:
        trace.append(f"{what}: shadow mode posts nothing")
        return Outcome(Step.SKIP, *common, tuple(trace), recorded=latest)
    if paused:
        trace.append(f"{what}: paused, posted once the pause ends")
        return Outcome(Step.PAUSED, *common, tuple(trace), recorded=latest)
    trace.append(f"{what}: post the recorded decision again")
    return Outcome(Step.REPOST, *common, tuple(trace), post=True, recorded=latest)


def _unchanged(outcome: Outcome, latest: Recorded | None) -> Outcome:
    if (latest is not None and outcome.action is Action.HOLD
            and tuple(latest.reasons) == outcome.reasons):
        return replace(outcome, step=Step.UNCHANGED,
                       trace=(*outcome.trace, "same hold as recorded: nothing new to record"))
    return outcome


def _evaluate(item: PendingItem, policy: CompiledPolicy, ledger: Ledger, now: datetime, *,
              paused: bool, mode: Mode, trace: list[str], explain: bool,
              pending: Pending | None = None) -> Outcome:
    try:
        if pending is None:
            decision = evaluate(policy, item, ledger, now)
        else:
            decision = pending.evaluate(policy, ledger, item, now)
            trace.append(f"pending bundle {pending.policy.sha256[:12]} (takes effect "
                         f"{pending.activates_at.isoformat()}): the intersection decides")
    except Exception as exc:  # evaluate is total over item content; belt and braces
        trace.append(f"policy evaluation failed: {type(exc).__name__}")
        return _hold(Step.NEW, ERROR_RULE, (f"error:{type(exc).__name__}",), trace)
    if explain:
        trace.extend(_policy_trace(item, policy, ledger, now))
    action, reasons = decision.action, decision.reasons
    if action is not Action.HOLD and paused:
        action, reasons = Action.HOLD, (*reasons, "paused")
        trace.append("paused: the decision is recorded as a hold")
    if action is not Action.HOLD and None in (item.from_address, item.to_address,
                                              item.amount_text, item.chain_id):
        action, reasons = Action.HOLD, (*reasons, "unsignable")
        trace.append("a field the signature needs is missing: hold")
    approval = None
    if action is Action.APPROVE:
        approval = Approval.from_item(item, now)
    trace.append(f"decision: {action.value} (rule {decision.rule}; {', '.join(reasons)})")
    return Outcome(Step.NEW, action, decision.rule, tuple(reasons), tuple(trace),
                   post=action is not Action.HOLD and mode is Mode.ENFORCE,
                   decision=decision, invalid_reason=decision.invalid_reason,
                   approval=approval)


def _policy_trace(item: PendingItem, policy: CompiledPolicy, ledger: Ledger,
                  now: datetime) -> list[str]:
    """Every rule and limit tried, with the conditions' own words for why not."""
    checks: Sequence[RuleCheck] | str = explain_rules(policy, item, now)
    if isinstance(checks, str):
        return [f"invalid item: {checks} -> on_invalid {policy.on_invalid.value}"]
    lines = []
    matched = False
    for check in checks:
        rule = check.rule
        if check.why_not is None:
            lines.append(f"rule {rule.name} (line {rule.line}): MATCH -> {rule.action.value}")
            matched = True
            break
        lines.append(f"rule {rule.name} (line {rule.line}): no match: {check.why_not}")
    if not matched:
        lines.append(f"no rule matched -> default {policy.default.value}")
    facts = item_facts(policy, item)
    assert not isinstance(facts, str)  # explain_rules returned the reason code otherwise
    if policy.limits:
        lines.append("limits (they only change an approval):")
    for limit in policy.limits:
        why = limit.scope.why_not(facts)
        if why is not None:
            lines.append(f"limit {limit.name}: not in scope: {why}")
            continue
        effect = limit_effect(limit, facts, ledger, now)
        parts = []
        if effect.max_amount is not None:
            parts.append(f"amount {effect.used_amount} + {facts.amount} of {effect.max_amount}")
        if effect.max_count is not None:
            parts.append(f"count {effect.used_count} + 1 of {effect.max_count}")
        verdict = "WOULD EXCEED" if effect.would_exceed else "ok"
        lines.append(f"limit {limit.name} (bucket {effect.bucket}, window "
                     f"{format_duration(limit.window)}): {', '.join(parts)}: {verdict}")
    return lines
