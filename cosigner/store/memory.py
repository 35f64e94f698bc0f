"""An in-memory journal for tests and ``memory://``: the same contract, no durability."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from cosigner.errors import JournalConflictError, StoreError
from cosigner.models import Action
from cosigner.store.base import (
    ENFORCE,
    GENESIS_HASH,
    STATES,
    ApprovalRow,
    Clock,
    DecisionRecord,
    Head,
    ItemView,
    LimitGuard,
    NewDecision,
    NewOutcome,
    VerifyResult,
    utc_now,
)
from cosigner.store.chain import (
    DECISION,
    StoredEntry,
    decision_payload,
    entry_hash,
    outcome_payload,
    parse_timestamp,
    timestamp_text,
    verify_entries,
)
from cosigner.store.records import (
    batch_verdicts,
    build_record,
    check_outcome,
    decision_state,
    limit_violations,
)


class MemoryJournal:
    """A :class:`~cosigner.store.base.Journal` held in memory.

    ``on_append`` is a fault-injection hook for tests: it is called with each
    entry payload before a batch is committed, and raising from it aborts the
    batch, which must then leave nothing behind.
    """

    def __init__(self, *, clock: Clock = utc_now,
                 on_append: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        self._clock = clock
        self._on_append = on_append
        self._lock = threading.Lock()
        self._open = False
        self._entries: list[StoredEntry] = []
        self._first_hash: dict[int, str] = {}            # item id -> first content hash
        self._latest: dict[tuple[int, str], int] = {}    # (item id, mode) -> decision seq
        self._outcome: dict[int, int] = {}               # decision seq -> latest outcome seq
        self._final: set[int] = set()                    # ids with an enforce approve/reject
        self._policies: dict[str, datetime] = {}
        self._journal_id = secrets.token_hex(16)

    def __repr__(self) -> str:
        return f"MemoryJournal(entries={len(self._entries)})"

    @property
    def journal_id(self) -> str:
        """A random id, fixed for the object's life."""
        return self._journal_id

    def init(self) -> str:
        """Nothing to create: the journal exists as soon as the object does."""
        return self._journal_id

    def open(self) -> None:
        """Open the journal (it starts empty and stays in memory)."""
        with self._lock:
            self._open = True

    def close(self) -> None:
        """Close the journal; its entries stay, so it can be opened again."""
        with self._lock:
            self._open = False

    def lock_held(self) -> bool:
        """One process, one object: held while open."""
        return self._open

    def head(self) -> Head:
        """See :meth:`Journal.head`."""
        with self._lock:
            self._check_open()
            record_hash, seq = self._head()
            return Head(seq, record_hash)

    def remember_policy(self, sha256: str, seen_at: datetime) -> datetime:
        """See :meth:`Journal.remember_policy`."""
        timestamp_text(seen_at)  # ValueError for a naive datetime
        with self._lock:
            self._check_open()
            return self._policies.setdefault(sha256, seen_at)

    def lookup(self, item_ids: Iterable[int], modes: Collection[str]) -> dict[int, ItemView]:
        """See :meth:`Journal.lookup`."""
        with self._lock:
            self._check_open()
            found: dict[int, ItemView] = {}
            for item_id in item_ids:
                first = self._first_hash.get(item_id)
                if first is None:
                    continue
                seqs = [self._latest[(item_id, m)] for m in modes if (item_id, m) in self._latest]
                latest = self._record(max(seqs)) if seqs else None
                found[item_id] = ItemView(item_id, first, latest)
            return found

    def record_decisions(self, decisions: Sequence[NewDecision],
                         guard: LimitGuard | None = None) -> list[DecisionRecord]:
        """See :meth:`Journal.record_decisions`."""
        with self._lock:
            self._check_open()
            now = self._clock()
            created_at = timestamp_text(now)
            self._refuse_conflicts(decisions, guard, now)
            new: list[StoredEntry] = []
            prev, seq = self._head()
            for decision in decisions:
                seq += 1
                payload = decision_payload(seq, prev, decision, created_at)
                prev = entry_hash(payload)
                new.append(StoredEntry(seq, decision.item_id, payload, prev))
            self._commit(new)
            return [self._record(entry.seq) for entry in new]

    def record_outcomes(self, outcomes: Sequence[NewOutcome]) -> None:
        """See :meth:`Journal.record_outcomes`."""
        with self._lock:
            self._check_open()
            created_at = timestamp_text(self._clock())
            new: list[StoredEntry] = []
            batch_state: dict[int, str] = {}
            prev, seq = self._head()
            for outcome in outcomes:
                decision = self._decision_payload(outcome.decision_seq)
                state = batch_state.get(outcome.decision_seq)
                if state is None and decision is not None:
                    state = self._state(decision)
                check_outcome(outcome, "memory://", decision, state)
                batch_state[outcome.decision_seq] = outcome.state
                seq += 1
                payload = outcome_payload(seq, prev, outcome, created_at)
                prev = entry_hash(payload)
                new.append(StoredEntry(seq, outcome.item_id, payload, prev))
            self._commit(new)

    def _refuse_conflicts(self, decisions: Sequence[NewDecision], guard: LimitGuard | None,
                          now: datetime) -> None:
        final, conflicts = batch_verdicts(decisions)
        for decision in final:
            if decision.item_id in self._final:
                conflicts[decision.item_id] = "already_decided"
        if guard is not None and any(d.action is Action.APPROVE for d in final):
            history = self._approvals_since(now - guard.window)
            conflicts.update(limit_violations(guard, history, final, now, "memory://"))
        if conflicts:
            raise JournalConflictError("memory://", conflicts)

    def approvals_since(self, since: datetime) -> list[ApprovalRow]:
        """See :meth:`Journal.approvals_since`."""
        timestamp_text(since)  # ValueError for a naive datetime
        with self._lock:
            self._check_open()
            return self._approvals_since(since)

    def _approvals_since(self, since: datetime) -> list[ApprovalRow]:
        cutoff = timestamp_text(since)
        return [
            ApprovalRow(p["chain_id"], p["from_address"], p["to_address"], p["amount_text"],
                        parse_timestamp(p["created_at"]))
            for p in (e.payload for e in self._entries)
            if p["kind"] == DECISION and p["action"] == Action.APPROVE.value
            and p["mode"] == ENFORCE and p["created_at"] >= cutoff
        ]

    def records(self, since: datetime | None = None, action: Action | None = None,
                limit: int | None = None) -> Iterator[DecisionRecord]:
        """See :meth:`Journal.records`."""
        cutoff = timestamp_text(since) if since is not None else None
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        with self._lock:
            self._check_open()
            found: list[DecisionRecord] = []
            for entry in self._entries:
                if limit is not None and len(found) >= limit:
                    break
                p = entry.payload
                if p["kind"] != DECISION or (cutoff is not None and p["created_at"] < cutoff):
                    continue
                if action is not None and p["action"] != Action(action).value:
                    continue
                found.append(self._record(entry.seq))
        return iter(found)

    def verify(self) -> VerifyResult:
        """See :meth:`Journal.verify`."""
        with self._lock:
            self._check_open()
            return verify_entries(list(self._entries))

    def count_by_state(self) -> dict[str, int]:
        """See :meth:`Journal.count_by_state`."""
        with self._lock:
            self._check_open()
            counts: dict[str, int] = dict.fromkeys(STATES, 0)
            for entry in self._entries:
                if entry.payload["kind"] == DECISION:
                    counts[self._state(entry.payload)] += 1
            return counts

    # -- internals (called with the lock held) -------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("journal memory:// is not open")

    def _head(self) -> tuple[str, int]:
        if not self._entries:
            return GENESIS_HASH, 0
        last = self._entries[-1]
        return last.record_hash, last.seq

    def _commit(self, new: list[StoredEntry]) -> None:
        if self._on_append is not None:
            for entry in new:
                self._on_append(entry.payload)
        # Nothing below can fail: the batch is applied entirely or not at all.
        self._entries.extend(new)
        for entry in new:
            p = entry.payload
            if p["kind"] == DECISION:
                self._first_hash.setdefault(p["item_id"], p["content_hash"])
                self._latest[(p["item_id"], p["mode"])] = p["seq"]
                if p["mode"] == ENFORCE and p["action"] != Action.HOLD.value:
                    self._final.add(p["item_id"])
            else:
                self._outcome[p["decision_seq"]] = p["seq"]

    def _decision_payload(self, seq: int) -> Mapping[str, Any] | None:
        if not 1 <= seq <= len(self._entries):
            return None
        payload = self._entries[seq - 1].payload
        return payload if payload["kind"] == DECISION else None

    def _state(self, decision: Mapping[str, Any]) -> str:
        outcome_seq = self._outcome.get(decision["seq"])
        outcome_state = None if outcome_seq is None else self._entries[outcome_seq - 1].payload[
            "state"]
        return decision_state(decision["mode"], outcome_state)

    def _record(self, seq: int) -> DecisionRecord:
        entry = self._entries[seq - 1]
        outcome_seq = self._outcome.get(seq)
        outcome = None if outcome_seq is None else self._entries[outcome_seq - 1].payload
        return build_record(entry.payload, entry.record_hash, outcome)
