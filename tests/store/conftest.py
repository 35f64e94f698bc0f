"""Fixtures for the journal tests: a controllable clock, decision builders, and one
harness per store so the contract suite runs unchanged over every implementation.

The PostgreSQL harness (``pytest.param("postgres", marks=pytest.mark.external_service)``)
skips with the reason when ``COSIGNER_TEST_POSTGRES_URL`` is unset or unreachable; it
uses one scratch database per session, emptied before each test.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cosigner.models import Action
from cosigner.store import Journal, MemoryJournal, NewDecision, SqliteJournal

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def content_hash(text: str) -> str:
    """A content hash standing for an item whose content is ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()


def decision(item_id: int, action: Action | str = Action.APPROVE, *, mode: str = "enforce",
             content: str = "v1", **fields: Any) -> NewDecision:
    """A valid decision for ``item_id``; keyword arguments override its fields."""
    values: dict[str, Any] = {
        "item_id": item_id, "content_hash": content_hash(f"{item_id}:{content}"),
        "chain_id": "56", "from_address": "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8",
        "to_address": "0x1111111111111111111111111111111111111111", "amount_text": "4.10",
        "action": action, "rule": "treasury-sweeps", "reasons": ("rule:treasury-sweeps",),
        "policy_name": "treasury-prod", "policy_sha256": content_hash("policy"), "mode": mode,
    }
    values.update(fields)
    return NewDecision(**values)


class InjectedFailure(Exception):
    """Raised by a harness to break a write half-way through a batch."""


@dataclass
class MemoryHarness:
    """Builds :class:`MemoryJournal` s whose writes can be broken on a chosen item."""

    persistent = False
    fail_item: int | None = None
    journals: list[MemoryJournal] = field(default_factory=list)

    def make(self, clock: FakeClock) -> Journal:
        journal = MemoryJournal(clock=clock, on_append=self._check)
        journal.open()
        self.journals.append(journal)
        return journal

    def reopen(self, journal: Journal) -> Journal:
        journal.close()
        journal.open()
        return journal

    @contextmanager
    def failing_on(self, item_id: int) -> Iterator[None]:
        """Writes fail when they reach an entry for ``item_id``."""
        self.fail_item = item_id
        try:
            yield
        finally:
            self.fail_item = None

    def _check(self, payload: Mapping[str, Any]) -> None:
        if payload["item_id"] == self.fail_item:
            raise InjectedFailure(f"injected failure at item {self.fail_item}")


@dataclass
class SqliteHarness:
    """Builds :class:`SqliteJournal` s in a temporary directory; breaks writes with a
    trigger added from a second connection, so SQLite itself aborts mid-batch."""

    directory: Path
    persistent = True
    clock: FakeClock | None = None

    @property
    def path(self) -> Path:
        return self.directory / "journal" / "journal.db"

    def make(self, clock: FakeClock) -> Journal:
        self.clock = clock
        journal = SqliteJournal(self.path, writer=True, clock=clock)
        journal.init()
        journal.open()
        return journal

    def reopen(self, journal: Journal) -> Journal:
        assert self.clock is not None
        journal.close()
        again = SqliteJournal(self.path, writer=True, clock=self.clock)
        again.open()
        return again

    @contextmanager
    def failing_on(self, item_id: int) -> Iterator[None]:
        """Writes fail (in SQLite) when they reach an entry for ``item_id``."""
        with sqlite3.connect(self.path) as conn:
            conn.execute(f"CREATE TRIGGER test_fail BEFORE INSERT ON entries "
                         f"WHEN NEW.item_id = {int(item_id)} "
                         f"BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        conn.close()
        try:
            yield
        finally:
            with sqlite3.connect(self.path) as conn:
                conn.execute("DROP TRIGGER test_fail")
            conn.close()


@dataclass
class PostgresHarness:
    """Builds :class:`PostgresJournal` s in a scratch database; breaks writes with a
    trigger added from a second connection, so PostgreSQL itself aborts mid-batch."""

    url: str
    persistent = True
    clock: FakeClock | None = None

    def make(self, clock: FakeClock) -> Journal:
        from cosigner.store.postgres import PostgresJournal
        self.clock = clock
        journal = PostgresJournal(self.url, writer=True, clock=clock)
        journal.init()
        journal.open()
        return journal

    def reopen(self, journal: Journal) -> Journal:
        from cosigner.store.postgres import PostgresJournal
        assert self.clock is not None
        journal.close()
        again = PostgresJournal(self.url, writer=True, clock=self.clock)
        again.open()
        return again

    @contextmanager
    def failing_on(self, item_id: int) -> Iterator[None]:
        """Writes fail (in PostgreSQL) when they reach an entry for ``item_id``."""
        import psycopg
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"""CREATE FUNCTION cosigner_test_fail() RETURNS trigger
                LANGUAGE plpgsql AS $$ BEGIN IF NEW.item_id = {int(item_id)} THEN
                RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$""")
            conn.execute("CREATE TRIGGER test_fail BEFORE INSERT ON cosigner_entries "
                         "FOR EACH ROW EXECUTE FUNCTION cosigner_test_fail()")
        try:
            yield
        finally:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("DROP FUNCTION cosigner_test_fail() CASCADE")


Harness = MemoryHarness | SqliteHarness | PostgresHarness

STORE_PARAMS = [pytest.param("memory", id="memory"), pytest.param("sqlite", id="sqlite"),
                pytest.param("postgres", id="postgres", marks=pytest.mark.external_service)]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A scratch PostgreSQL database for the session (skips without a server)."""
    from tests.postgres import scratch_database
    with scratch_database("store") as url:
        yield url


@pytest.fixture(params=STORE_PARAMS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """One harness per store kind."""
    if request.param == "memory":
        return MemoryHarness()
    if request.param == "postgres":
        from tests.postgres import reset_journal
        url: str = request.getfixturevalue("postgres_url")
        reset_journal(url)
        return PostgresHarness(url)
    return SqliteHarness(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def journal(harness: Harness, clock: FakeClock) -> Iterator[Journal]:
    """An open, empty journal of each store kind."""
    journal = harness.make(clock)
    yield journal
    journal.close()
