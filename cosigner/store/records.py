"""Rules every store applies the same way: deriving a decision's state, building
its :class:`DecisionRecord`, and which outcomes may follow which decisions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
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
    OUTCOME,
    OUTCOME_KEYS,
    StoredEntry,
    decision_values,
    entry_hash,
    one_shot,
    outcome_values,
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


#: The fields of a :class:`DecisionRecord` as :func:`decision_entries` passes them, by
#: position (tests/test_journal_fields.py checks that they are its first fields, in order).
RECORD_FIELDS = ("seq", *DECISION_FIELDS, "created_at", "state", "outcome_code",
                 "outcome_message", "prev_hash", "record_hash")
_new_record: Callable[..., DecisionRecord] = DecisionRecord
_ACTION, _REASONS, _MODE = (DECISION_FIELDS.index(k) for k in ("action", "reasons", "mode"))

# ``json.dumps(reasons, ensure_ascii=False)``: the stored text of a decision's reasons.
_reasons_text = one_shot(json.JSONEncoder(ensure_ascii=False))


def _row_getter(kind: str) -> itemgetter[tuple[Any, ...]]:
    """The entries row of an entry of ``kind`` from its payload values (:data:`KEYS` order)
    followed by None, the stored reasons and the record hash."""
    keys = KEYS[kind]
    none, reasons, record_hash = len(keys), len(keys) + 1, len(keys) + 2
    at = {key: i for i, key in enumerate(keys)}
    at.update(record_hash=record_hash)
    if kind == DECISION:
        at.update(reasons=reasons)
    return itemgetter(*(at.get(column, none) for column in COLUMNS))


_ROWS = {kind: _row_getter(kind) for kind in KEYS}


def entry_row(payload: dict[str, Any], record_hash: str) -> tuple[Any, ...]:
    """The entries row (:data:`COLUMNS` order) of an entry payload (a journal copy; the
    write paths build their rows with :func:`decision_entries` and :func:`outcome_entry`)."""
    values = dict.fromkeys(COLUMNS)
    values.update(payload)
    if payload["kind"] == DECISION:
        values["reasons"] = _reasons_text(payload["reasons"])
    values["record_hash"] = record_hash
    return tuple(values[c] for c in COLUMNS)


def decision_entries(decisions: Iterable[NewDecision], head: tuple[int, str],
                     created_at: str) -> tuple[list[tuple[Any, ...]], list[DecisionRecord]]:
    """The entries rows and the records of ``decisions`` appended after ``head`` (its seq
    and hash) at ``created_at``: one decision at a time, what :func:`decision_payload`,
    :func:`entry_hash`, :func:`entry_row` and ``build_record(payload, hash, None)`` give."""
    seq, prev = head
    at = parse_timestamp(created_at)  # the same for every record of the batch
    row_of = _ROWS[DECISION]
    rows: list[tuple[Any, ...]] = []
    records: list[DecisionRecord] = []
    for decision in decisions:
        seq += 1
        values = decision_values(seq, prev, decision, created_at)
        record_hash = entry_hash(dict(zip(DECISION_KEYS, values, strict=True)))
        fields = list(values[3:-1])  # DECISION_FIELDS
        reasons, action, mode = fields[_REASONS], decision.action, decision.mode
        rows.append(row_of((*values, None, _reasons_text(reasons), record_hash)))
        # build_record's Action(...) and Mode(...) of the stored text are these members
        fields[_ACTION] = action if type(action) is Action else Action(fields[_ACTION])
        fields[_MODE] = mode if type(mode) is Mode else Mode(fields[_MODE])
        fields[_REASONS] = tuple(reasons)
        records.append(_new_record(seq, *fields, at, decision_state(fields[_MODE], None),
                                   None, None, prev, record_hash))
        prev = record_hash
    return rows, records


def outcome_entry(seq: int, prev_hash: str, outcome: NewOutcome,
                  created_at: str) -> tuple[str, tuple[Any, ...]]:
    """The record hash and the entries row of an outcome entry: what :func:`outcome_payload`,
    :func:`entry_hash` and :func:`entry_row` give."""
    values = outcome_values(seq, prev_hash, outcome, created_at)
    record_hash = entry_hash(dict(zip(OUTCOME_KEYS, values, strict=True)))
    return record_hash, _ROWS[OUTCOME]((*values, None, None, record_hash))


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


def checked_approval(row: Sequence[Any], where: str) -> tuple[int, ApprovalRow]:
    """``(seq, approval)`` of an approve decision's row in :data:`COLUMNS` order, once its
    hash is checked: the limits never count an amount edited in the database.

    Raises:
        StoreError: the row does not hash to its ``record_hash``.
    """
    entry = stored_entry(row)
    try:
        good = entry_hash(entry.payload) == entry.record_hash
    except (TypeError, ValueError):
        good = False
    if not good:
        raise StoreError(f"journal {where}: record seq {entry.seq} (item {entry.item_id}) "
                         "was edited: hash mismatch; its approvals cannot be counted; run "
                         "`cosigner audit verify`")
    p = entry.payload
    return entry.seq, ApprovalRow(p["chain_id"], p["from_address"], p["to_address"],
                                  p["amount_text"], parse_timestamp(p["created_at"]))


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
