"""The order journal contract, run over every implementation (memory, SQLite)."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from cosigner.callbacks.verify import OrderCallback, transition, verify
from cosigner.errors import JournalUnavailableError, SettingsError, StoreError
from cosigner.store import init_journal
from cosigner.store import sqlite as sqlite_store
from cosigner.store.orders import (
    APPLIED,
    LATE,
    MemoryOrderJournal,
    NewCallback,
    OrderJournal,
    order_journal_from_url,
)
from cosigner.store.orders_sqlite import SqliteOrderJournal
from tests.callbacks.conftest import SECRET, FakeClock, new_sqlite_journal, signed


def callback(status: int = 1, *, source: str | None = "127.0.0.1", **kwargs: object
             ) -> NewCallback:
    """A verified callback, ready to record."""
    verified = verify(signed(status, **kwargs), SECRET, "casefold")  # type: ignore[arg-type]
    assert isinstance(verified, OrderCallback)
    return NewCallback(verified.order_no, verified.merchant_order_no, verified.status,
                       verified.deal_amount, verified.order_type, verified.content_hash,
                       verified.body, source)


class TestRecording:
    def test_first_callback_is_applied_and_chained(self, order_journal: OrderJournal) -> None:
        """A new order's callback is applied, recorded at seq 1 and moves the order."""
        result = order_journal.record(callback(2), forward=False)
        assert not result.duplicate
        assert result.record is not None
        assert (result.record.seq, result.record.outcome, result.record.previous_status) == (
            1, APPLIED, None)
        assert result.record.event_id is None
        order = order_journal.order("335793449653514240")
        assert order is not None
        assert (order.status, order.deal_amount, order.callbacks) == (2, "10.50", 1)
        assert order_journal.verify().ok

    def test_same_callback_again_records_nothing(self, order_journal: OrderJournal) -> None:
        """The provider's retry of a recorded callback is a duplicate: nothing new."""
        order_journal.record(callback(1), forward=True)
        again = order_journal.record(callback(1), forward=True)
        assert again.duplicate
        assert again.record is None
        assert len(order_journal.history("335793449653514240")) == 1
        assert order_journal.queue_size() == 1

    def test_final_is_never_overwritten(self, order_journal: OrderJournal,
                                        clock: FakeClock) -> None:
        """A non-final status after a final one is recorded as late, not applied."""
        order_journal.record(callback(1), forward=True)
        clock.advance(minutes=1)
        late = order_journal.record(callback(2), forward=True)
        assert late.record is not None
        assert (late.record.outcome, late.record.previous_status) == (LATE, 1)
        assert late.record.event_id is None
        order = order_journal.order("335793449653514240")
        assert order is not None
        assert order.status == 1
        assert [r.outcome for r in order_journal.history("335793449653514240")] == [
            APPLIED, LATE]
        assert order_journal.queue_size() == 1

    def test_forward_adds_one_event_per_applied_callback(
            self, order_journal: OrderJournal) -> None:
        """With forwarding, each applied callback has an outbox event with its body."""
        first = order_journal.record(callback(2), forward=True).record
        second = order_journal.record(callback(1), forward=True).record
        assert first is not None
        assert second is not None
        events = order_journal.events("335793449653514240")
        assert [e.event_id for e in events] == [first.event_id, second.event_id]
        body = json.loads(events[1].body)
        assert body == {"event_id": second.event_id, "orderNo": "335793449653514240",
                        "merchantOrderNo": "1231222112d8", "status": 1,
                        "dealAmount": "10.50", "orderType": 1,
                        "received_at": "2026-03-03T12:00:00.000000+00:00"}

    def test_orders_filter_by_time_and_status(self, order_journal: OrderJournal,
                                              clock: FakeClock) -> None:
        """orders() filters on the last update and on statuses, oldest first."""
        order_journal.record(callback(1, order_no="A"), forward=False)
        clock.advance(hours=2)
        order_journal.record(callback(2, order_no="B"), forward=False)
        assert [o.order_no for o in order_journal.orders()] == ["A", "B"]
        assert [o.order_no for o in order_journal.orders(statuses={2})] == ["B"]
        since = clock.now - timedelta(hours=1)
        assert [o.order_no for o in order_journal.orders(since=since)] == ["B"]
        assert order_journal.order("C") is None
        assert order_journal.history("C") == []


class TestOutbox:
    def test_due_events_wait_for_the_older_event_of_their_order(
            self, order_journal: OrderJournal, clock: FakeClock) -> None:
        """Events of one order go out in order; other orders are not held up."""
        order_journal.record(callback(2, order_no="A"), forward=True)
        order_journal.record(callback(1, order_no="A"), forward=True)
        order_journal.record(callback(1, order_no="B"), forward=True)
        due = order_journal.due_events(clock.now, 10)
        assert [(e.order_no, e.seq) for e in due] == [("A", 1), ("B", 3)]
        order_journal.attempt_failed(due[0].event_id, clock.now,
                                     clock.now + timedelta(seconds=30), "HTTP 503")
        order_journal.delivered(due[1].event_id, clock.now)
        assert order_journal.due_events(clock.now, 10) == []
        assert order_journal.next_due() == clock.now + timedelta(seconds=30)
        clock.advance(seconds=30)
        (retry,) = order_journal.due_events(clock.now, 10)
        assert (retry.seq, retry.attempts, retry.last_error) == (1, 1, "HTTP 503")
        order_journal.delivered(retry.event_id, clock.now)
        (third,) = order_journal.due_events(clock.now, 10)
        assert third.seq == 2
        assert order_journal.queue_size() == 1
        order_journal.delivered(third.event_id, clock.now)
        assert order_journal.queue_size() == 0
        assert order_journal.next_due() is None

    def test_unknown_event_is_an_error(self, order_journal: OrderJournal,
                                       clock: FakeClock) -> None:
        """Marking an event that does not exist raises StoreError."""
        with pytest.raises(StoreError, match="no outbox event"):
            order_journal.delivered("nope", clock.now)


class TestSqlite:
    def test_survives_reopen(self, tmp_path: Path, clock: FakeClock) -> None:
        """Callbacks, state and outbox are durable across a close and a new instance."""
        path = new_sqlite_journal(tmp_path / "j.db")
        journal = SqliteOrderJournal(path, transition, writer=True,
                                     clock=clock)
        journal.open()
        journal.record(callback(1), forward=True)
        journal.close()
        again = SqliteOrderJournal(path, transition)
        again.open()
        try:
            assert again.queue_size() == 1
            assert again.record(callback(1), forward=True).duplicate
            assert again.verify().ok
        finally:
            again.close()

    def test_journal_from_before_the_order_tables_is_migrated_by_init(
            self, tmp_path: Path) -> None:
        """A schema-2 journal has no order tables: refused until `journal init` adds them."""
        path = tmp_path / "old.db"
        conn = sqlite3.connect(path)
        for script in sqlite_store._MIGRATIONS[:2]:
            conn.executescript(script)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
            ("creation_id", "c0ffee"), ("created_at", "2026-01-01T00:00:00.000000+00:00"),
            ("head_seq", "0"), ("head_hash", "0" * 64), ("schema_version", "2")])
        conn.commit()
        conn.close()
        with pytest.raises(JournalUnavailableError, match="run `cosigner journal init`"):
            SqliteOrderJournal(path, transition).open()
        init_journal(f"sqlite://{path}")
        journal = SqliteOrderJournal(path, transition, writer=True)
        journal.open()
        try:
            assert journal.record(callback(1), forward=False).record is not None
            assert journal.verify().ok
        finally:
            journal.close()

    def test_missing_journal_is_refused(self, tmp_path: Path) -> None:
        """No database file: unavailable, and none is created."""
        with pytest.raises(JournalUnavailableError, match="does not exist"):
            SqliteOrderJournal(tmp_path / "none.db", transition, writer=True,
                               ).open()
        assert not (tmp_path / "none.db").exists()

    def test_edited_callback_fails_verification_and_the_writer_open(
            self, tmp_path: Path) -> None:
        """An edited callback row breaks the chain: verify names it, the writer refuses."""
        path = new_sqlite_journal(tmp_path / "j.db")
        journal = SqliteOrderJournal(path, transition, writer=True)
        journal.open()
        journal.record(callback(2), forward=False)
        journal.record(callback(1), forward=False)
        journal.close()
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER order_callbacks_no_update")
        conn.execute("UPDATE order_callbacks SET deal_amount = '99' WHERE seq = 1")
        conn.commit()
        conn.close()
        reader = SqliteOrderJournal(path, transition)
        reader.open()
        result = reader.verify()
        reader.close()
        assert not result.ok
        assert result.first_bad_seq == 1
        with pytest.raises(JournalUnavailableError, match="do not verify"):
            SqliteOrderJournal(path, transition, writer=True).open()

    def test_callbacks_are_append_only(self, tmp_path: Path) -> None:
        """Triggers refuse deleting a recorded callback."""
        path = new_sqlite_journal(tmp_path / "j.db")
        journal = SqliteOrderJournal(path, transition, writer=True)
        journal.open()
        journal.record(callback(1), forward=False)
        journal.close()
        conn = sqlite3.connect(path)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM order_callbacks")
        conn.close()

    def test_cut_off_end_is_refused_on_write(self, tmp_path: Path) -> None:
        """The last callback removed (triggers dropped): the next write is refused."""
        path = new_sqlite_journal(tmp_path / "j.db")
        journal = SqliteOrderJournal(path, transition, writer=True)
        journal.open()
        journal.record(callback(2), forward=False)
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER order_callbacks_no_delete")
        conn.execute("DELETE FROM order_callbacks")
        conn.commit()
        conn.close()
        try:
            with pytest.raises(StoreError, match="does not match the recorded head"):
                journal.record(callback(1), forward=False)
            assert not journal.verify().ok
        finally:
            journal.close()


class TestFactory:
    def test_postgresql_has_no_order_tables_yet(self) -> None:
        """With a PostgreSQL journal, callbacks are refused at start with one clear line."""
        with pytest.raises(SettingsError, match="PostgreSQL has no order tables yet"):
            order_journal_from_url("postgresql://cosigner:pw@db/journal", transition)

    def test_sqlite_and_memory(self, tmp_path: Path) -> None:
        """sqlite URLs give the SQLite order journal; memory:// the in-memory one."""
        journal = order_journal_from_url(f"sqlite://{tmp_path}/j.db", transition)
        assert isinstance(journal, SqliteOrderJournal)
        assert journal.path == tmp_path / "j.db"
        assert isinstance(order_journal_from_url("memory://", transition), MemoryOrderJournal)
