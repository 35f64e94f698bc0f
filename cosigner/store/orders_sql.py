"""The order journal's SQL, shared by the SQLite and PostgreSQL order journals.

Both keep the same four tables under their own names (see
:mod:`cosigner.store.orders_sqlite` and :mod:`cosigner.store.orders_postgres`) and
write a callback with the same statements; only the table names, the parameter mark
(``?`` or ``%s``) and PostgreSQL's row lock on the chain head differ.  :class:`OrderSql`
holds one database's statements, :func:`write_callback` is the one write of a
callback, run by each store inside its own transaction, and :class:`SqlOrderJournal`
the reads and outbox updates both stores make the same way.

Every statement is built from these constants only, never from input (ruff's S608
is a false positive here).
"""

# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from cosigner.store.chain import entry_hash, parse_timestamp, timestamp_text
from cosigner.store.orders import (
    APPLIED,
    CALLBACK_COLUMNS,
    CALLBACK_KEYS,
    CallbackRecord,
    NewCallback,
    OrderState,
    OutboxEvent,
    RecordResult,
    Transition,
    callback_from_row,
    callback_payload,
    chain_head,
    event_body,
    new_event_id,
    order_state,
    outbox_event,
    record_from_payload,
)

EVENT_COLUMNS = ("event_id", "seq", "order_no", "body", "created_at", "attempts",
                 "next_attempt_at", "last_attempt_at", "last_error", "delivered_at")
STATE_COLUMNS = ("order_no", "merchant_order_no", "status", "deal_amount", "order_type",
                 "first_seen", "updated_at", "callbacks")


@dataclass(frozen=True, slots=True)
class OrderSql:
    """One database's order-journal statements (see :func:`order_sql`)."""

    tables: tuple[str, str, str, str]
    mark: str
    insert_callback: str
    select_callbacks: str
    select_events: str
    select_due: str
    select_next_due: str
    select_states: str
    queue_size: str
    head: str
    head_for_write: str
    last_callback: str
    duplicate: str
    status: str
    update_head: str
    upsert_state: str
    insert_event: str
    delivered: str
    attempt_failed: str

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)


def order_sql(callbacks: str, head: str, state: str, outbox: str, *, mark: str,
              lock_head: str = "") -> OrderSql:
    """The statements over these table names, with ``mark`` as the parameter mark;
    ``lock_head`` is appended to the read of the chain head in a write (PostgreSQL:
    ``" FOR UPDATE"``, which serialises replicas recording at once; not in a read)."""
    m = mark
    select_events = f"SELECT {', '.join(EVENT_COLUMNS)} FROM {outbox}"
    # An event waits while an older one of its order is undelivered.
    older_undelivered = (f"NOT EXISTS (SELECT 1 FROM {outbox} AS p WHERE p.order_no = "
                         "o.order_no AND p.delivered_at IS NULL AND p.seq < o.seq)")
    return OrderSql(
        tables=(callbacks, head, state, outbox),
        mark=m,
        insert_callback=(f"INSERT INTO {callbacks} ({', '.join(CALLBACK_COLUMNS)}) "
                         f"VALUES ({', '.join([m] * len(CALLBACK_COLUMNS))})"),
        select_callbacks=f"SELECT {', '.join(CALLBACK_COLUMNS)} FROM {callbacks}",
        select_events=select_events,
        select_due=(f"{select_events} AS o WHERE o.delivered_at IS NULL "
                    f"AND o.next_attempt_at <= {m} AND {older_undelivered} "
                    f"ORDER BY o.seq LIMIT {m}"),
        select_next_due=(f"SELECT min(o.next_attempt_at) FROM {outbox} AS o "
                         f"WHERE o.delivered_at IS NULL AND {older_undelivered}"),
        select_states=f"SELECT {', '.join(STATE_COLUMNS)} FROM {state}",
        queue_size=f"SELECT count(*) FROM {outbox} WHERE delivered_at IS NULL",
        head=f"SELECT seq, hash FROM {head} WHERE id = 1",
        head_for_write=f"SELECT seq, hash FROM {head} WHERE id = 1{lock_head}",
        last_callback=(f"SELECT seq, record_hash FROM {callbacks} "
                       "ORDER BY seq DESC LIMIT 1"),
        duplicate=f"SELECT 1 FROM {callbacks} WHERE content_hash = {m}",
        status=f"SELECT status FROM {state} WHERE order_no = {m}",
        update_head=f"UPDATE {head} SET seq = {m}, hash = {m} WHERE id = 1",
        upsert_state=(
            f"INSERT INTO {state} (order_no, merchant_order_no, status, "
            "deal_amount, order_type, first_seen, updated_at, callbacks) "
            f"VALUES ({', '.join([m] * 7)}, 1) ON CONFLICT (order_no) DO UPDATE SET "
            "merchant_order_no = excluded.merchant_order_no, status = excluded.status, "
            "deal_amount = excluded.deal_amount, order_type = excluded.order_type, "
            f"updated_at = excluded.updated_at, callbacks = {state}.callbacks + 1"),
        insert_event=(f"INSERT INTO {outbox} (event_id, seq, order_no, body, "
                      f"created_at, next_attempt_at) VALUES ({', '.join([m] * 6)})"),
        delivered=(f"UPDATE {outbox} SET delivered_at = {m}, last_attempt_at = {m}, "
                   f"attempts = attempts + 1 WHERE event_id = {m}"),
        attempt_failed=(f"UPDATE {outbox} SET last_attempt_at = {m}, "
                        f"next_attempt_at = {m}, last_error = {m}, attempts = attempts + 1 "
                        f"WHERE event_id = {m}"),
    )


def write_callback(c: Any, sql: OrderSql, transition: Transition, callback: NewCallback, *,
                   forward: bool, now: datetime, where: str) -> RecordResult:
    """Record ``callback`` on ``c`` (a connection in the caller's write transaction):
    nothing for a duplicate (same content hash); else the next chain entry, the new head,
    the order's state when the callback is applied, and its outbox event when forwarding."""
    seq, prev = chain_head(c.execute(sql.head_for_write).fetchone(),
                           c.execute(sql.last_callback).fetchone(), where)
    if c.execute(sql.duplicate, (callback.content_hash,)).fetchone():
        return RecordResult(duplicate=True, record=None)
    state = c.execute(sql.status, (callback.order_no,)).fetchone()
    previous = int(state[0]) if state else None
    outcome = str(transition(previous, callback.status))
    event_id = new_event_id() if forward and outcome == APPLIED else None
    at = timestamp_text(now)
    seq += 1
    payload = callback_payload(seq, prev, callback, outcome, previous, event_id, at)
    record_hash = entry_hash(payload)
    c.execute(sql.insert_callback, (*(payload[k] for k in CALLBACK_KEYS), record_hash))
    c.execute(sql.update_head, (seq, record_hash))
    if outcome == APPLIED:
        c.execute(sql.upsert_state, (callback.order_no, callback.merchant_order_no,
                                     callback.status, callback.deal_amount,
                                     callback.order_type, at, at))
    if event_id is not None:
        c.execute(sql.insert_event, (event_id, seq, callback.order_no,
                                     event_body(event_id, callback, at), at, at))
    return RecordResult(duplicate=False, record=record_from_payload(payload, record_hash, now))


def orders_query(sql: OrderSql, since: datetime | None,
                 statuses: Collection[int] | None) -> tuple[str, list[Any]]:
    """The query of :meth:`~cosigner.store.orders.OrderJournal.orders` and its parameters."""
    where, params = " WHERE 1 = 1", list[Any]()
    if since is not None:
        where += f" AND updated_at >= {sql.mark}"
        params.append(timestamp_text(since))
    if statuses is not None:
        wanted = sorted(set(statuses))
        where += f" AND status IN ({sql.marks(len(wanted))})" if wanted else " AND 1 = 0"
        params.extend(wanted)
    return sql.select_states + where + " ORDER BY updated_at, order_no", params


class SqlOrderJournal:
    """What the SQL order journals share: the reads and the outbox updates, over
    :attr:`SQL` and the store's own ``_fetch`` and ``_update_event`` (which hold its
    lock and turn a database error into StoreError)."""

    SQL: ClassVar[OrderSql]
    where: str

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _update_event(self, sql: str, params: Sequence[Any], event_id: str) -> None:
        raise NotImplementedError

    def delivered(self, event_id: str, at: datetime) -> None:
        self._update_event(self.SQL.delivered,
                           (timestamp_text(at), timestamp_text(at), event_id), event_id)

    def attempt_failed(self, event_id: str, at: datetime, retry_at: datetime,
                       error: str) -> None:
        self._update_event(
            self.SQL.attempt_failed,
            (timestamp_text(at), timestamp_text(retry_at), error[:500], event_id), event_id)

    def due_events(self, now: datetime, limit: int) -> list[OutboxEvent]:
        rows = self._fetch(self.SQL.select_due, (timestamp_text(now), limit))
        return [outbox_event(r) for r in rows]

    def next_due(self) -> datetime | None:
        rows = self._fetch(self.SQL.select_next_due)
        return parse_timestamp(rows[0][0]) if rows and rows[0][0] else None

    def queue_size(self) -> int:
        return int(self._fetch(self.SQL.queue_size)[0][0])

    def orders(self, since: datetime | None = None,
               statuses: Collection[int] | None = None) -> list[OrderState]:
        return [order_state(r) for r in self._fetch(*orders_query(self.SQL, since, statuses))]

    def order(self, order_no: str) -> OrderState | None:
        rows = self._fetch(f"{self.SQL.select_states} WHERE order_no = {self.SQL.mark}",
                           (order_no,))
        return order_state(rows[0]) if rows else None

    def history(self, order_no: str) -> list[CallbackRecord]:
        rows = self._fetch(f"{self.SQL.select_callbacks} WHERE order_no = {self.SQL.mark} "
                           "ORDER BY seq", (order_no,))
        return [callback_from_row(r, self.where) for r in rows]

    def events(self, order_no: str) -> list[OutboxEvent]:
        rows = self._fetch(f"{self.SQL.select_events} WHERE order_no = {self.SQL.mark} "
                           "ORDER BY seq", (order_no,))
        return [outbox_event(r) for r in rows]
