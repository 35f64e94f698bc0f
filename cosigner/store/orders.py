"""The order journal: C2C order callbacks, order state and the forwarding outbox
(DESIGN section 10), beside the decision journal.

Three parts, written together in one transaction per callback:

* **callbacks**: an append-only, hash-chained log (its own ``seq``, ``prev_hash``
  and ``record_hash``, hashed like decision entries, see :mod:`cosigner.store.chain`)
  of every *verified* callback, ``applied`` or ``late``.  The same callback again
  (same content hash) is a duplicate and records nothing.
* **order state**: each order's current status, moved only forward
  (:func:`cosigner.callbacks.verify.transition` decides; the store applies).
* **outbox**: one event per applied callback when forwarding is on, with the exact
  body to POST; delivery attempts update it until it is delivered.

:class:`OrderJournal` is the interface; :class:`MemoryOrderJournal` (tests,
``memory://``), :class:`~cosigner.store.orders_sqlite.SqliteOrderJournal` (tables
in the SQLite journal file) and :class:`~cosigner.store.orders_postgres.PostgresOrderJournal`
(tables in the PostgreSQL journal) implement it and pass ``tests/callbacks/test_store.py``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cosigner.errors import StoreError
from cosigner.store.base import GENESIS_HASH, Clock, VerifyResult, utc_now
from cosigner.store.chain import (
    StoredEntry,
    entry_hash,
    parse_timestamp,
    timestamp_text,
    verify_entries,
)

ORDER_CALLBACK = "order_callback"
APPLIED = "applied"
LATE = "late"
#: The hashed fields of a callback entry, in the stores' column order.
CALLBACK_KEYS = ("seq", "kind", "prev_hash", "order_no", "merchant_order_no", "status",
                 "deal_amount", "order_type", "content_hash", "outcome", "previous_status",
                 "event_id", "source", "body", "received_at")

#: Decides whether a callback moves its order: (current status or None, new status)
#: -> APPLIED or LATE.  The daemon passes :func:`cosigner.callbacks.verify.transition`.
Transition = Callable[[int | None, int], str]


@dataclass(frozen=True, slots=True)
class NewCallback:
    """A verified callback to record (``source``: the client address, for the record)."""

    order_no: str
    merchant_order_no: str
    status: int
    deal_amount: str
    order_type: int
    content_hash: str
    body: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    """A recorded callback: ``outcome`` is ``applied`` or ``late``; ``previous_status``
    the order's status before it (None for the first); ``event_id`` its outbox event."""

    seq: int
    order_no: str
    merchant_order_no: str
    status: int
    deal_amount: str
    order_type: int
    content_hash: str
    outcome: str
    previous_status: int | None
    event_id: str | None
    source: str | None
    body: str
    received_at: datetime
    prev_hash: str
    record_hash: str


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What :meth:`OrderJournal.record` did: ``record`` is None for a duplicate."""

    duplicate: bool
    record: CallbackRecord | None


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order as its applied callbacks left it (``callbacks``: how many were applied)."""

    order_no: str
    merchant_order_no: str
    status: int
    deal_amount: str
    order_type: int
    first_seen: datetime
    updated_at: datetime
    callbacks: int


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One forward to the merchant's backend; ``body`` is exactly what is POSTed."""

    event_id: str
    seq: int
    order_no: str
    body: bytes
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None


@runtime_checkable
class OrderJournal(Protocol):
    """Order callbacks, order state and the outbox.  Calls are serialised by the
    implementation; every write is one durable transaction, all or nothing.

    Every method raises :class:`~cosigner.errors.StoreError` when the storage
    fails, and :class:`~cosigner.errors.JournalUnavailableError` from :meth:`open`
    when the journal is missing, unreadable or lacks the order tables.
    """

    def open(self) -> None:
        """Open (idempotent); a writer also verifies the callback chain."""

    def close(self) -> None:
        """Close (idempotent)."""

    def record(self, callback: NewCallback, *, forward: bool) -> RecordResult:
        """Record a verified callback unless its content hash is already recorded.

        Its outcome is ``transition(current status, callback.status)``: an
        ``applied`` one moves the order's state (and, with ``forward``, adds an
        outbox event); a ``late`` one is recorded only.
        """
        ...

    def due_events(self, now: datetime, limit: int) -> list[OutboxEvent]:
        """Undelivered events due by ``now``, oldest first, at most ``limit``; an event
        waits while an older event of the same order is undelivered."""
        ...

    def next_due(self) -> datetime | None:
        """When the earliest event :meth:`due_events` would return is due (None: the
        outbox is empty)."""
        ...

    def delivered(self, event_id: str, at: datetime) -> None:
        """Mark an event delivered (counts the attempt)."""

    def attempt_failed(self, event_id: str, at: datetime, retry_at: datetime,
                       error: str) -> None:
        """Count a failed attempt and set when to try again."""

    def queue_size(self) -> int:
        """Undelivered events."""
        ...

    def orders(self, since: datetime | None = None,
               statuses: Collection[int] | None = None) -> list[OrderState]:
        """Orders updated at or after ``since`` with one of ``statuses``, oldest first."""
        ...

    def order(self, order_no: str) -> OrderState | None:
        """One order's state (None: no applied callback for it)."""
        ...

    def history(self, order_no: str) -> list[CallbackRecord]:
        """Every recorded callback of an order, oldest first."""
        ...

    def events(self, order_no: str) -> list[OutboxEvent]:
        """Every outbox event of an order, oldest first."""
        ...

    def verify(self) -> VerifyResult:
        """Check the callback chain (hashes, links, its recorded head)."""
        ...


def callback_payload(seq: int, prev_hash: str, callback: NewCallback, outcome: str,
                     previous_status: int | None, event_id: str | None,
                     received_at: str) -> dict[str, Any]:
    """The hashed fields of a callback entry."""
    return {
        "seq": seq, "kind": ORDER_CALLBACK, "prev_hash": prev_hash,
        "order_no": callback.order_no, "merchant_order_no": callback.merchant_order_no,
        "status": callback.status, "deal_amount": callback.deal_amount,
        "order_type": callback.order_type, "content_hash": callback.content_hash,
        "outcome": outcome, "previous_status": previous_status, "event_id": event_id,
        "source": callback.source, "body": callback.body, "received_at": received_at,
    }


def record_from_payload(payload: Mapping[str, Any], record_hash: str,
                        received_at: datetime) -> CallbackRecord:
    """A :class:`CallbackRecord` from its hashed fields."""
    return CallbackRecord(
        seq=payload["seq"], order_no=payload["order_no"],
        merchant_order_no=payload["merchant_order_no"], status=payload["status"],
        deal_amount=payload["deal_amount"], order_type=payload["order_type"],
        content_hash=payload["content_hash"], outcome=payload["outcome"],
        previous_status=payload["previous_status"], event_id=payload["event_id"],
        source=payload["source"], body=payload["body"], received_at=received_at,
        prev_hash=payload["prev_hash"], record_hash=record_hash)


# -- rows of the SQL order tables (SQLite and PostgreSQL store the same columns) ----

#: The ``order_callbacks`` columns: the hashed fields, then the record's hash.
CALLBACK_COLUMNS = (*CALLBACK_KEYS, "record_hash")


def chain_head(recorded: Sequence[Any] | None, last: Sequence[Any] | None,
               where: str) -> tuple[int, str]:
    """The callback chain's head, given the recorded head row and the last callback row
    (``seq, hash`` each); StoreError when they disagree (the end was edited: never extend
    such a chain)."""
    actual = (0, GENESIS_HASH) if last is None else (int(last[0]), str(last[1]))
    if recorded is None or (int(recorded[0]), str(recorded[1])) != actual:
        raise StoreError(f"journal {where}: its last order callback (seq {actual[0]}) does "
                         "not match the recorded head: the order callbacks were edited")
    return actual


def callback_from_row(row: Sequence[Any], where: str) -> CallbackRecord:
    """A :class:`CallbackRecord` from a row in :data:`CALLBACK_COLUMNS` order."""
    values = dict(zip(CALLBACK_COLUMNS, row, strict=True))
    try:
        return record_from_payload(values, values["record_hash"],
                                   parse_timestamp(values["received_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"journal {where}: order callback seq {row[0]} cannot be read "
                         f"({exc})") from exc


def stored_callback(row: Sequence[Any]) -> StoredEntry:
    """A callback row as the payload that was hashed, for verification."""
    values = dict(zip(CALLBACK_COLUMNS, row, strict=True))
    payload = {k: values[k] for k in CALLBACK_KEYS}
    return StoredEntry(values["seq"], values["order_no"], payload, values["record_hash"])


def _time(text: str | None) -> datetime | None:
    return parse_timestamp(text) if text else None


def outbox_event(row: Sequence[Any]) -> OutboxEvent:
    """An :class:`OutboxEvent` from an outbox row (event_id, seq, order_no, body,
    created_at, attempts, next_attempt_at, last_attempt_at, last_error, delivered_at)."""
    (event_id, seq, order_no, body, created_at, attempts, next_attempt_at, last_attempt_at,
     last_error, delivered_at) = row
    return OutboxEvent(event_id, seq, order_no, bytes(body), parse_timestamp(created_at),
                       attempts, parse_timestamp(next_attempt_at), _time(last_attempt_at),
                       last_error, _time(delivered_at))


def order_state(row: Sequence[Any]) -> OrderState:
    """An :class:`OrderState` from an order state row."""
    order_no, merchant_order_no, status, deal_amount, order_type, first, updated, count = row
    return OrderState(order_no, merchant_order_no, status, deal_amount, order_type,
                      parse_timestamp(first), parse_timestamp(updated), count)


def new_event_id() -> str:
    """A fresh outbox event id (random, 32 hex digits)."""
    return uuid.uuid4().hex


def event_body(event_id: str, callback: NewCallback, received_at: str) -> bytes:
    """The JSON POSTed to the merchant's backend for an applied callback (DESIGN
    section 10).  ``dealAmount`` is a string holding the callback's exact text, so no
    JSON parser turns the money into a float."""
    return json.dumps({
        "event_id": event_id, "orderNo": callback.order_no,
        "merchantOrderNo": callback.merchant_order_no, "status": callback.status,
        "dealAmount": callback.deal_amount, "orderType": callback.order_type,
        "received_at": received_at,
    }, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class MemoryOrderJournal:
    """An :class:`OrderJournal` in memory (tests and ``memory://``): no durability."""

    def __init__(self, transition: Transition, *, clock: Clock = utc_now) -> None:
        self._transition = transition
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        self._entries: list[StoredEntry] = []
        self._records: list[CallbackRecord] = []
        self._hashes: set[str] = set()
        self._states: dict[str, OrderState] = {}
        self._events: dict[str, OutboxEvent] = {}

    def __repr__(self) -> str:
        return f"MemoryOrderJournal(callbacks={len(self._records)})"

    def open(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        with self._lock:
            self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("order journal (memory) is not open")

    def record(self, callback: NewCallback, *, forward: bool) -> RecordResult:
        with self._lock:
            self._check_open()
            if callback.content_hash in self._hashes:
                return RecordResult(duplicate=True, record=None)
            now = self._clock()
            at = timestamp_text(now)
            state = self._states.get(callback.order_no)
            previous = state.status if state is not None else None
            outcome = str(self._transition(previous, callback.status))
            event_id = new_event_id() if forward and outcome == APPLIED else None
            seq = len(self._entries) + 1
            prev = self._entries[-1].record_hash if self._entries else GENESIS_HASH
            payload = callback_payload(seq, prev, callback, outcome, previous, event_id, at)
            record_hash = entry_hash(payload)
            record = record_from_payload(payload, record_hash, now)
            self._entries.append(StoredEntry(seq, callback.order_no, payload, record_hash))
            self._records.append(record)
            self._hashes.add(callback.content_hash)
            if outcome == APPLIED:
                self._states[callback.order_no] = OrderState(
                    callback.order_no, callback.merchant_order_no, callback.status,
                    callback.deal_amount, callback.order_type,
                    state.first_seen if state else now, now,
                    (state.callbacks if state else 0) + 1)
            if event_id is not None:
                self._events[event_id] = OutboxEvent(
                    event_id, seq, callback.order_no, event_body(event_id, callback, at),
                    now, 0, now, None, None, None)
            return RecordResult(duplicate=False, record=record)

    def due_events(self, now: datetime, limit: int) -> list[OutboxEvent]:
        with self._lock:
            self._check_open()
            waiting: set[str] = set()
            due = []
            for event in sorted(self._events.values(), key=lambda e: e.seq):
                if event.delivered_at is not None:
                    continue
                if event.order_no not in waiting and event.next_attempt_at <= now:
                    due.append(event)
                waiting.add(event.order_no)
            return due[:limit]

    def next_due(self) -> datetime | None:
        with self._lock:
            self._check_open()
            heads: dict[str, OutboxEvent] = {}
            for event in sorted(self._events.values(), key=lambda e: e.seq):
                if event.delivered_at is None:
                    heads.setdefault(event.order_no, event)
            return min((e.next_attempt_at for e in heads.values()), default=None)

    def _update(self, event_id: str, **changes: Any) -> None:
        event = self._events.get(event_id)
        if event is None:
            raise StoreError(f"order journal (memory): no outbox event {event_id!r}")
        self._events[event_id] = replace(event, **changes)

    def delivered(self, event_id: str, at: datetime) -> None:
        with self._lock:
            self._check_open()
            event = self._events.get(event_id)
            attempts = event.attempts + 1 if event else 0
            self._update(event_id, delivered_at=at, last_attempt_at=at, attempts=attempts)

    def attempt_failed(self, event_id: str, at: datetime, retry_at: datetime,
                       error: str) -> None:
        with self._lock:
            self._check_open()
            event = self._events.get(event_id)
            attempts = event.attempts + 1 if event else 0
            self._update(event_id, last_attempt_at=at, next_attempt_at=retry_at,
                         last_error=error, attempts=attempts)

    def queue_size(self) -> int:
        with self._lock:
            self._check_open()
            return sum(1 for e in self._events.values() if e.delivered_at is None)

    def orders(self, since: datetime | None = None,
               statuses: Collection[int] | None = None) -> list[OrderState]:
        with self._lock:
            self._check_open()
            found = [s for s in self._states.values()
                     if (since is None or s.updated_at >= since)
                     and (statuses is None or s.status in statuses)]
            return sorted(found, key=lambda s: (s.updated_at, s.order_no))

    def order(self, order_no: str) -> OrderState | None:
        with self._lock:
            self._check_open()
            return self._states.get(order_no)

    def history(self, order_no: str) -> list[CallbackRecord]:
        with self._lock:
            self._check_open()
            return [r for r in self._records if r.order_no == order_no]

    def events(self, order_no: str) -> list[OutboxEvent]:
        with self._lock:
            self._check_open()
            return sorted((e for e in self._events.values() if e.order_no == order_no),
                          key=lambda e: e.seq)

    def verify(self) -> VerifyResult:
        with self._lock:
            self._check_open()
            head = (len(self._entries),
                    self._entries[-1].record_hash if self._entries else GENESIS_HASH)
            return verify_entries(list(self._entries), head)


def order_journal_from_url(url: str, transition: Transition, *, writer: bool = False,
                           clock: Clock = utc_now, fence: object | None = None) -> OrderJournal:
    """The order journal beside the decision journal ``url`` names, not yet opened.

    ``writer``: the daemon's (verifies the callback chain at open); commands read only.
    ``fence``: the daemon's decision journal; on PostgreSQL every callback write checks
    its leader epoch (a process that is not the leader cannot record).

    Raises:
        SettingsError: the URL is unusable, or names a store without order tables.
    """
    # Imported here: cosigner.store imports this package's siblings, not the reverse.
    from cosigner.errors import SettingsError
    from cosigner.store import SETTING, journal_from_url
    from cosigner.store.memory import MemoryJournal
    from cosigner.store.orders_postgres import PostgresOrderJournal
    from cosigner.store.orders_sqlite import SqliteOrderJournal
    from cosigner.store.postgres import PostgresJournal
    from cosigner.store.sqlite import SqliteJournal

    journal = journal_from_url(url)
    if isinstance(journal, PostgresJournal):
        return PostgresOrderJournal(url, transition, writer=writer, clock=clock,
                                    fence=fence if isinstance(fence, PostgresJournal) else None)
    if isinstance(journal, SqliteJournal):
        return SqliteOrderJournal(journal.path, transition, writer=writer, clock=clock)
    if isinstance(journal, MemoryJournal):
        return MemoryOrderJournal(transition, clock=clock)
    raise SettingsError(f"{SETTING}: this journal has no order tables")
