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
import json
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

from cosigner.errors import JournalUnavailableError, StoreError
from cosigner.models import Action
from cosigner.store.base import (
    ENFORCE,
    GENESIS_HASH,
    STATES,
    ApprovalRow,
    Clock,
    DecisionRecord,
    ItemView,
    NewDecision,
    NewOutcome,
    VerifyResult,
    utc_now,
)
from cosigner.store.chain import (
    DECISION,
    DECISION_KEYS,
    KEYS,
    StoredEntry,
    decision_payload,
    entry_hash,
    outcome_payload,
    parse_timestamp,
    timestamp_text,
    verify_entries,
)
from cosigner.store.records import build_record, check_outcome, decision_state

SCHEMA_VERSION = 1

_T = TypeVar("_T")

# Ids per IN (...) query: well under SQLite's variable limit on every version.
_CHUNK = 500
# Rows fetched per lock acquisition while iterating records().
_PAGE = 1000

_COLUMNS = ("seq", "kind", "prev_hash", "item_id", "content_hash", "chain_id", "from_address",
            "to_address", "amount_text", "action", "rule", "reasons", "policy_name",
            "policy_sha256", "mode", "decision_seq", "state", "api_code", "api_message",
            "created_at", "record_hash")

_SCHEMA = """
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

# A decision with its latest outcome (o.* NULL when there is none).
_SELECT_RECORDS = """
SELECT d.seq, d.kind, d.prev_hash, d.item_id, d.content_hash, d.chain_id, d.from_address,
       d.to_address, d.amount_text, d.action, d.rule, d.reasons, d.policy_name,
       d.policy_sha256, d.mode, d.created_at, d.record_hash,
       o.state, o.api_code, o.api_message, o.created_at
FROM entries AS d
LEFT JOIN entries AS o ON o.seq = (
    SELECT max(x.seq) FROM entries AS x WHERE x.decision_seq = d.seq AND x.kind = 'outcome')
WHERE d.kind = 'decision'
"""

# What an outcome needs to know of its decision.
_SELECT_STATES = """
SELECT d.seq, d.item_id, d.mode, d.action,
       (SELECT o.state FROM entries AS o WHERE o.decision_seq = d.seq AND o.kind = 'outcome'
        ORDER BY o.seq DESC LIMIT 1)
FROM entries AS d WHERE d.kind = 'decision'
"""

_STATE_SQL = """
SELECT d.mode, (SELECT o.state FROM entries AS o WHERE o.decision_seq = d.seq
                AND o.kind = 'outcome' ORDER BY o.seq DESC LIMIT 1) AS outcome_state,
       count(*)
FROM entries AS d WHERE d.kind = 'decision' GROUP BY 1, 2
"""


class SqliteJournal:
    """A :class:`~cosigner.store.base.Journal` in one SQLite file.

    ``create``: whether :meth:`open` may create a journal that does not exist
    (the daemon) or must find an existing one (``cosigner audit``).  The
    connection is shared with worker threads (``check_same_thread=False``) and
    every call holds a lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False,
                 clock: Clock = utc_now) -> None:
        self.path = Path(os.path.abspath(path))
        self.marker_path = self.path.with_name(self.path.name + ".marker")
        self._create = create
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteJournal({str(self.path)!r})"

    # -- opening -------------------------------------------------------------------

    def open(self) -> None:
        """See :meth:`Journal.open`; also writes the marker of a new journal."""
        with self._lock:
            if self._conn is not None:
                return
            marker_id = self._read_marker()
            if not self._check_file(marker_id):
                self._make_file()
            conn = self._connect()
            try:
                creation_id = self._prepare(conn, marker_id=marker_id)
                if marker_id is None and self._create:
                    self._write_marker(creation_id)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

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

    def _check_file(self, marker_id: str | None) -> bool:
        """Whether the database file exists (and is a regular file)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if marker_id is not None:
                raise self._unavailable(
                    f"is missing but {self.marker_path} shows one existed (creation id "
                    f"{marker_id}); restore it from a backup, or remove the marker only if "
                    "starting from an empty journal is really intended") from None
            if not self._create:
                raise self._unavailable("does not exist") from None
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

    def _prepare(self, conn: sqlite3.Connection, *, marker_id: str | None) -> str:
        """Set the pragmas, create or validate the schema; return the creation id."""
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables and marker_id is None and self._create:
                # New, or created by an open that crashed before its first commit.
                return self._create_schema(conn)
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
        version_text = meta.get("schema_version")
        try:
            version = int(version_text) if version_text is not None else None
        except ValueError:
            version = None
        if version is None:
            raise self._unavailable(f"has no valid schema_version ({version_text!r})")
        if version > SCHEMA_VERSION:
            raise self._unavailable(
                f"has schema version {version}, newer than this cosigner supports "
                f"({SCHEMA_VERSION}); upgrade cosigner")
        if version < SCHEMA_VERSION:
            raise self._unavailable(
                f"has schema version {version}, older than {SCHEMA_VERSION}, and no "
                "migration exists")
        creation_id = str(meta.get("creation_id", ""))
        if marker_id is not None and creation_id != marker_id:
            raise self._unavailable(
                f"is not the journal {self.marker_path} recorded (creation id "
                f"{creation_id or 'none'} instead of {marker_id})")
        return creation_id

    def _create_schema(self, conn: sqlite3.Connection) -> str:
        creation_id = secrets.token_hex(16)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("creation_id", creation_id),
                ("created_at", timestamp_text(self._clock())),
                ("head_seq", "0"), ("head_hash", GENESIS_HASH)])
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return creation_id

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
                    _SELECT_RECORDS + f" AND d.seq IN (SELECT max(seq) FROM entries "  # noqa: S608
                    f"WHERE kind = 'decision' AND item_id IN ({marks}) AND mode IN "
                    f"({mode_marks}) GROUP BY item_id)", [*chunk, *modes]).fetchall()
                for row in rows:
                    record = self._record_from_row(row)
                    latest[record.item_id] = record
            for item_id, content_hash, _ in firsts:
                found[item_id] = ItemView(item_id, content_hash, latest.get(item_id))
        return found

    def record_decisions(self, decisions: Sequence[NewDecision]) -> list[DecisionRecord]:
        """See :meth:`Journal.record_decisions`."""
        with self._lock:
            conn = self._connection()
            if not decisions:
                return []
            created_at = timestamp_text(self._clock())

            def write(c: sqlite3.Connection) -> list[DecisionRecord]:
                seq, prev = self._head(c)
                rows, records = [], []
                for decision in decisions:
                    seq += 1
                    payload = decision_payload(seq, prev, decision, created_at)
                    prev = entry_hash(payload)
                    rows.append(_row(payload, prev))
                    records.append(build_record(payload, prev, None))
                c.executemany(_INSERT, rows)
                self._set_head(c, seq, prev)
                return records

            return self._transaction(conn, write)

    def record_outcomes(self, outcomes: Sequence[NewOutcome]) -> None:
        """See :meth:`Journal.record_outcomes`."""
        with self._lock:
            conn = self._connection()
            if not outcomes:
                return
            created_at = timestamp_text(self._clock())

            def write(c: sqlite3.Connection) -> None:
                seq, prev = self._head(c)
                states = self._decisions_for(c, {o.decision_seq for o in outcomes})
                rows = []
                for outcome in outcomes:
                    decision, state = states.get(outcome.decision_seq) or (None, None)
                    check_outcome(outcome, str(self.path), decision, state)
                    states[outcome.decision_seq] = (decision, outcome.state)
                    seq += 1
                    payload = outcome_payload(seq, prev, outcome, created_at)
                    prev = entry_hash(payload)
                    rows.append(_row(payload, prev))
                c.executemany(_INSERT, rows)
                self._set_head(c, seq, prev)

            self._transaction(conn, write)

    def approvals_since(self, since: datetime) -> list[ApprovalRow]:
        """See :meth:`Journal.approvals_since`."""
        cutoff = timestamp_text(since)
        with self._lock:
            conn = self._connection()
            rows = self._fetch(
                conn, "SELECT chain_id, from_address, to_address, amount_text, created_at "
                "FROM entries WHERE kind = 'decision' AND created_at >= ? AND action = ? "
                "AND mode = ? ORDER BY seq", (cutoff, Action.APPROVE.value, ENFORCE))
        return [ApprovalRow(r[0], r[1], r[2], r[3], parse_timestamp(r[4])) for r in rows]

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
                records = [self._record_from_row(row) for row in rows]
            yield from records
            if len(rows) < page:
                return
            after = records[-1].seq
            if left is not None:
                left -= len(rows)

    def verify(self) -> VerifyResult:
        """See :meth:`Journal.verify`."""
        with self._lock:
            conn = self._connection()

            def walk(c: sqlite3.Connection) -> VerifyResult:
                head_rows = dict(c.execute(
                    "SELECT key, value FROM meta WHERE key IN ('head_seq', 'head_hash')"))
                try:
                    head = (int(head_rows["head_seq"]), head_rows["head_hash"])
                except (KeyError, ValueError):
                    head = (-1, "")  # reported as a head mismatch below
                cursor = c.execute(_SELECT_ALL)
                return verify_entries((_stored(row) for row in cursor), head)

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
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise StoreError(f"journal {self.path} cannot be written ({exc})") from exc
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"journal {self.path} cannot be written ({exc}); "
                                 "nothing was recorded") from exc
            raise
        return result

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

    def _record_from_row(self, row: Sequence[Any]) -> DecisionRecord:
        payload = dict(zip(DECISION_KEYS, row[:16], strict=True))
        payload["reasons"] = _load_reasons(payload["reasons"])
        outcome = None
        if row[17] is not None:
            outcome = {"state": row[17], "api_code": row[18], "api_message": row[19],
                       "created_at": row[20]}
        try:
            return build_record(payload, row[16], outcome)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"journal {self.path}: record seq {row[0]} cannot be read "
                             f"({exc}); run `cosigner audit verify`") from exc


# Built from constants only, never from input: the S608 warnings are false positives.
_INSERT = (f"INSERT INTO entries ({', '.join(_COLUMNS)}) "  # noqa: S608
           f"VALUES ({', '.join('?' * len(_COLUMNS))})")
_SELECT_ALL = f"SELECT {', '.join(_COLUMNS)} FROM entries ORDER BY seq"  # noqa: S608


def _row(payload: dict[str, Any], record_hash: str) -> tuple[Any, ...]:
    """The ``entries`` row of an entry payload."""
    values = dict.fromkeys(_COLUMNS)
    values.update(payload)
    if payload["kind"] == DECISION:
        values["reasons"] = json.dumps(payload["reasons"], ensure_ascii=False)
    values["record_hash"] = record_hash
    return tuple(values[c] for c in _COLUMNS)


def _load_reasons(text: Any) -> Any:
    try:
        reasons = json.loads(text)
    except (TypeError, ValueError):
        return text  # an edited row: it will not hash to its record_hash
    return reasons


def _stored(row: Sequence[Any]) -> StoredEntry:
    """An ``entries`` row as the payload that was hashed, for verification."""
    values = dict(zip(_COLUMNS, row, strict=True))
    kind = values["kind"]
    keys = KEYS.get(kind, DECISION_KEYS)  # an unknown kind is an edit: it will not hash
    payload = {k: values[k] for k in keys}
    if "reasons" in payload:
        payload["reasons"] = _load_reasons(payload["reasons"])
    return StoredEntry(values["seq"], values["item_id"], payload, values["record_hash"])


def _os_reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
