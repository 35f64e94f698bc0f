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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cosigner.errors import JournalUnavailableError, StoreError
from cosigner.store.base import Clock, VerifyResult, utc_now
from cosigner.store.chain import verify_entries
from cosigner.store.orders import (
    NewCallback,
    RecordResult,
    Transition,
    stored_callback,
)
from cosigner.store.orders_sql import SqlOrderJournal, order_sql, write_callback
from cosigner.store.sqlite import transaction

_T = TypeVar("_T")

ORDER_TABLES = ("order_callbacks", "order_chain_head", "order_state", "order_outbox")
_SQL = order_sql(*ORDER_TABLES, mark="?")


class SqliteOrderJournal(SqlOrderJournal):
    """An :class:`~cosigner.store.orders.OrderJournal` in the SQLite journal at ``path``.

    ``writer``: the daemon's instance, which verifies the callback chain when it
    opens; read-only commands leave that to ``verify``.
    """

    SQL = _SQL

    def __init__(self, path: str | os.PathLike[str], transition: Transition, *,
                 writer: bool = False, clock: Clock = utc_now) -> None:
        self.path = Path(os.path.abspath(path))
        self.where = str(self.path)
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
            return self._transaction(conn, lambda c: write_callback(
                c, self.SQL, self._transition, callback, forward=forward, now=now,
                where=self.where))

    def _update_event(self, sql: str, params: Sequence[Any], event_id: str) -> None:
        with self._lock:
            conn = self._connection()

            def write(c: sqlite3.Connection) -> None:
                if c.execute(sql, params).rowcount != 1:
                    raise StoreError(f"journal {self.path}: no outbox event {event_id!r}")

            self._transaction(conn, write)

    # -- reading ---------------------------------------------------------------------

    def verify(self) -> VerifyResult:
        with self._lock:
            conn = self._connection()

            def walk(c: sqlite3.Connection) -> VerifyResult:
                head = c.execute(self.SQL.head).fetchone()
                cursor = c.execute(self.SQL.select_callbacks + " ORDER BY seq")
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
