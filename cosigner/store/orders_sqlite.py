"""The order journal in the SQLite journal file: tables of its own beside ``entries``.

``order_callbacks`` is the hash-chained log (append-only: triggers refuse UPDATE and
DELETE), ``order_chain_head`` its head (so cutting callbacks off the end is
detected), ``order_state`` each order's current status and ``order_outbox`` the
events to forward.  The tables are part of the journal's schema (version 3 of
:mod:`cosigner.store.sqlite`, applied by ``cosigner journal init``); this class never
creates a file or a table.  It has its own connection: SQLite (WAL) serialises its writes with
the decision journal's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cosigner.errors import JournalUnavailableError, StoreError
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
from cosigner.store.sqlite import transaction

_T = TypeVar("_T")

ORDER_TABLES = ("order_callbacks", "order_chain_head", "order_state", "order_outbox")

# The SQL below is built from constants only, never from input (S608 is a false positive).
_INSERT_CALLBACK = (f"INSERT INTO order_callbacks ({', '.join(CALLBACK_COLUMNS)}) "  # noqa: S608
                    f"VALUES ({', '.join('?' * len(CALLBACK_COLUMNS))})")
_SELECT_CALLBACKS = f"SELECT {', '.join(CALLBACK_COLUMNS)} FROM order_callbacks"  # noqa: S608
_EVENT_COLUMNS = ("event_id", "seq", "order_no", "body", "created_at", "attempts",
                  "next_attempt_at", "last_attempt_at", "last_error", "delivered_at")
_SELECT_EVENTS = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM order_outbox"  # noqa: S608
# Due events, an event waiting while an older one of its order is undelivered.
_SELECT_DUE = (_SELECT_EVENTS + " AS o WHERE o.delivered_at IS NULL "  # noqa: S608
               "AND o.next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM order_outbox AS p "
               "WHERE p.order_no = o.order_no AND p.delivered_at IS NULL AND p.seq < o.seq) "
               "ORDER BY o.seq LIMIT ?")
_SELECT_NEXT_DUE = ("SELECT min(o.next_attempt_at) FROM order_outbox AS o "
                    "WHERE o.delivered_at IS NULL AND NOT EXISTS (SELECT 1 FROM order_outbox "
                    "AS p WHERE p.order_no = o.order_no AND p.delivered_at IS NULL "
                    "AND p.seq < o.seq)")
_STATE_COLUMNS = ("order_no", "merchant_order_no", "status", "deal_amount", "order_type",
                  "first_seen", "updated_at", "callbacks")
_SELECT_STATES = f"SELECT {', '.join(_STATE_COLUMNS)} FROM order_state"  # noqa: S608


class SqliteOrderJournal:
    """An :class:`~cosigner.store.orders.OrderJournal` in the SQLite journal at ``path``.

    ``writer``: the daemon's instance, which verifies the callback chain when it
    opens; read-only commands leave that to ``verify``.
    """

    def __init__(self, path: str | os.PathLike[str], transition: Transition, *,
                 writer: bool = False, clock: Clock = utc_now) -> None:
        self.path = Path(os.path.abspath(path))
        self._transition = transition
        self._writer = writer
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteOrderJournal({str(self.path)!r})"

    def _unavailable(self, problem: str) -> JournalUnavailableError:
        return JournalUnavailableError(f"journal {self.path} {problem}")

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            if not self.path.is_file():
                raise self._unavailable("does not exist (create it with "
                                        "`cosigner journal init`)")
            uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=rw"
            try:
                conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=10.0)
            except sqlite3.Error as exc:
                raise self._unavailable(f"is unreadable ({exc})") from exc
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        if self._writer:
            result = self.verify()
            if not result.ok:
                self.close()
                raise self._unavailable(f"order callbacks do not verify: {result.problem}")

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "entries" not in tables:
                raise self._unavailable("is not a cosigner journal (no entries table)")
            missing = [t for t in ORDER_TABLES if t not in tables]
            if missing:
                raise self._unavailable(f"has no order tables ({', '.join(missing)} "
                                        "missing): run `cosigner journal init` to migrate it")
        except sqlite3.Error as exc:
            raise self._unavailable(f"is unreadable ({exc})") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    # -- writing ---------------------------------------------------------------------

    def record(self, callback: NewCallback, *, forward: bool) -> RecordResult:
        with self._lock:
            conn = self._connection()
            now = self._clock()
            at = timestamp_text(now)

            def write(c: sqlite3.Connection) -> RecordResult:
                if c.execute("SELECT 1 FROM order_callbacks WHERE content_hash = ?",
                             (callback.content_hash,)).fetchone():
                    return RecordResult(duplicate=True, record=None)
                seq, prev = self._head(c)
                state = c.execute("SELECT status, first_seen, callbacks FROM order_state "
                                  "WHERE order_no = ?", (callback.order_no,)).fetchone()
                previous = state[0] if state else None
                outcome = str(self._transition(previous, callback.status))
                event_id = new_event_id() if forward and outcome == APPLIED else None
                seq += 1
                payload = callback_payload(seq, prev, callback, outcome, previous, event_id,
                                           at)
                record_hash = entry_hash(payload)
                c.execute(_INSERT_CALLBACK,
                          (*(payload[k] for k in CALLBACK_KEYS), record_hash))
                c.execute("UPDATE order_chain_head SET seq = ?, hash = ? WHERE id = 1",
                          (seq, record_hash))
                if outcome == APPLIED:
                    c.execute(
                        "INSERT INTO order_state (order_no, merchant_order_no, status, "
                        "deal_amount, order_type, first_seen, updated_at, callbacks) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (order_no) DO UPDATE SET "
                        "merchant_order_no = excluded.merchant_order_no, "
                        "status = excluded.status, deal_amount = excluded.deal_amount, "
                        "order_type = excluded.order_type, updated_at = excluded.updated_at, "
                        "callbacks = order_state.callbacks + 1",
                        (callback.order_no, callback.merchant_order_no, callback.status,
                         callback.deal_amount, callback.order_type, at, at))
                if event_id is not None:
                    c.execute(
                        "INSERT INTO order_outbox (event_id, seq, order_no, body, created_at, "
                        "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (event_id, seq, callback.order_no,
                         event_body(event_id, callback, at), at, at))
                return RecordResult(duplicate=False,
                                    record=record_from_payload(payload, record_hash, now))

            return self._transaction(conn, write)

    def delivered(self, event_id: str, at: datetime) -> None:
        self._update_event(
            "UPDATE order_outbox SET delivered_at = ?, last_attempt_at = ?, "
            "attempts = attempts + 1 WHERE event_id = ?",
            (timestamp_text(at), timestamp_text(at), event_id), event_id)

    def attempt_failed(self, event_id: str, at: datetime, retry_at: datetime,
                       error: str) -> None:
        self._update_event(
            "UPDATE order_outbox SET last_attempt_at = ?, next_attempt_at = ?, "
            "last_error = ?, attempts = attempts + 1 WHERE event_id = ?",
            (timestamp_text(at), timestamp_text(retry_at), error[:500], event_id), event_id)

    def _update_event(self, sql: str, params: Sequence[Any], event_id: str) -> None:
        with self._lock:
            conn = self._connection()

            def write(c: sqlite3.Connection) -> None:
                if c.execute(sql, params).rowcount != 1:
                    raise StoreError(f"journal {self.path}: no outbox event {event_id!r}")

            self._transaction(conn, write)

    # -- reading ---------------------------------------------------------------------

    def due_events(self, now: datetime, limit: int) -> list[OutboxEvent]:
        rows = self._fetch(_SELECT_DUE, (timestamp_text(now), limit))
        return [outbox_event(r) for r in rows]

    def next_due(self) -> datetime | None:
        rows = self._fetch(_SELECT_NEXT_DUE)
        return parse_timestamp(rows[0][0]) if rows and rows[0][0] else None

    def queue_size(self) -> int:
        rows = self._fetch("SELECT count(*) FROM order_outbox WHERE delivered_at IS NULL")
        return int(rows[0][0])

    def orders(self, since: datetime | None = None,
               statuses: Collection[int] | None = None) -> list[OrderState]:
        where, params = " WHERE 1 = 1", list[Any]()
        if since is not None:
            where += " AND updated_at >= ?"
            params.append(timestamp_text(since))
        if statuses is not None:
            wanted = sorted(set(statuses))
            where += f" AND status IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        rows = self._fetch(_SELECT_STATES + where + " ORDER BY updated_at, order_no", params)
        return [order_state(r) for r in rows]

    def order(self, order_no: str) -> OrderState | None:
        rows = self._fetch(_SELECT_STATES + " WHERE order_no = ?", (order_no,))
        return order_state(rows[0]) if rows else None

    def history(self, order_no: str) -> list[CallbackRecord]:
        rows = self._fetch(_SELECT_CALLBACKS + " WHERE order_no = ? ORDER BY seq", (order_no,))
        return [callback_from_row(r, str(self.path)) for r in rows]

    def events(self, order_no: str) -> list[OutboxEvent]:
        rows = self._fetch(_SELECT_EVENTS + " WHERE order_no = ? ORDER BY seq", (order_no,))
        return [outbox_event(r) for r in rows]

    def verify(self) -> VerifyResult:
        with self._lock:
            conn = self._connection()

            def walk(c: sqlite3.Connection) -> VerifyResult:
                head = c.execute("SELECT seq, hash FROM order_chain_head WHERE id = 1"
                                 ).fetchone()
                cursor = c.execute(_SELECT_CALLBACKS + " ORDER BY seq")
                return verify_entries((stored_callback(r) for r in cursor),
                                      (head[0], head[1]) if head else (-1, ""))

            return self._transaction(conn, walk, begin="BEGIN")

    # -- internals -------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"journal {self.path} (orders) is not open")
        return self._conn

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"journal {self.path} cannot be read ({exc})") from exc

    def _transaction(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T],
                     begin: str = "BEGIN IMMEDIATE") -> _T:
        return transaction(str(self.path), conn, fn, begin)

    def _head(self, conn: sqlite3.Connection) -> tuple[int, str]:
        head = conn.execute("SELECT seq, hash FROM order_chain_head WHERE id = 1").fetchone()
        last = conn.execute("SELECT seq, record_hash FROM order_callbacks "
                            "ORDER BY seq DESC LIMIT 1").fetchone()
        return chain_head(head, last, str(self.path))




