"""The high-availability journal: PostgreSQL through psycopg 3 (DESIGN section 4).

Layout (schema version :data:`SCHEMA_VERSION`, created and migrated by :meth:`init`
under a transaction-level advisory lock, so replicas initialising one empty database
at once do not race):

``cosigner_meta``
    schema version, creation id, creation time; the verification checkpoint
    (``verified_seq``, ``verified_hash``: the head a leader last verified).
``cosigner_head``
    one row: the chain's head (seq, hash) and the leader epoch.  Every write
    transaction starts with ``SELECT ... FOR UPDATE`` on it, so writers are
    serialised by the database: seqs, the chain, the idempotency check and the
    limits' history are all read under that row lock.
``cosigner_entries``
    the hash-chained log, the same rows as SQLite's (append-only: triggers refuse
    UPDATE and DELETE).
``cosigner_verdicts``
    one row per item id that has an enforce approve/reject: its primary key is the
    database's own refusal of a second verdict for one id.
``cosigner_claims``
    which live database session may post an item's recorded decision: the one that
    recorded it, or one that claims it once that session is gone.
``cosigner_policies``
    when each policy bundle digest was first seen (``remember_policy``).
``cosigner_order_*`` (schema 2)
    the C2C order callbacks' own chain, order state and outbox; written by
    :class:`~cosigner.store.orders_postgres.PostgresOrderJournal`.

The writer / leader lock is a session-level advisory lock taken on the journal's
one connection, and every write runs on that same connection *and* checks the leader
epoch under the head row lock: a process whose lock connection died (killed, network
cut, server restart) cannot record, and so cannot post.  With ``election=True`` a
writer that does not get the lock at :meth:`PostgresJournal.open` is a standby and
retries with :meth:`PostgresJournal.try_lead`.

No message ever shows the URL's userinfo (see :func:`mask_url`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

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
    DECISION,
    StoredEntry,
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
    entry_row,
    limit_violations,
    outcome_entry,
    record_from_row,
    stored_entry,
)
from cosigner.store.urls import mask_url as mask_url  # re-exported: its home before
from cosigner.store.witness import Witness, check_head

#: Session-level advisory lock held by the one writer (the leader).
LEADER_KEY = 0x636F_7369_676E_0001
#: Transaction-level advisory lock serialising schema creation and migrations.
MIGRATE_KEY = 0x636F_7369_676E_0002

_T = TypeVar("_T")
#: Called with the new head after every commit.
CommitHook = Callable[[Head], None]
_PAGE = 1000
_VERDICTS = (Action.APPROVE.value, Action.REJECT.value)


# Each migration takes the schema from version N-1 to N, in one transaction.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE cosigner_meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE cosigner_head (
            id integer PRIMARY KEY CHECK (id = 1),
            seq bigint NOT NULL, hash text NOT NULL,
            leader_epoch bigint NOT NULL DEFAULT 0, leader text)""",
        """CREATE TABLE cosigner_entries (
            seq bigint PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('decision', 'outcome')),
            prev_hash text NOT NULL,
            item_id bigint NOT NULL,
            content_hash text, chain_id text, from_address text, to_address text,
            amount_text text, action text, rule text, reasons text, policy_name text,
            policy_sha256 text, mode text, decision_seq bigint, state text, api_code bigint,
            api_message text,
            created_at text NOT NULL,
            record_hash text NOT NULL)""",
        "CREATE INDEX cosigner_entries_by_item ON cosigner_entries (item_id, seq) "
        "WHERE kind = 'decision'",
        "CREATE INDEX cosigner_entries_by_decision ON cosigner_entries (decision_seq, seq) "
        "WHERE kind = 'outcome'",
        "CREATE INDEX cosigner_entries_by_time ON cosigner_entries (created_at) "
        "WHERE kind = 'decision'",
        """CREATE FUNCTION cosigner_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'journal entries are append-only'; END $$""",
        "CREATE TRIGGER cosigner_entries_append_only BEFORE UPDATE OR DELETE ON "
        "cosigner_entries FOR EACH ROW EXECUTE FUNCTION cosigner_append_only()",
        "CREATE TRIGGER cosigner_entries_no_truncate BEFORE TRUNCATE ON cosigner_entries "
        "FOR EACH STATEMENT EXECUTE FUNCTION cosigner_append_only()",
        """CREATE TABLE cosigner_verdicts (
            item_id bigint PRIMARY KEY,
            seq bigint NOT NULL REFERENCES cosigner_entries (seq))""",
        """CREATE TABLE cosigner_claims (
            item_id bigint PRIMARY KEY,
            holder_pid integer NOT NULL, holder_start timestamptz NOT NULL,
            holder_token text NOT NULL)""",
        """CREATE TABLE cosigner_policies (
            sha256 text PRIMARY KEY, first_seen text NOT NULL)""",
    ),
    # C2C order callbacks (DESIGN section 10; :mod:`cosigner.store.orders_postgres`), the
    # tables of SQLite's schema 3: their own hash chain (append-only, its head in one row
    # that every write locks FOR UPDATE), each order's current state, and the outbox.
    2: (
        """CREATE TABLE cosigner_order_callbacks (
            seq bigint PRIMARY KEY,
            kind text NOT NULL,
            prev_hash text NOT NULL,
            order_no text NOT NULL,
            merchant_order_no text NOT NULL,
            status integer NOT NULL,
            deal_amount text NOT NULL,
            order_type integer NOT NULL,
            content_hash text NOT NULL UNIQUE,
            outcome text NOT NULL,
            previous_status integer,
            event_id text,
            source text,
            body text NOT NULL,
            received_at text NOT NULL,
            record_hash text NOT NULL)""",
        "CREATE INDEX cosigner_order_callbacks_by_order ON cosigner_order_callbacks "
        "(order_no, seq)",
        "CREATE TRIGGER cosigner_order_callbacks_append_only BEFORE UPDATE OR DELETE ON "
        "cosigner_order_callbacks FOR EACH ROW EXECUTE FUNCTION cosigner_append_only()",
        "CREATE TRIGGER cosigner_order_callbacks_no_truncate BEFORE TRUNCATE ON "
        "cosigner_order_callbacks FOR EACH STATEMENT EXECUTE FUNCTION cosigner_append_only()",
        """CREATE TABLE cosigner_order_head (
            id integer PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, hash text NOT NULL)""",
        "INSERT INTO cosigner_order_head (id, seq, hash) VALUES (1, 0, repeat('0', 64))",
        """CREATE TABLE cosigner_order_state (
            order_no text PRIMARY KEY,
            merchant_order_no text NOT NULL,
            status integer NOT NULL,
            deal_amount text NOT NULL,
            order_type integer NOT NULL,
            first_seen text NOT NULL,
            updated_at text NOT NULL,
            callbacks integer NOT NULL)""",
        "CREATE INDEX cosigner_order_state_by_time ON cosigner_order_state "
        "(updated_at, order_no)",
        """CREATE TABLE cosigner_order_outbox (
            event_id text PRIMARY KEY,
            seq bigint NOT NULL UNIQUE REFERENCES cosigner_order_callbacks (seq),
            order_no text NOT NULL,
            body bytea NOT NULL,
            created_at text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at text NOT NULL,
            last_attempt_at text,
            last_error text,
            delivered_at text)""",
        "CREATE INDEX cosigner_order_outbox_pending ON cosigner_order_outbox "
        "(order_no, seq) WHERE delivered_at IS NULL",
    ),
}
SCHEMA_VERSION = len(MIGRATIONS)

# A decision with its latest outcome (o.* NULL when there is none).
_RECORD_COLUMNS = ("d.seq, d.kind, d.prev_hash, d.item_id, d.content_hash, d.chain_id, "
                   "d.from_address, d.to_address, d.amount_text, d.action, d.rule, d.reasons, "
                   "d.policy_name, d.policy_sha256, d.mode, d.created_at, d.record_hash, "
                   "o.state, o.api_code, o.api_message, o.created_at")
_LATEST_OUTCOME = """
LEFT JOIN LATERAL (
    SELECT x.state, x.api_code, x.api_message, x.created_at FROM cosigner_entries AS x
    WHERE x.kind = 'outcome' AND x.decision_seq = d.seq ORDER BY x.seq DESC LIMIT 1) AS o ON true
"""
# Built from constants only, never from input: the S608 warnings are false positives.
_SELECT_RECORDS = (f"SELECT {_RECORD_COLUMNS} FROM cosigner_entries AS d "  # noqa: S608
                   f"{_LATEST_OUTCOME} WHERE d.kind = 'decision'")


class PostgresJournal:
    """A :class:`~cosigner.store.base.Journal` in a PostgreSQL database.

    ``writer``: this process records (takes the leader lock at :meth:`open`).
    ``election``: a writer that finds the lock held opens as a *standby* instead of
    raising :class:`JournalLockedError`, and becomes the writer with :meth:`try_lead`.
    ``witness``: the rollback witness file (checked at open, written after commits; none
    by default: with several replicas, point ``COSIGNER_JOURNAL_WITNESS`` at a volume of
    each replica's own).  ``on_commit``: called with the new head after every commit.

    One connection (autocommit, explicit transactions), shared with worker threads
    and guarded by a lock: the leader lock, every read and every write live on it.
    """

    def __init__(self, url: str, *, writer: bool = False, election: bool = False,
                 witness: str | os.PathLike[str] | Witness | None = None,
                 clock: Clock = utc_now, on_commit: CommitHook | None = None,
                 connect_timeout: float = 10.0) -> None:
        self._url = url
        self.where = mask_url(url)
        self.writer = writer
        self.election = election
        self.witness = witness if witness is None or isinstance(witness, Witness) \
            else Witness(witness)
        self._on_commit = on_commit
        # A head committed but not yet in the witness: no write and no lookup (so no post)
        # until the witness takes it.
        self._unwitnessed: Head | None = None
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._journal_id: str | None = None
        self._leading = False
        self._epoch: int | None = None
        self._verified = Head(0, GENESIS_HASH)  # the chain is known good up to here
        self._token = secrets.token_hex(8)       # this process, in cosigner_claims
        self._backend: tuple[int, datetime] | None = None
        self._claimed: set[int] = set()
        self._closed = False  # close() was called (a lost connection is not a close)
        # Enforced approvals already read and hash-checked for the limits (by seq).
        self._approvals_cache: list[tuple[int, ApprovalRow]] = []
        self._approvals_seq = 0
        self._approvals_cover: str | None = None
        #: Test hook: False skips the leader-epoch check (two "leaders" at once), so
        #: only the database's constraints and row locks stand between them.
        self.fenced = True

    def __repr__(self) -> str:
        return f"PostgresJournal({self.where!r})"

    # -- connecting --------------------------------------------------------------------

    def _scrub(self, exc: BaseException) -> str:
        """An exception's text without the URL or its password."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with contextlib.suppress(ValueError):
            password = urllib.parse.urlsplit(self._url).password
            if password:
                text = text.replace(password, "***")
                text = text.replace(urllib.parse.unquote(password), "***")
        return text.replace(self._url, self.where)

    def _unavailable(self, problem: str) -> JournalUnavailableError:
        return JournalUnavailableError(f"journal {self.where} {problem}")

    def _connect(self) -> psycopg.Connection[Any]:
        name = f"cosigner {socket.gethostname()} pid {os.getpid()}"[:63]
        try:
            conn = psycopg.connect(
                self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout)),
                application_name=name,
                # Notice a dead server or a cut network in seconds, not hours.
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                tcp_user_timeout=int(self._connect_timeout * 1000))
        except psycopg.Error as exc:
            raise self._unavailable(f"cannot be reached ({self._scrub(exc)})") from None
        return conn

    # -- creating and migrating ---------------------------------------------------------

    def init(self) -> str:
        """See :meth:`Journal.init`: create or migrate under the migration lock."""
        with self._lock:
            conn = self._connect()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_KEY,))
                    version = self._schema_version(conn)
                    if version > SCHEMA_VERSION:
                        raise self._newer(version)
                    for step in range(version + 1, SCHEMA_VERSION + 1):
                        for statement in MIGRATIONS[step]:
                            conn.execute(statement)
                        if step == 1:
                            self._seed(conn)
                        conn.execute("UPDATE cosigner_meta SET value = %s "
                                     "WHERE key = 'schema_version'", (str(step),))
                journal_id = self._journal_id = self._meta(conn)["creation_id"]
                head = self._read_head(conn)
                if self.witness is not None:
                    state = self.witness.read()
                    if state is None and head.seq > 0:
                        result = self._verify(conn)
                        if not result.ok:
                            raise self._unavailable(f"does not verify: {result.problem}")
                    else:
                        check_head(self.where, state, journal_id, head,
                                   lambda seq: self._hash_at(conn, seq), self.witness)
                    self._write_witness(journal_id, head)
            except psycopg.Error as exc:
                raise self._unavailable(f"cannot be initialised ({self._scrub(exc)})") from None
            finally:
                conn.close()
                if self.witness is not None:
                    self.witness.close()
            return journal_id

    def _seed(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO cosigner_meta (key, value) VALUES ('schema_version', '0'), "
                     "('creation_id', %s), ('created_at', %s)",
                     (secrets.token_hex(16), timestamp_text(self._clock())))
        conn.execute("INSERT INTO cosigner_head (id, seq, hash) VALUES (1, 0, %s)",
                     (GENESIS_HASH,))

    @staticmethod
    def _schema_version(conn: psycopg.Connection[Any]) -> int:
        """0 for an empty database."""
        row = conn.execute("SELECT to_regclass('cosigner_meta') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        found = conn.execute(
            "SELECT value FROM cosigner_meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(found[0]) if found else 0
        except ValueError:
            return -1

    def _newer(self, version: int) -> JournalUnavailableError:
        return self._unavailable(
            f"has schema version {version}, newer than this cosigner supports "
            f"({SCHEMA_VERSION}); upgrade cosigner")

    @staticmethod
    def _meta(conn: psycopg.Connection[Any]) -> dict[str, str]:
        return dict(conn.execute("SELECT key, value FROM cosigner_meta").fetchall())

    # -- opening ---------------------------------------------------------------------

    def open(self) -> None:
        """See :meth:`Journal.open`.  A writer with ``election`` that finds the lock
        held opens as a standby (see :meth:`try_lead`)."""
        with self._lock:
            if self._conn is not None:
                return
            self._closed = False
            conn = self._connect()
            self._conn = conn  # from here on, _drop_connection closes it on failure
            try:
                self._journal_id = self._check_schema(conn)
                self._remember_backend()
                if self.writer:
                    if not self._take_lock(conn) and not self.election:
                        raise JournalLockedError(
                            f"journal {self.where} has another writer: {self._holder(conn)}")
                    self._check_chain(conn)
            except psycopg.Error as exc:
                self._drop_connection()
                raise self._unavailable(f"is unreadable ({self._scrub(exc)})") from None
            except BaseException:
                self._drop_connection()
                raise

    def _check_schema(self, conn: psycopg.Connection[Any]) -> str:
        version = self._schema_version(conn)
        if version == 0:
            raise self._unavailable("does not exist here (no cosigner tables); create it "
                                    "with `cosigner journal init`")
        if version < 0:
            raise self._unavailable("has no valid schema_version")
        if version > SCHEMA_VERSION:
            raise self._newer(version)
        if version < SCHEMA_VERSION:
            raise self._unavailable(f"has schema version {version}, older than "
                                    f"{SCHEMA_VERSION}; run `cosigner journal init`")
        creation_id = self._meta(conn).get("creation_id")
        if not creation_id:
            raise self._unavailable("has no creation id")
        return creation_id

    def _check_chain(self, conn: psycopg.Connection[Any]) -> None:
        """Verify the chain and the witness, from the furthest point known good: the head
        this process verified last, or the checkpoint a leader recorded after verifying
        (``verified_seq``/``verified_hash`` in ``cosigner_meta``, as SQLite keeps in its
        ``meta``) once its record is checked to be the one verified.  A leader then moves
        the checkpoint to the head it verified, so a start does not walk the whole chain
        again (``cosigner audit verify`` always does)."""
        assert self._journal_id is not None
        start = self._verified
        try:
            checkpoint = Head(*verified_checkpoint(self._meta(conn),
                                                   lambda seq: self._hash_at(conn, seq)))
        except ValueError as exc:
            raise self._unavailable(f"does not verify: {exc}; run `cosigner audit verify`"
                                    ) from None
        if checkpoint.seq > start.seq:
            start = checkpoint
        result = self._verify(conn, start=start if start.seq else None)
        if not result.ok:
            raise self._unavailable(f"does not verify: {result.problem}; run "
                                    "`cosigner audit verify`")
        head = self._read_head(conn)
        if self.witness is not None:
            check_head(self.where, self.witness.read(), self._journal_id, head,
                       lambda seq: self._hash_at(conn, seq), self.witness)
        self._verified = head
        if self._leading and head.seq > checkpoint.seq:
            self._save_checkpoint(conn, head)

    def _save_checkpoint(self, conn: psycopg.Connection[Any], head: Head) -> None:
        """Record ``head`` as verified, if this process still leads (the epoch fences it)."""
        with conn.transaction():
            conn.execute(
                "INSERT INTO cosigner_meta (key, value) SELECT k, v FROM (VALUES "
                "('verified_seq', %s), ('verified_hash', %s)) AS t (k, v) WHERE EXISTS "
                "(SELECT 1 FROM cosigner_head WHERE id = 1 AND leader_epoch = %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(head.seq), head.hash, self._epoch))

    def close(self) -> None:
        """Release the leader lock and close the connection (idempotent).

        The lock is released explicitly first: closing the connection alone frees it only
        once the server has noticed the session end, and a standby trying to lead in the
        meantime would be refused."""
        with self._lock:
            self._closed = True
            if self._leading and self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (LEADER_KEY,))
            self._drop_connection()
            if self.witness is not None:
                self.witness.close()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._leading = False
        self._epoch = None
        self._backend = None
        self._claimed.clear()
        self._approvals_cover = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise StoreError(f"journal {self.where} is not open")
        return self._conn

    def _remember_backend(self) -> None:
        conn = self._connection()
        row = conn.execute("SELECT pg_backend_pid(), backend_start FROM pg_stat_activity "
                           "WHERE pid = pg_backend_pid()").fetchone()
        self._backend = (int(row[0]), row[1]) if row else None

    # -- the leader lock ----------------------------------------------------------------

    def _take_lock(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_KEY,)).fetchone()
        if not row or not row[0]:
            return False
        try:
            with conn.transaction():
                epoch_row = conn.execute(
                    "UPDATE cosigner_head SET leader_epoch = leader_epoch + 1, leader = "
                    "current_setting('application_name') WHERE id = 1 "
                    "RETURNING leader_epoch").fetchone()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock(%s)", (LEADER_KEY,))
            raise
        if epoch_row is None:
            raise self._unavailable("has no head row")
        self._epoch = int(epoch_row[0])
        self._leading = True
        return True

    def _holder(self, conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(
            "SELECT a.application_name, a.client_addr::text, a.pid FROM pg_locks AS l "
            "JOIN pg_stat_activity AS a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
            (LEADER_KEY >> 32, LEADER_KEY & 0xFFFF_FFFF)).fetchone()
        if row is None:
            return "unknown (it just let go; try again)"
        return f"{row[0] or 'unnamed'} from {row[1] or 'local socket'} (backend pid {row[2]})"

    def lock_held(self) -> bool:
        """Whether this process is the writer (leader) as far as it knows; no I/O.

        Becomes False as soon as a write or :meth:`check_lead` finds the lock's
        connection gone."""
        return self._leading and self._conn is not None

    @property
    def backend_pid(self) -> int | None:
        """The server process of this journal's connection (None when not connected)."""
        return self._backend[0] if self._backend is not None else None

    @property
    def epoch(self) -> int | None:
        """The leader epoch this process holds (None when it does not lead)."""
        return self._epoch if self._leading else None

    def check_lead(self) -> bool:
        """Probe the lock's connection; False (and no longer leading) when it is gone.

        While a read or write holds the connection, that call is the probe: it clears
        the leader flag itself if the connection fails, so the flag is the answer."""
        if not self._lock.acquire(blocking=False):
            return self.lock_held()
        try:
            if not self._leading or self._conn is None:
                return False
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self._drop_connection()
                return False
            return True
        finally:
            self._lock.release()

    def try_lead(self) -> bool:
        """Become the writer if nobody is; reconnect first when the connection is gone.

        On success the chain is verified from where this process last verified it and
        checked against the witness.

        Raises:
            JournalUnavailableError: the database cannot be reached, or the chain or
                witness check fails.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"journal {self.where} is not open")
            if self.check_lead():
                return True
            if self._conn is not None:
                try:
                    self._conn.execute("SELECT 1")
                except psycopg.Error:
                    self._drop_connection()
            if self._conn is None:
                conn = self._connect()
                try:
                    self._journal_id = self._check_schema(conn)
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
                self._remember_backend()
            conn = self._connection()
            try:
                if not self._take_lock(conn):
                    return False
                self._check_chain(conn)
            except psycopg.Error as exc:
                self._drop_connection()
                raise self._unavailable(f"cannot be reached ({self._scrub(exc)})") from None
            except BaseException:
                self.step_down()
                raise
            return True

    def step_down(self) -> None:
        """Release the leader lock (keeping the connection) and become a standby."""
        with self._lock:
            if self._conn is not None and self._leading:
                try:
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (LEADER_KEY,))
                except psycopg.Error:
                    self._drop_connection()
            self._leading = False
            self._epoch = None
            self._claimed.clear()

    # -- the Journal operations ----------------------------------------------------

    @property
    def journal_id(self) -> str:
        """See :meth:`Journal.journal_id` (empty until opened or initialised)."""
        return self._journal_id or ""

    def head(self) -> Head:
        """See :meth:`Journal.head`."""
        return self._read(self._read_head)

    def remember_policy(self, sha256: str, seen_at: datetime) -> datetime:
        """See :meth:`Journal.remember_policy`."""
        text = timestamp_text(seen_at)

        def remember(conn: psycopg.Connection[Any]) -> datetime:
            conn.execute("INSERT INTO cosigner_policies (sha256, first_seen) VALUES (%s, %s) "
                         "ON CONFLICT (sha256) DO NOTHING", (sha256, text))
            row = conn.execute("SELECT first_seen FROM cosigner_policies WHERE sha256 = %s",
                               (sha256,)).fetchone()
            return parse_timestamp(row[0] if row else text)

        return self._read(remember)

    def lookup(self, item_ids: Iterable[int], modes: Collection[str]) -> dict[int, ItemView]:
        """See :meth:`Journal.lookup`."""
        ids = list(dict.fromkeys(item_ids))
        mode_list = list(dict.fromkeys(modes))
        if not ids:
            return {}
        with self._lock:
            self._require_witnessed()

        def find(conn: psycopg.Connection[Any]) -> dict[int, ItemView]:
            firsts = conn.execute(
                "SELECT DISTINCT ON (item_id) item_id, content_hash FROM cosigner_entries "
                "WHERE kind = 'decision' AND item_id = ANY(%s) ORDER BY item_id, seq",
                (ids,)).fetchall()
            latest: dict[int, DecisionRecord] = {}
            if mode_list and firsts:
                rows = conn.execute(
                    f"SELECT DISTINCT ON (d.item_id) {_RECORD_COLUMNS} "  # noqa: S608
                    f"FROM cosigner_entries AS d {_LATEST_OUTCOME} WHERE d.kind = 'decision' "
                    "AND d.item_id = ANY(%s) AND d.mode = ANY(%s) "
                    "ORDER BY d.item_id, d.seq DESC", (ids, mode_list)).fetchall()
                for row in rows:
                    record = record_from_row(row, self.where)
                    latest[record.item_id] = record
            return {item_id: ItemView(item_id, content, latest.get(item_id))
                    for item_id, content in firsts}

        return self._read(find)

    def record_decisions(self, decisions: Sequence[NewDecision],
                         guard: LimitGuard | None = None) -> list[DecisionRecord]:
        """See :meth:`Journal.record_decisions`: idempotency and limits are checked under
        the head row lock, and the verdicts table's key refuses a second verdict."""
        if not decisions:
            with self._lock:
                self._connection()
            return []
        now = self._clock()
        created_at = timestamp_text(now)

        def write(conn: psycopg.Connection[Any], seq: int, prev: str) -> list[DecisionRecord]:
            verdicts, conflicts = batch_verdicts(decisions)
            seen = {d.item_id for d in verdicts}
            if seen:
                for (item_id,) in conn.execute(
                        "SELECT item_id FROM cosigner_verdicts WHERE item_id = ANY(%s)",
                        (list(seen),)).fetchall():
                    conflicts[item_id] = "already_decided"
            approvals = [d for d in verdicts if d.action is Action.APPROVE]
            if guard is not None and approvals:
                history = self._checked_approvals(conn, timestamp_text(now - guard.window)) \
                    if guard.window.total_seconds() > 0 else []
                violations = limit_violations(guard, history, approvals, now, self.where)
                for item_id, reason in violations.items():
                    conflicts.setdefault(item_id, reason)
            if conflicts:
                raise JournalConflictError(self.where, conflicts)
            rows, records = decision_entries(decisions, (seq, prev), created_at)
            verdict_rows = [(d.item_id, r.seq) for d, r in zip(decisions, records, strict=True)
                            if d.mode == ENFORCE and d.action.value in _VERDICTS]
            seq, prev = records[-1].seq, records[-1].record_hash
            self._insert(conn, rows)
            if verdict_rows:
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO cosigner_verdicts (item_id, seq) "
                                    "VALUES (%s, %s)", verdict_rows)
                self._claim_rows(conn, [i for i, _ in verdict_rows])
            self._set_head(conn, seq, prev)
            return records

        records = self._write(write)
        self._claimed.update(r.item_id for r in records
                             if r.mode == ENFORCE and r.action.value in _VERDICTS)
        return records

    def record_outcomes(self, outcomes: Sequence[NewOutcome]) -> None:
        """See :meth:`Journal.record_outcomes`."""
        if not outcomes:
            with self._lock:
                self._connection()
            return
        created_at = timestamp_text(self._clock())

        def write(conn: psycopg.Connection[Any], seq: int, prev: str) -> None:
            states = self._decisions_for(conn, sorted({o.decision_seq for o in outcomes}))
            rows = []
            for outcome in outcomes:
                decision, state = states.get(outcome.decision_seq) or (None, None)
                check_outcome(outcome, self.where, decision, state)
                states[outcome.decision_seq] = (decision, outcome.state)
                seq += 1
                prev, row = outcome_entry(seq, prev, outcome, created_at)
                rows.append(row)
            self._insert(conn, rows)
            self._set_head(conn, seq, prev)

        self._write(write)

    def holds_claim(self, item_id: int) -> bool:
        """Whether this process recorded or claimed ``item_id`` on its current connection
        (no I/O)."""
        return item_id in self._claimed and self._conn is not None

    def claim_post(self, item_id: int) -> bool:
        """Whether this process may post the recorded verdict of ``item_id`` now.

        True when this process recorded it (on its current connection) or it claims it
        here: the session that held the claim is gone.  False while another live session
        holds it: two replicas never post one id, even when both believe they lead."""
        with self._lock:
            if item_id in self._claimed and self._conn is not None:
                return True

            def claim(conn: psycopg.Connection[Any]) -> bool:
                got = self._claim_rows(conn, [item_id])
                return bool(got)

            if self._read(claim):
                self._claimed.add(item_id)
                return True
            return False

    def _claim_rows(self, conn: psycopg.Connection[Any], item_ids: list[int]) -> list[int]:
        if self._backend is None:
            self._remember_backend()
        assert self._backend is not None
        pid, start = self._backend
        rows = conn.execute(
            "INSERT INTO cosigner_claims AS c (item_id, holder_pid, holder_start, holder_token) "
            "SELECT unnest(%s::bigint[]), %s, %s, %s "
            "ON CONFLICT (item_id) DO UPDATE SET holder_pid = EXCLUDED.holder_pid, "
            "holder_start = EXCLUDED.holder_start, holder_token = EXCLUDED.holder_token "
            "WHERE (c.holder_pid = EXCLUDED.holder_pid AND c.holder_start = EXCLUDED.holder_start)"
            " OR NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = c.holder_pid "
            "AND a.backend_start = c.holder_start) RETURNING item_id",
            (item_ids, pid, start, self._token)).fetchall()
        return [r[0] for r in rows]

    def approvals_since(self, since: datetime) -> list[ApprovalRow]:
        """See :meth:`Journal.approvals_since`; every row is hash-checked."""
        cutoff = timestamp_text(since)
        return self._read(lambda conn: self._approvals(conn, cutoff))

    def _checked_approvals(self, conn: psycopg.Connection[Any], cutoff: str
                           ) -> list[ApprovalRow]:
        """The enforced approvals since ``cutoff`` for the limits, each hash-checked as it
        is read (an edited amount must not loosen a limit).  Called under the head row
        lock; rows are append-only, so only the ones after the last read are fetched."""
        if self._approvals_cover is None or cutoff < self._approvals_cover:
            self._approvals_cache, self._approvals_seq = [], 0
            self._approvals_cover = cutoff
        rows = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM cosigner_entries "  # noqa: S608 - constants
            "WHERE kind = 'decision' AND mode = %s AND action = %s AND seq > %s "
            "AND created_at >= %s ORDER BY seq",
            (ENFORCE, Action.APPROVE.value, self._approvals_seq, self._approvals_cover)
        ).fetchall()
        for row in rows:
            self._approvals_cache.append(checked_approval(row, self.where))
            self._approvals_seq = self._approvals_cache[-1][0]
        # Drop what the window left, from the front (the cache would otherwise grow for
        # as long as the daemon leads); the rest is the window, in seq order.
        cache, since = self._approvals_cache, parse_timestamp(cutoff)
        cut = 0
        while cut < len(cache) and cache[cut][1].created_at < since:
            cut += 1
        del cache[:cut]
        return [r for _, r in cache if r.created_at >= since]

    def _approvals(self, conn: psycopg.Connection[Any], cutoff: str) -> list[ApprovalRow]:
        rows = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM cosigner_entries "  # noqa: S608 - constants
            "WHERE kind = 'decision' AND created_at >= %s AND action = %s AND mode = %s "
            "ORDER BY seq", (cutoff, Action.APPROVE.value, ENFORCE)).fetchall()
        return [checked_approval(row, self.where)[1] for row in rows]

    def records(self, since: datetime | None = None, action: Action | None = None,
                limit: int | None = None) -> Iterator[DecisionRecord]:
        """See :meth:`Journal.records`; fetched a page at a time."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        where, params = "", []
        if since is not None:
            where += " AND d.created_at >= %s"
            params.append(timestamp_text(since))
        if action is not None:
            where += " AND d.action = %s"
            params.append(Action(action).value)
        with self._lock:
            self._connection()
        return self._pages(where, params, limit)

    def _pages(self, where: str, params: list[Any], limit: int | None) -> Iterator[DecisionRecord]:
        after, left = 0, limit
        while left is None or left > 0:
            page = _PAGE if left is None else min(_PAGE, left)
            query = _SELECT_RECORDS + where + " AND d.seq > %s ORDER BY d.seq LIMIT %s"
            values = [*params, after, page]

            def fetch(c: psycopg.Connection[Any], query: str = query,
                      values: list[Any] = values) -> list[Any]:
                return c.execute(query, values).fetchall()

            rows = self._read(fetch)
            records = [record_from_row(row, self.where) for row in rows]
            yield from records
            if len(rows) < page:
                return
            after = records[-1].seq
            if left is not None:
                left -= len(rows)

    def verify(self) -> VerifyResult:
        """See :meth:`Journal.verify`."""
        return self._read(self._verify)

    def entries(self) -> Iterator[StoredEntry]:
        """Every entry as stored, in seq order (for ``cosigner journal copy``)."""
        after = 0
        while True:
            def fetch(c: psycopg.Connection[Any], after: int = after) -> list[Any]:
                return c.execute(f"SELECT {', '.join(COLUMNS)} FROM cosigner_entries "  # noqa: S608
                                 "WHERE seq > %s ORDER BY seq LIMIT %s", (after, _PAGE)).fetchall()

            rows = self._read(fetch)
            for row in rows:
                yield stored_entry(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def policies(self) -> dict[str, datetime]:
        """Every policy digest with when it was first seen."""
        rows = self._read(lambda c: c.execute(
            "SELECT sha256, first_seen FROM cosigner_policies").fetchall())
        return {r[0]: parse_timestamp(r[1]) for r in rows}

    def import_entries(self, entries: Iterable[StoredEntry],
                       policies: dict[str, datetime] | None = None,
                       also: Callable[[psycopg.Connection[Any]], None] | None = None) -> Head:
        """Append entries copied from another journal, hashes as they are, into this
        *empty* journal, in one transaction; return the new head.  ``also`` runs in
        that transaction (``journal copy`` adds the order tables there).

        Raises:
            StoreError: this journal is not empty, or an entry does not continue the chain.
        """
        def write(conn: psycopg.Connection[Any], seq: int, prev: str) -> Head:
            if seq != 0:
                raise StoreError(f"journal {self.where} is not empty (head seq {seq}); "
                                 "copy only into an empty journal")
            batch: list[tuple[Any, ...]] = []
            verdict_rows: list[tuple[int, int]] = []
            for entry in entries:
                p = entry.payload
                if entry.seq != seq + 1 or p.get("prev_hash") != prev:
                    raise StoreError(f"journal copy: entry seq {entry.seq} does not follow "
                                     f"seq {seq}")
                seq, prev = entry.seq, entry.record_hash
                batch.append(entry_row(dict(p), entry.record_hash))
                if p["kind"] == DECISION and p["mode"] == ENFORCE and \
                        p["action"] in _VERDICTS:
                    verdict_rows.append((int(p["item_id"]), entry.seq))
                if len(batch) >= _PAGE:
                    self._insert(conn, batch)
                    batch = []
            self._insert(conn, batch)
            if verdict_rows:
                with conn.cursor() as cur:
                    # An older journal may hold two verdicts for one id: keep the first.
                    cur.executemany("INSERT INTO cosigner_verdicts (item_id, seq) VALUES "
                                    "(%s, %s) ON CONFLICT (item_id) DO NOTHING", verdict_rows)
            for sha, seen in (policies or {}).items():
                conn.execute("INSERT INTO cosigner_policies (sha256, first_seen) VALUES "
                             "(%s, %s) ON CONFLICT (sha256) DO NOTHING",
                             (sha, timestamp_text(seen)))
            if also is not None:
                also(conn)
            self._set_head(conn, seq, prev)
            return Head(seq, prev)

        return self._write(write)

    def count_by_state(self) -> dict[str, int]:
        """See :meth:`Journal.count_by_state`."""
        rows = self._read(lambda c: c.execute(
            f"SELECT d.mode, o.state, count(*) FROM cosigner_entries AS d "  # noqa: S608
            f"{_LATEST_OUTCOME} WHERE d.kind = 'decision' GROUP BY 1, 2").fetchall())
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        for mode, outcome_state, count in rows:
            counts[decision_state(mode, outcome_state)] += count
        return counts

    # -- internals -----------------------------------------------------------------

    def _read(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except psycopg.OperationalError as exc:
                if conn.closed or conn.broken:
                    self._drop_connection()
                raise StoreError(f"journal {self.where} cannot be read "
                                 f"({self._scrub(exc)})") from None
            except psycopg.Error as exc:
                raise StoreError(f"journal {self.where} cannot be read "
                                 f"({self._scrub(exc)})") from None

    def _write(self, fn: Callable[[psycopg.Connection[Any], int, str], _T]) -> _T:
        """Run ``fn(conn, head_seq, head_hash)`` in one transaction holding the head row
        lock, after proving this process is still the leader; then update the witness."""
        with self._lock:
            conn = self._writable_connection()
            self._require_witnessed()
            try:
                with conn.transaction():
                    seq, prev = self._lock_head(conn)
                    result = fn(conn, seq, prev)
            except StoreError:
                raise
            except pg_errors.UniqueViolation as exc:
                raise JournalConflictError(self.where, {-1: "already_decided"}) from exc
            except psycopg.OperationalError as exc:
                lost = conn.closed or conn.broken
                if lost:
                    self._drop_connection()
                    raise LockLostError(
                        f"journal {self.where}: the connection holding the leader lock is "
                        f"gone ({self._scrub(exc)}); the write was not confirmed") from None
                raise StoreError(f"journal {self.where} cannot be written "
                                 f"({self._scrub(exc)}); nothing was recorded") from None
            except psycopg.Error as exc:
                raise StoreError(f"journal {self.where} cannot be written "
                                 f"({self._scrub(exc)}); nothing was recorded") from None
            try:
                head = self._read_head(conn) \
                    if self.witness is not None or self._on_commit is not None else None
            except psycopg.Error as exc:
                raise StoreError(f"journal {self.where}: committed, but its head cannot be "
                                 f"read back ({self._scrub(exc)})") from None
        if head is not None and self.witness is not None and self._journal_id is not None:
            self._unwitnessed = head
            self._write_witness(self._journal_id, head)
            self._unwitnessed = None
        if self._on_commit is not None:
            self._on_commit(head or self.head())
        return result

    def _writable_connection(self) -> psycopg.Connection[Any]:
        """The connection to write on, once this process is known to be the writer."""
        if self._closed:
            raise StoreError(f"journal {self.where} is not open")
        if self.writer and self.fenced and not self._leading and self._journal_id is not None:
            raise LockLostError(f"journal {self.where}: this process is not the writer "
                                "(it lost or never held the leader lock); nothing was "
                                "recorded")
        conn = self._connection()
        if not self.writer:
            raise StoreError(f"journal {self.where} is open read-only")
        return conn

    def _lock_head(self, conn: psycopg.Connection[Any]) -> tuple[int, str]:
        row = conn.execute("SELECT seq, hash, leader_epoch FROM cosigner_head WHERE id = 1 "
                           "FOR UPDATE").fetchone()
        if row is None:
            raise StoreError(f"journal {self.where} has no head row")
        seq, head_hash, epoch = int(row[0]), str(row[1]), int(row[2])
        if self.fenced and epoch != self._epoch:
            self._leading = False
            raise LockLostError(f"journal {self.where}: another process became the writer "
                                f"(leader epoch {epoch}, this one held {self._epoch}); "
                                "nothing was recorded")
        last = conn.execute("SELECT seq, record_hash FROM cosigner_entries "
                            "ORDER BY seq DESC LIMIT 1").fetchone()
        actual = (0, GENESIS_HASH) if last is None else (int(last[0]), str(last[1]))
        if actual != (seq, head_hash):
            raise StoreError(f"journal {self.where}: its last record (seq {actual[0]}) does "
                             f"not match its recorded head (seq {seq}); run "
                             "`cosigner audit verify`")
        return seq, head_hash

    @staticmethod
    def _set_head(conn: psycopg.Connection[Any], seq: int, record_hash: str) -> None:
        conn.execute("UPDATE cosigner_head SET seq = %s, hash = %s WHERE id = 1",
                     (seq, record_hash))

    @staticmethod
    def _insert(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with conn.cursor() as cur, cur.copy(
                f"COPY cosigner_entries ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _read_head(self, conn: psycopg.Connection[Any]) -> Head:
        row = conn.execute("SELECT seq, hash FROM cosigner_head WHERE id = 1").fetchone()
        if row is None:
            raise StoreError(f"journal {self.where} has no head row")
        return Head(int(row[0]), str(row[1]))

    @staticmethod
    def _hash_at(conn: psycopg.Connection[Any], seq: int) -> str | None:
        row = conn.execute("SELECT record_hash FROM cosigner_entries WHERE seq = %s",
                           (seq,)).fetchone()
        return None if row is None else str(row[0])

    def _require_witnessed(self) -> None:
        """Before a write or a lookup: a head the witness could not take after its commit
        is written to it now, or StoreError (nothing more is recorded or posted)."""
        if self._unwitnessed is not None and self._journal_id is not None:
            self._write_witness(self._journal_id, self._unwitnessed)
            self._unwitnessed = None

    def _write_witness(self, journal_id: str, head: Head) -> None:
        assert self.witness is not None
        try:
            self.witness.write(journal_id, head)
        except OSError as exc:
            raise StoreError(f"journal {self.where}: committed up to seq {head.seq} but its "
                             f"witness {self.witness.path} cannot be written "
                             f"({exc.strerror or type(exc).__name__})") from None

    def _verify(self, conn: psycopg.Connection[Any], start: Head | None = None) -> VerifyResult:
        """Walk the chain in one repeatable-read transaction (from ``start`` if given)."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            head = self._read_head(conn)
            after = 0 if start is None else start.seq
            with conn.cursor(name=f"cosigner_verify_{secrets.token_hex(4)}") as cur:
                cur.itersize = 2000
                cur.execute(f"SELECT {', '.join(COLUMNS)} FROM cosigner_entries "  # noqa: S608
                            "WHERE seq > %s ORDER BY seq", (after,))
                entries = (stored_entry(row) for row in cur)
                origin = (0, GENESIS_HASH) if start is None else (start.seq, start.hash)
                return verify_entries(entries, (head.seq, head.hash), start=origin)

    def _decisions_for(self, conn: psycopg.Connection[Any], seqs: list[int]
                       ) -> dict[int, tuple[dict[str, Any] | None, str]]:
        found: dict[int, tuple[dict[str, Any] | None, str]] = {}
        rows = conn.execute(
            f"SELECT d.seq, d.item_id, d.mode, d.action, o.state FROM cosigner_entries AS d "  # noqa: S608
            f"{_LATEST_OUTCOME} WHERE d.kind = 'decision' AND d.seq = ANY(%s)",
            (seqs,)).fetchall()
        for seq, item_id, mode, action, outcome_state in rows:
            found[seq] = ({"item_id": item_id, "mode": mode, "action": action},
                          decision_state(mode, outcome_state))
        return found



