"""The order journal in the PostgreSQL journal: the ``cosigner_order_*`` tables.

The same layout and semantics as :mod:`cosigner.store.orders_sqlite`:
``cosigner_order_callbacks`` is the hash-chained log (append-only: triggers refuse
UPDATE, DELETE and TRUNCATE), ``cosigner_order_head`` its head (so cutting callbacks off
the end is detected), ``cosigner_order_state`` each order's current status and
``cosigner_order_outbox`` the events to forward.  The tables are schema version 2 of
:mod:`cosigner.store.postgres` (applied by ``cosigner journal init``); this class never
creates a table.

Every :meth:`PostgresOrderJournal.record` is one transaction that starts by locking the
order head row ``FOR UPDATE``: replicas recording callbacks at once are serialised by
the database, so the chain, the duplicate check and the order's state are all read
under that lock.  With ``fence`` (the daemon's decision journal), the transaction also
locks the decision head row ``FOR SHARE`` and checks the leader epoch, like the
decision writes: a process that lost (or never held) the leader lock cannot record,
and a new leader's epoch bump waits for a callback write in progress.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg

from cosigner.errors import JournalUnavailableError, LockLostError, StoreError
from cosigner.store.base import Clock, VerifyResult, utc_now
from cosigner.store.chain import (
    entry_hash,
    parse_timestamp,
    timestamp_text,
    verify_entries,
)
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
    stored_callback,
)
from cosigner.store.postgres import SCHEMA_VERSION, PostgresJournal, mask_url

_T = TypeVar("_T")

ORDER_TABLES = ("cosigner_order_callbacks", "cosigner_order_head", "cosigner_order_state",
                "cosigner_order_outbox")

# The SQL below is built from constants only, never from input (S608 is a false positive).
_INSERT_CALLBACK = ("INSERT INTO cosigner_order_callbacks "  # noqa: S608
                    f"({', '.join(CALLBACK_COLUMNS)}) "
                    f"VALUES ({', '.join(['%s'] * len(CALLBACK_COLUMNS))})")
_SELECT_CALLBACKS = (f"SELECT {', '.join(CALLBACK_COLUMNS)} "  # noqa: S608
                     "FROM cosigner_order_callbacks")
EVENT_COLUMNS = _EVENT_COLUMNS = ("event_id", "seq", "order_no", "body", "created_at",
                                  "attempts", "next_attempt_at", "last_attempt_at",
                                  "last_error", "delivered_at")
_SELECT_EVENTS = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM cosigner_order_outbox"  # noqa: S608
# Due events, an event waiting while an older one of its order is undelivered.
_SELECT_DUE = (_SELECT_EVENTS + " AS o WHERE o.delivered_at IS NULL "  # noqa: S608
               "AND o.next_attempt_at <= %s AND NOT EXISTS (SELECT 1 FROM "
               "cosigner_order_outbox AS p WHERE p.order_no = o.order_no "
               "AND p.delivered_at IS NULL AND p.seq < o.seq) ORDER BY o.seq LIMIT %s")
_SELECT_NEXT_DUE = ("SELECT min(o.next_attempt_at) FROM cosigner_order_outbox AS o "
                    "WHERE o.delivered_at IS NULL AND NOT EXISTS (SELECT 1 FROM "
                    "cosigner_order_outbox AS p WHERE p.order_no = o.order_no "
                    "AND p.delivered_at IS NULL AND p.seq < o.seq)")
STATE_COLUMNS = _STATE_COLUMNS = ("order_no", "merchant_order_no", "status", "deal_amount",
                                  "order_type", "first_seen", "updated_at", "callbacks")
_SELECT_STATES = f"SELECT {', '.join(_STATE_COLUMNS)} FROM cosigner_order_state"  # noqa: S608


class PostgresOrderJournal:
    """An :class:`~cosigner.store.orders.OrderJournal` in the PostgreSQL journal ``url``.

    ``writer``: the daemon's instance, which verifies the callback chain when it opens;
    read-only commands leave that to ``verify``.  ``fence``: the decision journal whose
    leader epoch every :meth:`record` checks (None: no fencing, e.g. ``orders`` commands
    and tests).  One connection of its own (autocommit, explicit transactions), guarded
    by a lock; a broken one is replaced at the next call.
    """

    def __init__(self, url: str, transition: Transition, *, writer: bool = False,
                 fence: PostgresJournal | None = None, clock: Clock = utc_now,
                 connect_timeout: float = 10.0) -> None:
        self._url = url
        self.where = mask_url(url)
        self._transition = transition
        self._writer = writer
        self._fence = fence
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._opened = False

    def __repr__(self) -> str:
        return f"PostgresOrderJournal({self.where!r})"

    def _unavailable(self, problem: str) -> JournalUnavailableError:
        return JournalUnavailableError(f"journal {self.where} {problem}")

    def _scrub(self, exc: BaseException) -> str:
        """An exception's first line without the URL (nor so its userinfo)."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return text.replace(self._url, self.where)

    # -- opening -----------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._opened:
                return
            conn = self._connect()
            try:
                self._check_schema(conn)
            except psycopg.Error as exc:
                conn.close()
                raise self._unavailable(f"is unreadable ({self._scrub(exc)})") from None
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._opened = True
        if self._writer:
            try:
                result = self.verify()
            except StoreError as exc:
                self.close()
                raise self._unavailable(f"order callbacks cannot be verified ({exc})") from None
            if not result.ok:
                self.close()
                raise self._unavailable(f"order callbacks do not verify: {result.problem}")

    def _connect(self) -> psycopg.Connection[Any]:
        name = f"cosigner orders {socket.gethostname()} pid {os.getpid()}"[:63]
        try:
            return psycopg.connect(
                self._url, autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout)), application_name=name,
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                tcp_user_timeout=int(self._connect_timeout * 1000))
        except psycopg.Error as exc:
            raise self._unavailable(f"cannot be reached ({self._scrub(exc)})") from None

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT to_regclass('cosigner_meta') IS NOT NULL").fetchone()
        if not row or not row[0]:
            raise self._unavailable("does not exist here (no cosigner tables); create it "
                                    "with `cosigner journal init`")
        found = conn.execute(
            "SELECT value FROM cosigner_meta WHERE key = 'schema_version'").fetchone()
        version = int(found[0]) if found and str(found[0]).isdigit() else -1
        if version > SCHEMA_VERSION:
            raise self._unavailable(f"has schema version {version}, newer than this cosigner "
                                    f"supports ({SCHEMA_VERSION}); upgrade cosigner")
        missing = [t for t in ORDER_TABLES if not conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()[0]]  # type: ignore[index]
        if missing:
            raise self._unavailable(f"has no order tables ({', '.join(missing)} missing): "
                                    "run `cosigner journal init` to migrate it")

    def close(self) -> None:
        with self._lock:
            self._opened = False
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    # -- writing -----------------------------------------------------------------------

    def record(self, callback: NewCallback, *, forward: bool) -> RecordResult:
        now = self._clock()
        at = timestamp_text(now)

        def write(c: psycopg.Connection[Any]) -> RecordResult:
            seq, prev = self._lock_head(c)
            if c.execute("SELECT 1 FROM cosigner_order_callbacks WHERE content_hash = %s",
                         (callback.content_hash,)).fetchone():
                return RecordResult(duplicate=True, record=None)
            state = c.execute("SELECT status FROM cosigner_order_state WHERE order_no = %s",
                              (callback.order_no,)).fetchone()
            previous = int(state[0]) if state else None
            outcome = str(self._transition(previous, callback.status))
            event_id = new_event_id() if forward and outcome == APPLIED else None
            seq += 1
            payload = callback_payload(seq, prev, callback, outcome, previous, event_id, at)
            record_hash = entry_hash(payload)
            c.execute(_INSERT_CALLBACK, (*(payload[k] for k in CALLBACK_KEYS), record_hash))
            c.execute("UPDATE cosigner_order_head SET seq = %s, hash = %s WHERE id = 1",
                      (seq, record_hash))
            if outcome == APPLIED:
                c.execute(
                    "INSERT INTO cosigner_order_state (order_no, merchant_order_no, status, "
                    "deal_amount, order_type, first_seen, updated_at, callbacks) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, 1) ON CONFLICT (order_no) DO UPDATE "
                    "SET merchant_order_no = excluded.merchant_order_no, "
                    "status = excluded.status, deal_amount = excluded.deal_amount, "
                    "order_type = excluded.order_type, updated_at = excluded.updated_at, "
                    "callbacks = cosigner_order_state.callbacks + 1",
                    (callback.order_no, callback.merchant_order_no, callback.status,
                     callback.deal_amount, callback.order_type, at, at))
            if event_id is not None:
                c.execute(
                    "INSERT INTO cosigner_order_outbox (event_id, seq, order_no, body, "
                    "created_at, next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    (event_id, seq, callback.order_no, event_body(event_id, callback, at),
                     at, at))
            return RecordResult(duplicate=False,
                                record=record_from_payload(payload, record_hash, now))

        return self._transaction(write, fenced=True)

    def delivered(self, event_id: str, at: datetime) -> None:
        self._update_event(
            "UPDATE cosigner_order_outbox SET delivered_at = %s, last_attempt_at = %s, "
            "attempts = attempts + 1 WHERE event_id = %s",
            (timestamp_text(at), timestamp_text(at), event_id), event_id)

    def attempt_failed(self, event_id: str, at: datetime, retry_at: datetime,
                       error: str) -> None:
        self._update_event(
            "UPDATE cosigner_order_outbox SET last_attempt_at = %s, next_attempt_at = %s, "
            "last_error = %s, attempts = attempts + 1 WHERE event_id = %s",
            (timestamp_text(at), timestamp_text(retry_at), error[:500], event_id), event_id)

    def _update_event(self, sql: str, params: Sequence[Any], event_id: str) -> None:
        def write(c: psycopg.Connection[Any]) -> None:
            if c.execute(sql, params).rowcount != 1:
                raise StoreError(f"journal {self.where}: no outbox event {event_id!r}")

        # Not fenced: a delivery this process made is a fact even if it lost the lead.
        self._transaction(write, fenced=False)

    # -- reading -----------------------------------------------------------------------

    def due_events(self, now: datetime, limit: int) -> list[OutboxEvent]:
        return [outbox_event(r) for r in self._fetch(_SELECT_DUE, (timestamp_text(now), limit))]

    def next_due(self) -> datetime | None:
        rows = self._fetch(_SELECT_NEXT_DUE)
        return parse_timestamp(rows[0][0]) if rows and rows[0][0] else None

    def queue_size(self) -> int:
        rows = self._fetch("SELECT count(*) FROM cosigner_order_outbox "
                           "WHERE delivered_at IS NULL")
        return int(rows[0][0])

    def orders(self, since: datetime | None = None,
               statuses: Collection[int] | None = None) -> list[OrderState]:
        where, params = " WHERE true", list[Any]()
        if since is not None:
            where += " AND updated_at >= %s"
            params.append(timestamp_text(since))
        if statuses is not None:
            where += " AND status = ANY(%s)"
            params.append(sorted(set(statuses)))
        rows = self._fetch(_SELECT_STATES + where + " ORDER BY updated_at, order_no", params)
        return [order_state(r) for r in rows]

    def order(self, order_no: str) -> OrderState | None:
        rows = self._fetch(_SELECT_STATES + " WHERE order_no = %s", (order_no,))
        return order_state(rows[0]) if rows else None

    def history(self, order_no: str) -> list[CallbackRecord]:
        rows = self._fetch(_SELECT_CALLBACKS + " WHERE order_no = %s ORDER BY seq",
                           (order_no,))
        return [callback_from_row(r, self.where) for r in rows]

    def events(self, order_no: str) -> list[OutboxEvent]:
        rows = self._fetch(_SELECT_EVENTS + " WHERE order_no = %s ORDER BY seq", (order_no,))
        return [outbox_event(r) for r in rows]

    def verify(self) -> VerifyResult:
        """Walk the callback chain in one repeatable-read snapshot."""
        def walk(c: psycopg.Connection[Any]) -> VerifyResult:
            with c.transaction():
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                head = c.execute("SELECT seq, hash FROM cosigner_order_head WHERE id = 1"
                                 ).fetchone()
                with c.cursor(name=f"cosigner_orders_{secrets.token_hex(4)}") as cur:
                    cur.itersize = 2000
                    cur.execute(_SELECT_CALLBACKS + " ORDER BY seq")
                    return verify_entries((stored_callback(r) for r in cur),
                                          (int(head[0]), str(head[1])) if head else (-1, ""))

        return self._call(walk, "read")

    # -- internals ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if not self._opened:
            raise StoreError(f"journal {self.where} (orders) is not open")
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
            self._conn = None
            try:
                self._conn = self._connect()
            except JournalUnavailableError as exc:
                raise StoreError(str(exc)) from None
        return self._conn

    def _call(self, fn: Callable[[psycopg.Connection[Any]], _T], doing: str) -> _T:
        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    self._conn = None
                    with contextlib.suppress(Exception):
                        conn.close()
                tail = "; nothing was recorded" if doing == "written" else ""
                raise StoreError(f"journal {self.where} cannot be {doing} "
                                 f"({self._scrub(exc)}){tail}") from None

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._call(lambda c: c.execute(sql, params).fetchall(), "read")

    def _transaction(self, fn: Callable[[psycopg.Connection[Any]], _T], *,
                     fenced: bool) -> _T:
        def run(c: psycopg.Connection[Any]) -> _T:
            with c.transaction():
                if fenced:
                    self._check_leader(c)
                return fn(c)

        return self._call(run, "written")

    def _check_leader(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse unless this process is the writer of the fence's journal; the decision
        head row stays share-locked to the commit, so the epoch cannot move meanwhile."""
        fence = self._fence
        if fence is None or not fence.fenced:
            return
        row = conn.execute("SELECT leader_epoch FROM cosigner_head WHERE id = 1 FOR SHARE"
                           ).fetchone()
        held = fence.epoch
        if row is None or held is None or int(row[0]) != held:
            raise LockLostError(f"journal {self.where}: this process is not the writer (leader "
                                f"epoch {row[0] if row else '?'}, this one holds "
                                f"{held if held is not None else 'none'}); the order "
                                "callback was not recorded")

    def _lock_head(self, conn: psycopg.Connection[Any]) -> tuple[int, str]:
        head = conn.execute("SELECT seq, hash FROM cosigner_order_head WHERE id = 1 "
                            "FOR UPDATE").fetchone()
        last = conn.execute("SELECT seq, record_hash FROM cosigner_order_callbacks "
                            "ORDER BY seq DESC LIMIT 1").fetchone()
        return chain_head(head, last, self.where)







@dataclass(frozen=True, slots=True)
class OrderRows:
    """The order tables of a journal as stored (``journal copy``): callbacks in
    :data:`CALLBACK_COLUMNS` order by seq, the recorded head, state and outbox rows."""

    callbacks: list[tuple[Any, ...]]
    head: tuple[int, str]
    states: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]

    def check(self, where: str) -> None:
        """Raise StoreError unless the callbacks hash, link and end at the head."""
        result = verify_entries((stored_callback(r) for r in self.callbacks), self.head)
        if not result.ok:
            raise StoreError(f"journal {where}: its order callbacks do not verify "
                             f"({result.problem}); nothing was copied")


def import_order_rows(conn: psycopg.Connection[Any], rows: OrderRows, where: str) -> None:
    """Insert ``rows`` (checked) into the empty order tables on ``conn``, in the caller's
    transaction, hashes as they are."""
    head = conn.execute("SELECT seq FROM cosigner_order_head WHERE id = 1 FOR UPDATE"
                        ).fetchone()
    if head is None or int(head[0]) != 0 or conn.execute(
            "SELECT 1 FROM cosigner_order_callbacks LIMIT 1").fetchone():
        raise StoreError(f"journal {where} already has order callbacks; copy only into an "
                         "empty journal")
    state_columns = ", ".join(_STATE_COLUMNS)
    event_columns = ", ".join(_EVENT_COLUMNS)
    with conn.cursor() as cur:
        cur.executemany(_INSERT_CALLBACK, rows.callbacks)
        cur.executemany(f"INSERT INTO cosigner_order_state ({state_columns}) "  # noqa: S608
                        f"VALUES ({', '.join(['%s'] * len(_STATE_COLUMNS))})", rows.states)
        cur.executemany(f"INSERT INTO cosigner_order_outbox ({event_columns}) "  # noqa: S608
                        f"VALUES ({', '.join(['%s'] * len(_EVENT_COLUMNS))})",
                        [(*r[:3], bytes(r[3]), *r[4:]) for r in rows.events])
    conn.execute("UPDATE cosigner_order_head SET seq = %s, hash = %s WHERE id = 1", rows.head)
