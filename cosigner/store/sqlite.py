"""The default journal: one SQLite file (WAL, ``synchronous=FULL``, mode 0600).

Layout: ``entries`` holds the hash-chained log (one row per decision or
outcome, never updated: triggers refuse UPDATE and DELETE), ``meta`` holds the
schema version, the creation id and the chain's head (seq and hash of the last
entry, so that cutting entries off the end is detected).  The per-item index is
made of SQL indexes over ``entries``; a decision's state is its latest outcome.

Next to the database, ``<db>.marker`` (mode 0600) records that a journal was
created here and its creation id: a database that disappears or is swapped for
another one is refused instead of silently starting from empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cosigner.errors import (
    JournalConflictError,
    JournalLockedError,
    JournalUnavailableError,
    LockLostError,
    StoreError,
)
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
    parse_timestamp,
    timestamp_text,
    verified_checkpoint,
    verify_entries,
)
from cosigner.store.records import (
    COLUMNS,
    batch_verdicts,
    check_outcome,
    checked_approval,
    decision_entries,
    decision_state,
    limit_violations,
    outcome_entry,
    record_from_row,
    stored_entry,
)
from cosigner.store.witness import Witness, check_head

#: Called after every commit with the new head (metrics, the ``journal.committed`` log event).
CommitHook = Callable[[Head], None]

_T = TypeVar("_T")

# Ids per IN (...) query: well under SQLite's variable limit on every version.
_CHUNK = 500
# Rows fetched per lock acquisition while iterating records().
_PAGE = 1000


# Versioned migrations: _MIGRATIONS[v] takes a journal from schema v to v + 1.  ``journal
# init`` applies the missing ones in one transaction under the writer lock.
_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    content_hash TEXT, chain_id TEXT, from_address TEXT, to_address TEXT, amount_text TEXT,
    action TEXT, rule TEXT, reasons TEXT, policy_name TEXT, policy_sha256 TEXT, mode TEXT,
    decision_seq INTEGER, state TEXT, api_code INTEGER, api_message TEXT,
    created_at TEXT NOT NULL,
    record_hash TEXT NOT NULL
);
CREATE INDEX entries_by_item ON entries (item_id, kind, mode, seq);
CREATE INDEX entries_by_decision ON entries (decision_seq, seq);
CREATE INDEX entries_by_time ON entries (kind, created_at);
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'journal entries are append-only'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'journal entries are append-only'); END;
"""

# v2: the first-seen time of each policy bundle (governance's loosening delay), the
# verification checkpoint (start-up verifies the chain from there), and an index for the
# idempotency check inside the write transaction.
_SCHEMA_V2 = """
CREATE TABLE policies (sha256 TEXT PRIMARY KEY, first_seen TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('verified_seq', '0');
INSERT INTO meta (key, value) VALUES ('verified_hash', printf('%064d', 0));
CREATE INDEX entries_by_action ON entries (kind, mode, action, seq)
"""

# v3: C2C order callbacks (DESIGN section 10; :mod:`cosigner.store.orders_sqlite`): their
# own hash chain (order_callbacks, append-only, with its head in order_chain_head), each
# order's current state, and the outbox of events to forward to the merchant's backend.
_SCHEMA_V3 = """
CREATE TABLE order_callbacks (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    order_no TEXT NOT NULL,
    merchant_order_no TEXT NOT NULL,
    status INTEGER NOT NULL,
    deal_amount TEXT NOT NULL,
    order_type INTEGER NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    outcome TEXT NOT NULL,
    previous_status INTEGER,
    event_id TEXT,
    source TEXT,
    body TEXT NOT NULL,
    received_at TEXT NOT NULL,
    record_hash TEXT NOT NULL
);
CREATE INDEX order_callbacks_by_order ON order_callbacks (order_no, seq);
CREATE TRIGGER order_callbacks_no_update BEFORE UPDATE ON order_callbacks
    BEGIN SELECT RAISE(ABORT, 'order callbacks are append-only'); END;
CREATE TRIGGER order_callbacks_no_delete BEFORE DELETE ON order_callbacks
    BEGIN SELECT RAISE(ABORT, 'order callbacks are append-only'); END;
CREATE TABLE order_chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
INSERT INTO order_chain_head (id, seq, hash) VALUES (1, 0, printf('%064d', 0));
CREATE TABLE order_state (
    order_no TEXT PRIMARY KEY,
    merchant_order_no TEXT NOT NULL,
    status INTEGER NOT NULL,
    deal_amount TEXT NOT NULL,
    order_type INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    callbacks INTEGER NOT NULL
);
CREATE INDEX order_state_by_time ON order_state (updated_at, order_no);
CREATE TABLE order_outbox (
    event_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE REFERENCES order_callbacks (seq),
    order_no TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_attempt_at TEXT,
    last_error TEXT,
    delivered_at TEXT
);
CREATE INDEX order_outbox_pending ON order_outbox (delivered_at, order_no, seq)
"""

_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(_MIGRATIONS)

# A decision with its latest outcome (o.* NULL when there is none).  _SELECT_RECORDS_BY_SEQ
# is for callers that add "AND d.seq IN (...)": NOT INDEXED finds those decisions by seq
# (the rowid), never by scanning every decision through entries_by_time's kind (which
# SQLite's planner picks otherwise).
_RECORDS_SQL = """
SELECT d.seq, d.kind, d.prev_hash, d.item_id, d.content_hash, d.chain_id, d.from_address,
       d.to_address, d.amount_text, d.action, d.rule, d.reasons, d.policy_name,
       d.policy_sha256, d.mode, d.created_at, d.record_hash,
       o.state, o.api_code, o.api_message, o.created_at
FROM entries AS d{hint}
LEFT JOIN entries AS o ON o.seq = (
    SELECT max(x.seq) FROM entries AS x WHERE x.decision_seq = d.seq AND x.kind = 'outcome')
WHERE d.kind = 'decision'
"""
_SELECT_RECORDS = _RECORDS_SQL.format(hint="")
_SELECT_RECORDS_BY_SEQ = _RECORDS_SQL.format(hint=" NOT INDEXED")

# What an outcome needs to know of its decision; callers add "AND d.seq IN (...)".  NOT
# INDEXED: the decisions are found by seq (the rowid), never by scanning every decision
# through entries_by_time's kind (which SQLite's planner picks otherwise).
_SELECT_STATES = """
SELECT d.seq, d.item_id, d.mode, d.action,
       (SELECT o.state FROM entries AS o WHERE o.decision_seq = d.seq AND o.kind = 'outcome'
        ORDER BY o.seq DESC LIMIT 1)
FROM entries AS d NOT INDEXED WHERE d.kind = 'decision'
"""

_STATE_SQL = """
SELECT d.mode, (SELECT o.state FROM entries AS o WHERE o.decision_seq = d.seq
                AND o.kind = 'outcome' ORDER BY o.seq DESC LIMIT 1) AS outcome_state,
       count(*)
FROM entries AS d WHERE d.kind = 'decision' GROUP BY 1, 2
"""


class SqliteJournal:
    """A :class:`~cosigner.store.base.Journal` in one SQLite file.

    ``writer``: whether this process writes the journal (the daemon, ``journal init``).
    A writer holds an exclusive OS lock (``flock``) on ``<db>.lock`` from :meth:`open`
    to :meth:`close`; the kernel releases it when the process dies, even by
    ``kill -9``.  A second writer is refused (:class:`JournalLockedError`, naming the
    holder's pid); read-only users (``cosigner audit``) never take it.

    ``witness``: the rollback witness file (:mod:`cosigner.store.witness`); by default
    ``<db>.witness`` beside the database, which catches a restored older copy or a lost
    ``-wal`` but not someone who replaces the whole directory: point
    ``COSIGNER_JOURNAL_WITNESS`` at another volume for that.

    The connection is shared with worker threads (``check_same_thread=False``) and every
    call holds a lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, writer: bool = False,
                 witness: str | os.PathLike[str] | None = None, clock: Clock = utc_now,
                 on_commit: CommitHook | None = None) -> None:
        self.path = Path(os.path.abspath(path))
        self.marker_path = self.path.with_name(self.path.name + ".marker")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.witness = Witness(witness if witness is not None
                               else self.path.with_name(self.path.name + ".witness"))
        self.writer = writer
        self._clock = clock
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._journal_id = ""
        # A head committed but not yet in the witness: no write and no lookup (so no post)
        # until the witness takes it.
        self._unwitnessed: Head | None = None
        # Enforced approvals already read (and hash-checked) by this writer, by seq: the
        # write transaction reads only the newer ones.  Valid because this process holds
        # the single-writer lock while it is open.
        self._approvals: list[ApprovalRow] = []
        self._approvals_seq = 0
        self._approvals_cover: datetime | None = None

    def __repr__(self) -> str:
        return f"SqliteJournal({str(self.path)!r})"

    @property
    def journal_id(self) -> str:
        """The creation id (empty until opened or initialised)."""
        return self._journal_id

    # -- creating and opening --------------------------------------------------------

    def init(self) -> str:
        """See :meth:`Journal.init`: create the file, the schema and the marker, or migrate;
        verify the whole chain; write the witness.  Holds the writer lock meanwhile."""
        with self._lock:
            if self._conn is not None:
                raise StoreError(f"journal {self.path} is open; init it before opening")
            self._take_lock()
            try:
                marker_id = self._read_marker()
                if not self._check_file(marker_id, creating=True):
                    self._make_file()
                conn = self._connect()
                try:
                    journal_id = self._prepare(conn, marker_id=marker_id, migrate=True)
                    if marker_id is None:
                        self._write_marker(journal_id)
                    result = self._verify(conn, full=True)
                    if not result.ok:
                        raise self._unavailable(f"does not verify: {result.problem}")
                    head = Head(*self._head(conn))
                    state = self.witness.read()
                    if state is not None:
                        check_head(str(self.path), state, journal_id, head,
                                   lambda seq: self._hash_at(conn, seq), self.witness)
                    self._write_witness(journal_id, head)
                finally:
                    conn.close()
                    self.witness.close()
            finally:
                self._release_lock()
        self._journal_id = journal_id
        return journal_id

    def open(self) -> None:
        """See :meth:`Journal.open`; never creates a journal."""
        with self._lock:
            if self._conn is not None:
                return
            marker_id = self._read_marker()
            self._check_file(marker_id, creating=False)  # before the lock: create nothing
            if self.writer:
                self._take_lock()
            try:
                conn = self._connect()
                try:
                    self._journal_id = self._prepare(conn, marker_id=marker_id, migrate=False)
                    if self.writer:
                        self._check_integrity(conn)
                        if marker_id is None:  # lost: a writer puts it back
                            self._write_marker(self._journal_id)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                self._release_lock()
                raise
            self._conn = conn
            self._approvals, self._approvals_seq, self._approvals_cover = [], 0, None

    def close(self) -> None:
        """Close the connection and release the writer lock (idempotent)."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self.witness.close()
            self._release_lock()

    def lock_held(self) -> bool:
        """See :meth:`Journal.lock_held`: the lock file is still the one this process locked."""
        fd = self._lock_fd
        if fd is None or self._conn is None:
            return False
        try:
            return os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
        except OSError:
            return False

    def pragmas(self) -> dict[str, object]:
        """The connection's ``journal_mode`` and ``synchronous`` (2 is FULL), for diagnostics."""
        with self._lock:
            conn = self._connection()

            def read(c: sqlite3.Connection) -> dict[str, object]:
                return {name: c.execute(f"PRAGMA {name}").fetchone()[0]
                        for name in ("journal_mode", "synchronous")}

            return self._run(read, conn)

    def _unavailable(self, problem: str) -> JournalUnavailableError:
        return JournalUnavailableError(f"journal {self.path} {problem}")

    def _take_lock(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._unavailable(f"cannot be locked: {self.lock_path} "
                                    f"({_os_reason(exc)})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            raise JournalLockedError(
                f"journal {self.path} is locked by another writer (pid {holder or 'unknown'}, "
                f"lock {self.lock_path}); only one process may write a journal") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor releases the flock

    def _read_marker(self) -> str | None:
        try:
            text = self.marker_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._unavailable(f"cannot be checked: its marker {self.marker_path} is "
                                    f"unreadable ({_os_reason(exc)})") from exc
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "creation_id" and value.strip():
                return value.strip()
        raise self._unavailable(f"cannot be checked: its marker {self.marker_path} holds "
                                "no creation_id")

    def _check_file(self, marker_id: str | None, *, creating: bool) -> bool:
        """Whether the database file exists (and is a regular file)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if marker_id is not None:
                raise self._unavailable(
                    f"is missing but {self.marker_path} shows one existed (creation id "
                    f"{marker_id}); restore it from a backup, or remove the marker only if "
                    "starting from an empty journal is really intended") from None
            if not creating:
                raise self._unavailable(
                    "does not exist; create it with `cosigner journal init`") from None
            return False
        except OSError as exc:
            raise self._unavailable(f"is unreadable ({_os_reason(exc)})") from exc
        if not stat.S_ISREG(st.st_mode):
            raise self._unavailable("is unreadable: it is not a regular file")
        return True

    def _make_file(self) -> None:
        directory = self.path.parent
        try:
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True)
                os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise self._unavailable(f"cannot be created ({_os_reason(exc)})") from exc

    def _connect(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=rw"
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise self._unavailable(f"is unreadable ({exc})") from exc
        return conn

    def _prepare(self, conn: sqlite3.Connection, *, marker_id: str | None,
                 migrate: bool) -> str:
        """Set the pragmas, create, migrate or validate the schema; return the creation id."""
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables and marker_id is None and migrate:
                # New, or created by an init that crashed before its first commit.
                return self._migrate(conn, 0, secrets.token_hex(16))
            if not tables:
                raise self._unavailable("is empty" + (
                    f" but {self.marker_path} shows a journal existed"
                    if marker_id is not None else ""))
            if not {"meta", "entries"} <= tables:
                raise self._unavailable("is not a cosigner journal (no meta/entries tables)")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise self._unavailable(f"is unreadable ({exc})") from exc
        if str(mode).lower() != "wal":
            raise self._unavailable(f"cannot use WAL mode (journal_mode is {mode})")
        version = self._schema_version(meta.get("schema_version"))
        creation_id = str(meta.get("creation_id", ""))
        if marker_id is not None and creation_id != marker_id:
            raise self._unavailable(
                f"is not the journal {self.marker_path} recorded (creation id "
                f"{creation_id or 'none'} instead of {marker_id})")
        if version < SCHEMA_VERSION:
            if not migrate:
                raise self._unavailable(
                    f"has schema version {version}, older than {SCHEMA_VERSION}; run "
                    "`cosigner journal init` to migrate it")
            self._migrate(conn, version, creation_id)
        return creation_id

    def _schema_version(self, version_text: str | None) -> int:
        """The journal's schema version, refused when missing or newer than this cosigner's."""
        try:
            version = int(version_text) if version_text is not None else None
        except ValueError:
            version = None
        if version is None or version < 1:
            raise self._unavailable(f"has no valid schema_version ({version_text!r})")
        if version > SCHEMA_VERSION:
            raise self._unavailable(
                f"has schema version {version}, newer than this cosigner supports "
                f"({SCHEMA_VERSION}); upgrade cosigner")
        return version

    def _migrate(self, conn: sqlite3.Connection, version: int, creation_id: str) -> str:
        """Apply the migrations after ``version`` in one transaction."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for script in _MIGRATIONS[version:]:
                    for statement in script.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                if version == 0:
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                        ("creation_id", creation_id),
                        ("created_at", timestamp_text(self._clock())),
                        ("head_seq", "0"), ("head_hash", GENESIS_HASH),
                        ("schema_version", str(SCHEMA_VERSION))])
                else:
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                 (str(SCHEMA_VERSION),))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._unavailable(f"cannot be migrated to schema version {SCHEMA_VERSION} "
                                    f"({exc})") from exc
        return creation_id

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """A writer's start: the chain verifies (from the checkpoint) and is not behind
        its witness."""
        try:
            result = self._verify(conn, full=False)
            if not result.ok:
                raise self._unavailable(f"does not verify: {result.problem}; run "
                                        "`cosigner audit verify`")
            head = Head(*self._head(conn))
            check_head(str(self.path), self.witness.read(), self._journal_id, head,
                       lambda seq: self._hash_at(conn, seq), self.witness)
        except sqlite3.Error as exc:
            raise self._unavailable(f"is unreadable ({exc})") from exc
        except StoreError as exc:
            if isinstance(exc, JournalUnavailableError):
                raise
            raise self._unavailable(str(exc).removeprefix(f"journal {self.path}").strip(
                " :")) from exc

    def _verify(self, conn: sqlite3.Connection, *, full: bool) -> VerifyResult:
        """Walk the chain, from the start or from the checkpoint, and move the checkpoint."""
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        start_seq, start_hash = 0, GENESIS_HASH
        if not full:
            try:
                start_seq, start_hash = verified_checkpoint(
                    meta, lambda seq: self._hash_at(conn, seq))
            except ValueError as exc:
                return VerifyResult(False, 0, 0, str(exc))
        try:
            head = (int(meta["head_seq"]), meta["head_hash"])
        except (KeyError, ValueError):
            head = (-1, "")
        cursor = conn.execute(_SELECT_ALL_FROM, (start_seq,))
        result = verify_entries((stored_entry(row) for row in cursor), head,
                                start=(start_seq, start_hash))
        if result.ok and "verified_seq" in meta and head[0] > start_seq:
            conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                             [(str(head[0]), "verified_seq"), (head[1], "verified_hash")])
        return result

    @staticmethod
    def _hash_at(conn: sqlite3.Connection, seq: int) -> str | None:
        row = conn.execute("SELECT record_hash FROM entries WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def _write_marker(self, creation_id: str) -> None:
        text = (f"# cosigner journal marker: a journal was created at {self.path}\n"
                f"# if the database is missing, cosigner refuses to start from empty\n"
                f"creation_id={creation_id}\n")
        tmp = self.marker_path.with_name(self.marker_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, text.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.marker_path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise self._unavailable(
                f"cannot write its marker {self.marker_path} ({_os_reason(exc)})") from exc

    # -- the Journal operations ----------------------------------------------------

    def lookup(self, item_ids: Iterable[int], modes: Collection[str]) -> dict[int, ItemView]:
        """See :meth:`Journal.lookup`."""
        ids = list(dict.fromkeys(item_ids))
        mode_list = list(dict.fromkeys(modes))
        with self._lock:
            conn = self._connection()
            self._require_witnessed()
            return self._run(lambda c: self._lookup(c, ids, mode_list), conn)

    def _lookup(self, conn: sqlite3.Connection, ids: list[int],
                modes: list[str]) -> dict[int, ItemView]:
        found: dict[int, ItemView] = {}
        mode_marks = ",".join("?" * len(modes))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            # SQLite takes bare columns from the row holding min(seq).
            firsts = conn.execute(
                f"SELECT item_id, content_hash, min(seq) FROM entries "  # noqa: S608 - only ?s
                f"WHERE kind = 'decision' AND item_id IN ({marks}) GROUP BY item_id",
                chunk).fetchall()
            latest: dict[int, DecisionRecord] = {}
            if modes and firsts:
                rows = conn.execute(
                    _SELECT_RECORDS_BY_SEQ + f" AND d.seq IN (SELECT max(seq) FROM entries "  # noqa: S608
                    f"WHERE kind = 'decision' AND item_id IN ({marks}) AND mode IN "
                    f"({mode_marks}) GROUP BY item_id)", [*chunk, *modes]).fetchall()
                for row in rows:
                    record = record_from_row(row, str(self.path))
                    latest[record.item_id] = record
            for item_id, content_hash, _ in firsts:
                found[item_id] = ItemView(item_id, content_hash, latest.get(item_id))
        return found

    def record_decisions(self, decisions: Sequence[NewDecision],
                         guard: LimitGuard | None = None) -> list[DecisionRecord]:
        """See :meth:`Journal.record_decisions`: idempotency and limits are re-checked
        against the journal inside the write transaction."""
        with self._lock:
            conn = self._connection()
            if not decisions:
                return []
            self._require_writer()
            self._require_witnessed()
            now = self._clock()
            created_at = timestamp_text(now)

            def write(c: sqlite3.Connection) -> tuple[int, list[DecisionRecord]]:
                seq, prev = self._head(c)
                start = seq
                self._refuse_conflicts(c, decisions, guard, now, seq)
                rows, records = decision_entries(decisions, (seq, prev), created_at)
                c.executemany(_INSERT, rows)
                self._set_head(c, records[-1].seq, records[-1].record_hash)
                return start, records

            start, records = self._transaction(conn, write)
            self._keep_own_approvals(start, records)
            self._committed(Head(records[-1].seq, records[-1].record_hash))
            return records

    def _keep_own_approvals(self, start: int, records: Sequence[DecisionRecord]) -> None:
        """After a commit: the writer's window takes the approvals it has just recorded as
        they were written, instead of reading them back and hash-checking them at the next
        batch.  Only when the window already held every approval up to ``start`` (the head
        the batch extended): otherwise the next read fetches them from the journal."""
        if not self.writer or self._approvals_cover is None or self._approvals_seq != start:
            return
        for record in records:
            if record.mode == ENFORCE and record.action is Action.APPROVE:
                self._approvals.append(ApprovalRow(
                    record.chain_id or "", record.from_address or "", record.to_address or "",
                    record.amount_text or "", record.created_at))
        self._approvals_seq = records[-1].seq

    def _refuse_conflicts(self, conn: sqlite3.Connection, decisions: Sequence[NewDecision],
                          guard: LimitGuard | None, now: datetime, head: int) -> None:
        """Raise JournalConflictError when the journal cannot justify the batch."""
        if self.writer and not self.lock_held():
            raise LockLostError(f"journal {self.path}: this process no longer holds the "
                                f"writer lock {self.lock_path}; nothing was recorded")
        final, conflicts = batch_verdicts(decisions)
        ids = sorted({d.item_id for d in final})
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            # +action: looked up by item id in entries_by_item, not by scanning every
            # verdict through entries_by_action (which SQLite's planner picks otherwise)
            for (item_id,) in conn.execute(
                    f"SELECT DISTINCT item_id FROM entries WHERE kind = 'decision' "  # noqa: S608
                    f"AND mode = ? AND +action IN (?, ?) AND item_id IN ({marks})",
                    [ENFORCE, Action.APPROVE.value, Action.REJECT.value, *chunk]):
                conflicts[item_id] = "already_decided"
        if guard is not None and any(d.action is Action.APPROVE for d in final):
            history = self._approvals_in(conn, now - guard.window, head)
            conflicts.update(limit_violations(guard, history, final, now, str(self.path)))
        if conflicts:
            raise JournalConflictError(str(self.path), conflicts)

    def _approvals_in(self, conn: sqlite3.Connection, since: datetime,
                      head: int | None = None) -> list[ApprovalRow]:
        """The enforced approvals in the limit window starting at ``since``, each
        hash-checked as it is read (``head``: the last seq, when the caller knows it).

        A writer keeps the window it already read (it is the only writer, so rows it read
        cannot change under it), reads only newer seqs and drops rows from the front as the
        window moves: the cost per call is the new rows, not the window.  A row older
        than ``since`` may stay behind a newer one (a clock that stepped back): the limits
        count by time, so it counts nothing.  Anyone else reads the window.  The list
        returned is the writer's own: read it, never change it.
        """
        if head is None:
            head = conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0]
        if not self.writer or self._approvals_cover is None or since < self._approvals_cover:
            rows = [row for _, row in (self._approval_row(r) for r in conn.execute(
                _SELECT_APPROVALS_SINCE, (ENFORCE, Action.APPROVE.value, timestamp_text(since))))
                if row.created_at >= since]
        else:
            # all of them checked before any is kept: an edited row leaves the cache as it was
            new = [self._approval_row(r) for r in conn.execute(
                _SELECT_APPROVALS_AFTER, (ENFORCE, Action.APPROVE.value, self._approvals_seq))]
            rows = self._approvals
            rows.extend(row for _, row in new)  # in seq order
            cut = 0
            while cut < len(rows) and rows[cut].created_at < since:
                cut += 1
            if cut:
                del rows[:cut]
        if self.writer:  # every approval up to the head is in the window now
            self._approvals, self._approvals_seq, self._approvals_cover = rows, head, since
        return rows

    def _approval_row(self, row: Sequence[Any]) -> tuple[int, ApprovalRow]:
        return checked_approval(row, str(self.path))

    def record_outcomes(self, outcomes: Sequence[NewOutcome]) -> None:
        """See :meth:`Journal.record_outcomes`."""
        with self._lock:
            conn = self._connection()
            if not outcomes:
                return
            self._require_writer()
            self._require_witnessed()
            created_at = timestamp_text(self._clock())

            def write(c: sqlite3.Connection) -> tuple[int, Head]:
                if self.writer and not self.lock_held():
                    raise LockLostError(f"journal {self.path}: this process no longer holds "
                                        f"the writer lock {self.lock_path}")
                seq, prev = self._head(c)
                start = seq
                states = self._decisions_for(c, {o.decision_seq for o in outcomes})
                rows = []
                where = str(self.path)
                for outcome in outcomes:
                    decision, state = states.get(outcome.decision_seq) or (None, None)
                    check_outcome(outcome, where, decision, state)
                    states[outcome.decision_seq] = (decision, outcome.state)
                    seq += 1
                    prev, row = outcome_entry(seq, prev, outcome, created_at)
                    rows.append(row)
                c.executemany(_INSERT, rows)
                self._set_head(c, seq, prev)
                return start, Head(seq, prev)

            start, head = self._transaction(conn, write)
            if self.writer and self._approvals_seq == start:
                self._approvals_seq = head.seq  # outcomes are never approvals
            self._committed(head)

    def _committed(self, head: Head) -> None:
        """After a commit: the witness first (fail closed if it cannot be kept), then the hook."""
        self._unwitnessed = head
        self._write_witness(self._journal_id, head)
        self._unwitnessed = None
        if self._on_commit is not None:
            self._on_commit(head)

    def _require_writer(self) -> None:
        """Decisions and outcomes are written only by the writer (which holds the lock)."""
        if not self.writer:
            raise StoreError(f"journal {self.path} is open read-only: nothing was recorded")

    def _require_witnessed(self) -> None:
        """Before a write or a lookup: a head the witness could not take after its commit
        is written to it now, or StoreError (nothing more is recorded or posted)."""
        if self._unwitnessed is not None:
            self._write_witness(self._journal_id, self._unwitnessed)
            self._unwitnessed = None

    def _write_witness(self, journal_id: str, head: Head) -> None:
        try:
            self.witness.write(journal_id, head)
        except OSError as exc:
            raise StoreError(f"journal {self.path}: the witness {self.witness.path} cannot be "
                             f"written ({_os_reason(exc)}); nothing more may be posted until "
                             "it can") from exc

    def head(self) -> Head:
        """See :meth:`Journal.head`."""
        with self._lock:
            conn = self._connection()
            seq, record_hash = self._run(self._head, conn)
        return Head(seq, record_hash)

    def remember_policy(self, sha256: str, seen_at: datetime) -> datetime:
        """See :meth:`Journal.remember_policy`."""
        seen_text = timestamp_text(seen_at)
        with self._lock:
            conn = self._connection()

            def write(c: sqlite3.Connection) -> str:
                c.execute("INSERT OR IGNORE INTO policies (sha256, first_seen) VALUES (?, ?)",
                          (sha256, seen_text))
                return str(c.execute("SELECT first_seen FROM policies WHERE sha256 = ?",
                                     (sha256,)).fetchone()[0])

            return parse_timestamp(self._transaction(conn, write))

    def approvals_since(self, since: datetime) -> list[ApprovalRow]:
        """See :meth:`Journal.approvals_since`; every row is hash-checked."""
        timestamp_text(since)  # ValueError for a naive datetime
        with self._lock:
            conn = self._connection()
            return list(self._run(lambda c: self._approvals_in(c, since), conn))

    def records(self, since: datetime | None = None, action: Action | None = None,
                limit: int | None = None) -> Iterator[DecisionRecord]:
        """See :meth:`Journal.records`; fetched a page at a time, each under the lock."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        where, params = "", []
        if since is not None:
            where += " AND d.created_at >= ?"
            params.append(timestamp_text(since))
        if action is not None:
            where += " AND d.action = ?"
            params.append(Action(action).value)
        with self._lock:
            self._connection()  # fail now, not at the first next(), when it is closed
        return self._pages(where, params, limit)

    def _pages(self, where: str, params: list[Any], limit: int | None) -> Iterator[DecisionRecord]:
        after, left = 0, limit
        while left is None or left > 0:
            page = _PAGE if left is None else min(_PAGE, left)
            with self._lock:
                conn = self._connection()
                sql = _SELECT_RECORDS + where + " AND d.seq > ? ORDER BY d.seq LIMIT ?"
                rows = self._fetch(conn, sql, [*params, after, page])
                records = [record_from_row(row, str(self.path)) for row in rows]
            yield from records
            if len(rows) < page:
                return
            after = records[-1].seq
            if left is not None:
                left -= len(rows)

    def verify(self) -> VerifyResult:
        """See :meth:`Journal.verify`: the whole chain, from the first entry."""
        with self._lock:
            conn = self._connection()

            def walk(c: sqlite3.Connection) -> VerifyResult:
                head_rows = dict(c.execute(
                    "SELECT key, value FROM meta WHERE key IN ('head_seq', 'head_hash')"))
                try:
                    head = (int(head_rows["head_seq"]), head_rows["head_hash"])
                except (KeyError, ValueError):
                    head = (-1, "")  # reported as a head mismatch below
                cursor = c.execute(_SELECT_ALL_FROM, (0,))
                return verify_entries((stored_entry(row) for row in cursor), head)

            # One read transaction: the chain and its head are seen at one instant.
            return self._transaction(conn, walk, begin="BEGIN")

    def count_by_state(self) -> dict[str, int]:
        """See :meth:`Journal.count_by_state`."""
        with self._lock:
            conn = self._connection()
            rows = self._fetch(conn, _STATE_SQL)
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        for mode, outcome_state, count in rows:
            counts[decision_state(mode, outcome_state)] += count
        return counts

    # -- internals -----------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"journal {self.path} is not open")
        return self._conn

    def _fetch(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"journal {self.path} cannot be read ({exc})") from exc

    def _run(self, fn: Callable[[sqlite3.Connection], _T], conn: sqlite3.Connection) -> _T:
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"journal {self.path} cannot be read ({exc})") from exc

    def _transaction(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T],
                     begin: str = "BEGIN IMMEDIATE") -> _T:
        return transaction(str(self.path), conn, fn, begin)

    def _head(self, conn: sqlite3.Connection) -> tuple[int, str]:
        meta = dict(conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('head_seq', 'head_hash')"))
        last = conn.execute(
            "SELECT seq, record_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        actual = (0, GENESIS_HASH) if last is None else (last[0], last[1])
        if (meta.get("head_seq"), meta.get("head_hash")) != (str(actual[0]), actual[1]):
            # Refuse to extend a chain whose end was tampered with (fail closed).
            raise StoreError(f"journal {self.path}: its last record (seq {actual[0]}) does not "
                             f"match its recorded head (seq {meta.get('head_seq')}); run "
                             "`cosigner audit verify`")
        return actual

    @staticmethod
    def _set_head(conn: sqlite3.Connection, seq: int, record_hash: str) -> None:
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                         [(str(seq), "head_seq"), (record_hash, "head_hash")])

    def _decisions_for(self, conn: sqlite3.Connection,
                       seqs: set[int]) -> dict[int, tuple[dict[str, Any] | None, str]]:
        found: dict[int, tuple[dict[str, Any] | None, str]] = {}
        ordered = sorted(seqs)
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for seq, item_id, mode, action, outcome_state in conn.execute(
                    _SELECT_STATES + f" AND d.seq IN ({marks})", chunk):
                found[seq] = ({"item_id": item_id, "mode": mode, "action": action},
                              decision_state(mode, outcome_state))
        return found



# Built from constants only, never from input: the S608 warnings are false positives.
_INSERT = (f"INSERT INTO entries ({', '.join(COLUMNS)}) "  # noqa: S608
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
_SELECT_ALL_FROM = (f"SELECT {', '.join(COLUMNS)} FROM entries "  # noqa: S608
                    "WHERE seq > ? ORDER BY seq")
_SELECT_APPROVALS_AFTER = (f"SELECT {', '.join(COLUMNS)} FROM entries "  # noqa: S608
                           "WHERE kind = 'decision' AND mode = ? AND action = ? AND seq > ? "
                           "ORDER BY seq")
_SELECT_APPROVALS_SINCE = (f"SELECT {', '.join(COLUMNS)} FROM entries "  # noqa: S608
                           "WHERE kind = 'decision' AND mode = ? AND action = ? "
                           "AND created_at >= ? ORDER BY seq")





def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _os_reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def transaction(where: str, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T],
                begin: str = "BEGIN IMMEDIATE") -> _T:
    """Run ``fn`` in one transaction on ``conn``: committed, or rolled back entirely.

    Raises:
        StoreError: naming the journal ``where``, when SQLite fails; nothing was recorded.
    """
    try:
        conn.execute(begin)
    except sqlite3.Error as exc:
        raise StoreError(f"journal {where} cannot be written ({exc})") from exc
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"journal {where} cannot be written ({exc}); "
                             "nothing was recorded") from exc
        raise
    return result
