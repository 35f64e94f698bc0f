"""Rules every store applies the same way: deriving a decision's state, building
its :class:`DecisionRecord`, and which outcomes may follow which decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosigner.errors import StoreError
from cosigner.journal import DECISION_FIELDS
from cosigner.models import Action, Mode, RecordState
from cosigner.store.base import (
    DECIDED,
    POSTED,
    SHADOW,
    SHADOW_STATE,
    DecisionRecord,
    NewOutcome,
)
from cosigner.store.chain import parse_timestamp


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
