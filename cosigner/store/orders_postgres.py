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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from cosigner.errors import JournalUnavailableError, LockLostError, StoreError
from cosigner.store.base import Clock, VerifyResult, utc_now
from cosigner.store.chain import verify_entries
from cosigner.store.orders import (
    NewCallback,
    RecordResult,
    Transition,
    stored_callback,
)
from cosigner.store.orders_sql import (
    EVENT_COLUMNS,
    STATE_COLUMNS,
    SqlOrderJournal,
    order_sql,
    write_callback,
)
from cosigner.store.postgres import SCHEMA_VERSION, PostgresJournal, mask_url

_T = TypeVar("_T")

ORDER_TABLES = ("cosigner_order_callbacks", "cosigner_order_head", "cosigner_order_state",
                "cosigner_order_outbox")
_SQL = order_sql(*ORDER_TABLES, mark="%s", lock_head=" FOR UPDATE")


class PostgresOrderJournal(SqlOrderJournal):
    """An :class:`~cosigner.store.orders.OrderJournal` in the PostgreSQL journal ``url``.

    ``writer``: the daemon's instance, which verifies the callback chain when it opens;
    read-only commands leave that to ``verify``.  ``fence``: the decision journal whose
    leader epoch every :meth:`record` checks (None: no fencing, e.g. ``orders`` commands
    and tests).  One connection of its own (autocommit, explicit transactions), guarded
    by a lock; a broken one is replaced at the next call.
    """

    SQL = _SQL

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
        # The chain head is read FOR UPDATE first: replicas recording at once serialise.
        return self._transaction(lambda c: write_callback(
            c, self.SQL, self._transition, callback, forward=forward, now=now, where=self.where),
            fenced=True)

    def _update_event(self, sql: str, params: Sequence[Any], event_id: str) -> None:
        def write(c: psycopg.Connection[Any]) -> None:
            if c.execute(sql, params).rowcount != 1:
                raise StoreError(f"journal {self.where}: no outbox event {event_id!r}")

        # Not fenced: a delivery this process made is a fact even if it lost the lead.
        self._transaction(write, fenced=False)

    # -- reading -----------------------------------------------------------------------

    def verify(self) -> VerifyResult:
        """Walk the callback chain in one repeatable-read snapshot."""
        def walk(c: psycopg.Connection[Any]) -> VerifyResult:
            with c.transaction():
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                head = c.execute(self.SQL.head).fetchone()
                with c.cursor(name=f"cosigner_orders_{secrets.token_hex(4)}") as cur:
                    cur.itersize = 2000
                    cur.execute(self.SQL.select_callbacks + " ORDER BY seq")
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
    _, _, state, outbox = ORDER_TABLES
    with conn.cursor() as cur:
        cur.executemany(_SQL.insert_callback, rows.callbacks)
        cur.executemany(f"INSERT INTO {state} ({', '.join(STATE_COLUMNS)}) "  # noqa: S608
                        f"VALUES ({_SQL.marks(len(STATE_COLUMNS))})", rows.states)
        cur.executemany(f"INSERT INTO {outbox} ({', '.join(EVENT_COLUMNS)}) "  # noqa: S608
                        f"VALUES ({_SQL.marks(len(EVENT_COLUMNS))})",
                        [(*r[:3], bytes(r[3]), *r[4:]) for r in rows.events])
    conn.execute(_SQL.update_head, rows.head)
