"""Replay a candidate policy against the journal's history (DESIGN sections 5 and 11).  Pure.

Each distinct item of the window is replayed once, with its **first** recorded
content, at the time it was first decided, in time order; the candidate's
limits start from the approvals actually recorded before the window (as far
back as its longest limit window) and then accumulate the candidate's own
approvals, as they would have.  The candidate's action is compared with the
item's **last** recorded action (what finally happened to it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from cosigner.models import Action, PendingItem
from cosigner.policy.engine import Decision, evaluate
from cosigner.policy.ledger import Approval, Ledger
from cosigner.policy.model import CompiledPolicy


class Recorded(Protocol):
    """What backtest needs of a journal record (``DecisionRecord`` has it)."""

    @property
    def item_id(self) -> int: ...
    @property
    def chain_id(self) -> str | None: ...
    @property
    def from_address(self) -> str | None: ...
    @property
    def to_address(self) -> str | None: ...
    @property
    def amount_text(self) -> str | None: ...
    @property
    def action(self) -> Action: ...
    @property
    def rule(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Change:
    """One item whose action the candidate changes."""

    item_id: int
    at: datetime
    chain: str | None
    to: str | None
    amount: str | None
    current_action: Action
    current_rule: str
    candidate_action: Action
    candidate_rule: str
    candidate_reasons: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.item_id, "at": self.at.isoformat(), "chain": self.chain,
                "to": self.to, "amount": self.amount,
                "current": {"action": self.current_action.value, "rule": self.current_rule},
                "candidate": {"action": self.candidate_action.value,
                              "rule": self.candidate_rule,
                              "reasons": list(self.candidate_reasons)}}


@dataclass
class BacktestResult:
    """What the candidate would have changed over the window."""

    items: int = 0
    transitions: Counter[str] = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)
    limits_hit: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> int:
        return len(self.changes)

    def as_json(self, candidate: CompiledPolicy, since: datetime | None) -> dict[str, Any]:
        return {"candidate": {"name": candidate.name, "sha256": candidate.sha256},
                "since": since.isoformat() if since is not None else None,
                "items": self.items, "changed": self.changed,
                "transitions": dict(sorted(self.transitions.items())),
                "limits": dict(sorted(self.limits_hit.items())),
                "changes": [c.as_json() for c in self.changes]}


def item_of(record: Recorded) -> PendingItem:
    """The pending item as the API sent it, rebuilt from its record (absent fields stay absent)."""
    raw: dict[str, Any] = {"id": record.item_id}
    for key, value in (("chainId", record.chain_id), ("fromAddress", record.from_address),
                       ("toAddress", record.to_address), ("amount", record.amount_text)):
        if value is not None:
            raw[key] = value
    return PendingItem(raw)


def _approval(record: Recorded) -> Approval | None:
    if None in (record.chain_id, record.from_address, record.to_address, record.amount_text):
        return None
    try:
        amount = Decimal(record.amount_text or "")
    except InvalidOperation:
        return None
    return Approval(chain_id=record.chain_id or "", from_address=record.from_address or "",
                    to_address=record.to_address or "", amount=amount, at=record.created_at)


def backtest(candidate: CompiledPolicy, records: Iterable[Recorded],
             before: Iterable[Approval] = ()) -> BacktestResult:
    """Replay *records* (oldest first, as the journal gives them) through *candidate*.

    *before* are the approvals recorded before the window that the candidate's
    limits must still count at its start.
    """
    first: dict[int, Recorded] = {}
    last: dict[int, Recorded] = {}
    for record in records:
        first.setdefault(record.item_id, record)
        last[record.item_id] = record
    ledger = Ledger(candidate, before)
    result = BacktestResult(items=len(first))
    for item_id, record in sorted(first.items(), key=lambda kv: (kv[1].created_at, kv[0])):
        at = record.created_at
        decision: Decision = evaluate(candidate, item_of(record), ledger, at)
        if decision.action is Action.APPROVE:
            approval = _approval(record)
            if approval is not None:
                ledger.add(approval)
        result.limits_hit.update(e.limit for e in decision.limit_effects if e.would_exceed)
        final = last[item_id]
        result.transitions[f"{final.action.value}->{decision.action.value}"] += 1
        if decision.action is not final.action:
            result.changes.append(Change(
                item_id, at, record.chain_id, record.to_address, record.amount_text,
                final.action, final.rule, decision.action, decision.rule, decision.reasons))
    return result


def render(result: BacktestResult, candidate: CompiledPolicy) -> list[str]:
    """The human-readable report."""
    lines = [f"candidate {candidate.name!r} (sha256 {candidate.sha256[:12]}): "
             f"{result.items} items replayed, {result.changed} would change"]
    for transition, count in sorted(result.transitions.items()):
        before, after = transition.split("->")
        mark = "" if before == after else "  <- change"
        lines.append(f"  {transition:<17} {count:>7}{mark}")
    if result.limits_hit:
        lines.append("limits the candidate would hit: " + ", ".join(
            f"{name} ({count}x)" for name, count in sorted(result.limits_hit.items())))
    for change in result.changes:
        lines.append(f"  item {change.item_id} at {change.at.isoformat()} "
                     f"chain {_shown(change.chain)} amount {_shown(change.amount)} "
                     f"to {_shown(change.to)}: "
                     f"{change.current_action.value} ({change.current_rule}) -> "
                     f"{change.candidate_action.value} ({change.candidate_rule}; "
                     f"{', '.join(change.candidate_reasons)})")
    return lines


def _shown(text: str | None) -> str:
    """Item text as printed: control and invisible characters escaped."""
    if text is None:
        return "-"
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
