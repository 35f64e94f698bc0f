"""``cosigner journal copy``: move a journal (records, hash chain, limit history, policy
first-seen times) into an empty PostgreSQL journal, and verify the copy end to end.

The entries are copied as they are (same seqs, fields and hashes), so the copy's chain
is the source's chain: its head must equal the source's head, and walking it from the
first entry must verify.  The limits' history is the enforced approvals among those
entries, so it moves with them.  The C2C order tables (callbacks with their own chain,
order state, outbox) are copied in the same transaction, checked before and verified
after.  Both journals are opened as *writers* for the copy,
so a daemon still writing either one makes the copy refuse (exit 2) instead of missing
its last decisions.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from cosigner.errors import ConfigError, StoreError
from cosigner.store import journal_from_url
from cosigner.store.base import Head, Journal
from cosigner.store.chain import StoredEntry, parse_timestamp
from cosigner.store.orders import CALLBACK_COLUMNS, LATE
from cosigner.store.orders_postgres import OrderRows, PostgresOrderJournal, import_order_rows
from cosigner.store.orders_sql import EVENT_COLUMNS, STATE_COLUMNS
from cosigner.store.postgres import PostgresJournal
from cosigner.store.records import COLUMNS, stored_entry
from cosigner.store.sqlite import SqliteJournal
from cosigner.store.urls import mask_url


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What was copied: the entries, the policies and the (equal) heads."""

    entries: int
    policies: int
    head: Head
    source: str
    target: str
    order_callbacks: int = 0

    def summary(self) -> str:
        return (f"copied {self.entries} entries and {self.policies} policy digests from "
                f"{self.source} to {self.target}; the copy verifies, head seq {self.head.seq} "
                f"hash {self.head.hash}; {self.order_callbacks} order callbacks copied "
                "and verified")


def copy_journal(source_url: str, target_url: str) -> CopyResult:
    """Copy the journal at ``source_url`` into the empty PostgreSQL journal at ``target_url``.

    The target is created first when its database has no journal yet.

    Raises:
        ConfigError: a URL is unusable, the target is not PostgreSQL, a journal is missing
            or another process writes it (exit 2).
        StoreError: the source does not verify, the target is not empty, or the copy does
            not verify (exit 1; the target is left as it was: one transaction).
    """
    source = journal_from_url(source_url, writer=True)
    target = journal_from_url(target_url, writer=True)
    if not isinstance(target, PostgresJournal):
        raise ConfigError(f"--to {mask_url(target_url)}: copy into a postgresql:// journal")
    if not isinstance(source, SqliteJournal | PostgresJournal):
        raise ConfigError(f"--from {mask_url(source_url)}: copy from a sqlite:/// or "
                          "postgresql:// journal")
    source_name, target_name = mask_url(source_url), mask_url(target_url)
    if source_name == target_name:
        raise ConfigError("--from and --to name the same journal")
    target.init()
    with _opened(source), _opened(target):
        checked = source.verify()
        if not checked.ok:
            raise StoreError(f"journal {source_name} does not verify ({checked.problem}); "
                             "nothing was copied")
        head = source.head()
        orders: OrderRows | None
        if isinstance(source, PostgresJournal):
            entries, policies = source.entries(), source.policies()
            orders = _postgres_orders(source_url, source_name)
        else:
            entries, policies = _sqlite_entries(source), _sqlite_policies(source)
            orders = _sqlite_orders(source)
        if orders is not None:
            orders.check(source_name)
        copied_head = target.import_entries(
            entries, policies,
            also=None if orders is None else
            lambda conn: import_order_rows(conn, orders, target_name))
        result = target.verify()
        if not result.ok or copied_head != head or target.head() != head:
            raise StoreError(f"the copy in {target_name} does not verify "
                             f"({result.problem or 'its head differs from the source'})")
        copied = _check_orders(target_url, target_name, orders)
        return CopyResult(result.entries, len(policies), head, source_name, target_name,
                          copied)


def _check_orders(target_url: str, target_name: str, orders: OrderRows | None) -> int:
    """Verify the copied order callbacks end at the source's order head; their count."""
    # Verifying reads only: no callback is recorded, so the transition is never asked.
    journal = PostgresOrderJournal(target_url, lambda previous, status: LATE)
    with contextlib.closing(journal):
        journal.open()
        checked = journal.verify()
    # verify() checks the chain ends at the head row, which the copy set to the source's.
    expected = orders.head[0] if orders is not None else 0
    if not checked.ok or checked.entries != expected:
        raise StoreError(f"the order callbacks copied into {target_name} do not verify "
                         f"({checked.problem or 'their head differs from the source'})")
    return checked.entries


def _read_orders(conn: Any, callbacks: str, head: str, state: str, outbox: str
                 ) -> OrderRows:
    """The order tables through a DB-API connection (SQLite or psycopg); the table names
    are constants of this module, never input."""
    found = conn.execute(f"SELECT seq, hash FROM {head} WHERE id = 1").fetchone()  # noqa: S608
    return OrderRows(
        callbacks=[tuple(r) for r in conn.execute(
            f"SELECT {', '.join(CALLBACK_COLUMNS)} FROM {callbacks} ORDER BY seq"  # noqa: S608
        ).fetchall()],
        head=(int(found[0]), str(found[1])) if found else (-1, ""),
        states=[tuple(r) for r in conn.execute(
            f"SELECT {', '.join(STATE_COLUMNS)} FROM {state}").fetchall()],  # noqa: S608
        events=[tuple(r) for r in conn.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM {outbox} ORDER BY seq"  # noqa: S608
        ).fetchall()])


def _sqlite_orders(journal: SqliteJournal) -> OrderRows | None:
    """The source's order tables (None: a journal from before them)."""
    conn = _sqlite_connection(journal)
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "order_callbacks" not in tables:
            return None
        conn.execute("BEGIN")  # one snapshot
        return _read_orders(conn, "order_callbacks", "order_chain_head", "order_state",
                            "order_outbox")
    except sqlite3.Error as exc:
        raise StoreError(f"journal {journal.path} cannot be read ({exc})") from exc
    finally:
        conn.close()


def _postgres_orders(url: str, where: str) -> OrderRows:
    """The source's order tables, read in one snapshot."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return _read_orders(conn, "cosigner_order_callbacks", "cosigner_order_head",
                                "cosigner_order_state", "cosigner_order_outbox")
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"journal {where} cannot be read ({text.replace(url, where)})"
                         ) from None


@contextlib.contextmanager
def _opened(journal: Journal) -> Iterator[Journal]:
    journal.open()
    try:
        yield journal
    finally:
        journal.close()


def _sqlite_connection(journal: SqliteJournal) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(journal.path)) + "?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"journal {journal.path} cannot be read ({exc})") from exc


def _sqlite_entries(journal: SqliteJournal) -> Iterator[StoredEntry]:
    """Every entry of a SQLite journal as stored, in seq order (the same columns)."""
    conn = _sqlite_connection(journal)
    try:
        cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM entries "  # noqa: S608
                              "ORDER BY seq")
        for row in cursor:
            yield stored_entry(row)
    except sqlite3.Error as exc:
        raise StoreError(f"journal {journal.path} cannot be read ({exc})") from exc
    finally:
        conn.close()


def _sqlite_policies(journal: SqliteJournal) -> dict[str, datetime]:
    conn = _sqlite_connection(journal)
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "policies" not in tables:
            return {}
        return {sha: parse_timestamp(seen) for sha, seen in conn.execute(
            "SELECT sha256, first_seen FROM policies")}
    except sqlite3.Error as exc:
        raise StoreError(f"journal {journal.path} cannot be read ({exc})") from exc
    finally:
        conn.close()
