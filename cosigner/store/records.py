"""Rules every store applies the same way: deriving a decision's state, building
its :class:`DecisionRecord`, and which outcomes may follow which decisions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cosigner.errors import StoreError
from cosigner.journal import DECISION_FIELDS
from cosigner.models import Action, Mode, RecordState
from cosigner.store.base import (
    DECIDED,
    ENFORCE,
    POSTED,
    SHADOW,
    SHADOW_STATE,
    ApprovalRow,
    DecisionRecord,
    LimitGuard,
    NewDecision,
    NewOutcome,
)
from cosigner.store.chain import (
    DECISION,
    DECISION_KEYS,
    KEYS,
    StoredEntry,
    parse_timestamp,
)


def decision_state(mode: str, outcome_state: str | None) -> RecordState:
    """A decision's state from its mode and its latest outcome's state."""
    if mode == SHADOW:
        return SHADOW_STATE
    return RecordState(outcome_state) if outcome_state else DECIDED


def build_record(decision: Mapping[str, Any], record_hash: str,
                 outcome: Mapping[str, Any] | None) -> DecisionRecord:
    """A :class:`DecisionRecord` from a decision payload and its latest outcome payload."""
    recorded = {name: decision[name] for name in DECISION_FIELDS}
    recorded.update(action=Action(decision["action"]), reasons=tuple(decision["reasons"]),
                    mode=Mode(decision["mode"]))
    return DecisionRecord(
        seq=decision["seq"], **recorded, created_at=parse_timestamp(decision["created_at"]),
        state=decision_state(decision["mode"], outcome["state"] if outcome else None),
        outcome_code=outcome["api_code"] if outcome else None,
        outcome_message=outcome["api_message"] if outcome else None,
        prev_hash=decision["prev_hash"], record_hash=record_hash,
        outcome_at=parse_timestamp(outcome["created_at"]) if outcome else None,
    )


def check_outcome(outcome: NewOutcome, where: str, decision: Mapping[str, Any] | None,
                  current_state: str | None) -> None:
    """Refuse an outcome that cannot follow its decision.

    ``decision`` is the payload at ``outcome.decision_seq`` (None when there is
    no decision there) and ``current_state`` that decision's state so far.

    Raises:
        StoreError: naming the journal (``where``), the seq and the reason.
    """
    seq = outcome.decision_seq
    prefix = f"journal {where}: outcome for record seq {seq} (item {outcome.item_id})"
    if decision is None:
        raise StoreError(f"{prefix}: no decision has that seq")
    if decision["item_id"] != outcome.item_id:
        raise StoreError(f"{prefix}: that decision is for item {decision['item_id']}")
    if decision["mode"] == SHADOW:
        raise StoreError(f"{prefix}: a shadow decision is never posted")
    if decision["action"] == Action.HOLD.value:
        raise StoreError(f"{prefix}: a hold is never posted")
    if current_state == POSTED:
        raise StoreError(f"{prefix}: the decision is already posted")


# -- the entries table (SQLite ``entries``, PostgreSQL ``cosigner_entries``) ------------

#: The columns of an entry row: every hashed field of both kinds, then the record's hash.
COLUMNS = ("seq", "kind", "prev_hash", "item_id", "content_hash", "chain_id", "from_address",
           "to_address", "amount_text", "action", "rule", "reasons", "policy_name",
           "policy_sha256", "mode", "decision_seq", "state", "api_code", "api_message",
           "created_at", "record_hash")


def entry_row(payload: dict[str, Any], record_hash: str) -> tuple[Any, ...]:
    """The entries row (:data:`COLUMNS` order) of an entry payload."""
    values = dict.fromkeys(COLUMNS)
    values.update(payload)
    if payload["kind"] == DECISION:
        values["reasons"] = json.dumps(payload["reasons"], ensure_ascii=False)
    values["record_hash"] = record_hash
    return tuple(values[c] for c in COLUMNS)


def load_reasons(text: Any) -> Any:
    """A row's ``reasons`` as stored (JSON), or the text as is when it is not JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text  # an edited row: it will not hash to its record_hash


def stored_entry(row: Sequence[Any]) -> StoredEntry:
    """A row in :data:`COLUMNS` order as the payload that was hashed, for verification."""
    values = dict(zip(COLUMNS, row, strict=True))
    keys = KEYS.get(values["kind"], DECISION_KEYS)  # an unknown kind is an edit: no hash
    payload = {k: values[k] for k in keys}
    if "reasons" in payload:
        payload["reasons"] = load_reasons(payload["reasons"])
    return StoredEntry(values["seq"], values["item_id"], payload, values["record_hash"])


def record_from_row(row: Sequence[Any], where: str) -> DecisionRecord:
    """A :class:`DecisionRecord` from a decision's 16 hashed fields, its record hash and its
    latest outcome's state, code, message and time (None when it has none)."""
    payload = dict(zip(DECISION_KEYS, row[:16], strict=True))
    payload["reasons"] = load_reasons(payload["reasons"])
    outcome = None
    if row[17] is not None:
        outcome = {"state": row[17], "api_code": row[18], "api_message": row[19],
                   "created_at": row[20]}
    try:
        return build_record(payload, row[16], outcome)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"journal {where}: record seq {row[0]} cannot be read "
                         f"({exc}); run `cosigner audit verify`") from exc


# -- what every store re-checks inside its write transaction ---------------------------

def batch_verdicts(decisions: Sequence[NewDecision]) -> tuple[list[NewDecision], dict[int, str]]:
    """The enforced approve/reject decisions of a batch, and the ids it gives twice
    (``already_decided``: twice in one batch is as bad as twice in the journal)."""
    verdicts = [d for d in decisions if d.mode == ENFORCE and d.action is not Action.HOLD]
    conflicts: dict[int, str] = {}
    seen: set[int] = set()
    for decision in verdicts:
        if decision.item_id in seen:
            conflicts[decision.item_id] = "already_decided"
        seen.add(decision.item_id)
    return verdicts, conflicts


def limit_violations(guard: LimitGuard, history: Sequence[ApprovalRow],
                     verdicts: Sequence[NewDecision], now: datetime,
                     where: str) -> dict[int, str]:
    """The guard's refusals; StoreError (nothing recorded) when it cannot count."""
    try:
        return guard.violations(history, verdicts, now)
    except (ArithmeticError, ValueError) as exc:
        raise StoreError(f"journal {where}: its approvals cannot be counted "
                         f"({type(exc).__name__}); run `cosigner audit verify`") from exc
