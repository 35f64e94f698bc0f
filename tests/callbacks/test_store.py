"""The order journal contract, run over every implementation (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from cosigner.callbacks.verify import OrderCallback, transition, verify
from cosigner.errors import JournalUnavailableError, LockLostError, StoreError
from cosigner.store import init_journal
from cosigner.store import postgres as pg_store
from cosigner.store import sqlite as sqlite_store
from cosigner.store.copy import copy_journal
from cosigner.store.orders import (
    APPLIED,
    LATE,
    MemoryOrderJournal,
    NewCallback,
    OrderJournal,
    order_journal_from_url,
)
from cosigner.store.orders_postgres import PostgresOrderJournal
from cosigner.store.orders_sqlite import SqliteOrderJournal
from cosigner.store.postgres import PostgresJournal
from tests.callbacks.conftest import SECRET, FakeClock, new_sqlite_journal, signed
from tests.postgres import reset_journal


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


@pytest.mark.external_service
class TestPostgres:
    """What only the PostgreSQL order journal has: migration, triggers, fencing."""

    def test_survives_reopen_and_verifies_at_writer_open(self, postgres_url: str) -> None:
        """Durable across instances; an edited row makes the writer's open refuse."""
        reset_journal(postgres_url)
        init_journal(postgres_url)
        journal = PostgresOrderJournal(postgres_url, transition, writer=True)
        journal.open()
        journal.record(callback(2), forward=True)
        journal.record(callback(1), forward=True)
        journal.close()
        again = PostgresOrderJournal(postgres_url, transition)
        again.open()
        try:
            assert again.queue_size() == 2
            assert again.record(callback(1), forward=True).duplicate
        finally:
            again.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute("DELETE FROM cosigner_order_callbacks")
            conn.execute("ALTER TABLE cosigner_order_callbacks DISABLE TRIGGER "
                         "cosigner_order_callbacks_append_only")
            conn.execute("UPDATE cosigner_order_callbacks SET deal_amount = '99' WHERE seq = 1")
        with pytest.raises(JournalUnavailableError, match="do not verify"):
            PostgresOrderJournal(postgres_url, transition, writer=True).open()

    def test_cut_off_end_is_refused_on_write(self, postgres_url: str) -> None:
        """The last callback removed (triggers disabled): the next write is refused."""
        reset_journal(postgres_url)
        init_journal(postgres_url)
        journal = PostgresOrderJournal(postgres_url, transition, writer=True)
        journal.open()
        try:
            journal.record(callback(2), forward=False)
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE cosigner_order_callbacks DISABLE TRIGGER "
                             "cosigner_order_callbacks_append_only")
                conn.execute("DELETE FROM cosigner_order_callbacks")
            with pytest.raises(StoreError, match="does not match the recorded head"):
                journal.record(callback(1), forward=False)
            assert not journal.verify().ok
        finally:
            journal.close()

    def test_schema_1_journal_is_migrated_by_init(self, postgres_url: str) -> None:
        """A journal from before the order tables is refused until `journal init` migrates
        it (under the advisory lock, keeping its decisions)."""
        reset_journal(postgres_url)
        with psycopg.connect(postgres_url, autocommit=True) as conn, conn.transaction():
            for statement in pg_store.MIGRATIONS[1]:
                conn.execute(statement)
            conn.execute("INSERT INTO cosigner_meta (key, value) VALUES ('schema_version', "
                         "'1'), ('creation_id', 'c0ffee'), ('created_at', "
                         "'2026-01-01T00:00:00.000000+00:00')")
            conn.execute("INSERT INTO cosigner_head (id, seq, hash) VALUES (1, 0, %s)",
                         ("0" * 64,))
        with pytest.raises(JournalUnavailableError, match="run `cosigner journal init`"):
            PostgresOrderJournal(postgres_url, transition).open()
        assert init_journal(postgres_url) == "c0ffee"
        journal = PostgresOrderJournal(postgres_url, transition, writer=True)
        journal.open()
        try:
            assert journal.record(callback(1), forward=False).record is not None
            assert journal.verify().ok
        finally:
            journal.close()

    def test_only_the_leader_records(self, postgres_url: str) -> None:
        """Fenced by the decision journal's leader epoch: a process that lost the lead
        records nothing (LockLostError, a StoreError: the listener answers 503)."""
        reset_journal(postgres_url)
        init_journal(postgres_url)
        first = PostgresJournal(postgres_url, writer=True, election=True)
        second = PostgresJournal(postgres_url, writer=True, election=True)
        first.open()
        second.open()
        orders = PostgresOrderJournal(postgres_url, transition, writer=True, fence=first)
        standby = PostgresOrderJournal(postgres_url, transition, writer=True, fence=second)
        orders.open()
        standby.open()
        try:
            assert first.lock_held()
            assert not second.lock_held()
            assert orders.record(callback(2), forward=False).record is not None
            with pytest.raises(LockLostError, match="not the writer"):
                standby.record(callback(1), forward=False)
            first.step_down()
            assert second.try_lead()
            with pytest.raises(LockLostError, match="not the writer"):
                orders.record(callback(1), forward=False)
            recorded = standby.record(callback(1), forward=False).record
            assert recorded is not None
            assert recorded.seq == 2
            assert standby.verify().ok
        finally:
            for journal in (orders, standby, first, second):
                journal.close()

    def test_journal_copy_moves_the_order_tables(self, postgres_url: str, tmp_path: Path,
                                                 clock: FakeClock) -> None:
        """`journal copy` from SQLite brings callbacks (same chain), state and outbox into
        PostgreSQL in the copy's transaction; the leader then continues the chain."""
        reset_journal(postgres_url)
        path = new_sqlite_journal(tmp_path / "j.db")
        source = SqliteOrderJournal(path, transition, writer=True, clock=clock)
        source.open()
        source.record(callback(2), forward=True)
        source.record(callback(1), forward=True)
        source.record(callback(3), forward=True)  # late: after a final status
        [first, *_] = source.events("335793449653514240")
        source.delivered(first.event_id, clock.now)
        history, events = source.history("335793449653514240"), source.events(
            "335793449653514240")
        state = source.order("335793449653514240")
        source.close()
        result = copy_journal(f"sqlite://{path}", postgres_url)
        assert result.order_callbacks == 3
        assert "3 order callbacks copied and verified" in result.summary()
        target = PostgresOrderJournal(postgres_url, transition, writer=True, clock=clock)
        target.open()
        try:
            assert target.history("335793449653514240") == history
            assert target.events("335793449653514240") == events
            assert target.order("335793449653514240") == state
            assert target.queue_size() == 1
            assert target.record(callback(1), forward=True).duplicate
            more = target.record(callback(1, order_no="42"), forward=False).record
            assert more is not None
            assert more.seq == 4
            assert more.prev_hash == history[-1].record_hash
            assert target.verify().ok
        finally:
            target.close()

    def test_journal_copy_refuses_edited_order_callbacks(self, postgres_url: str,
                                                         tmp_path: Path) -> None:
        """A source whose order callbacks do not verify: nothing is copied."""
        reset_journal(postgres_url)
        path = new_sqlite_journal(tmp_path / "j.db")
        source = SqliteOrderJournal(path, transition, writer=True)
        source.open()
        source.record(callback(2), forward=False)
        source.close()
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER order_callbacks_no_update")
        conn.execute("UPDATE order_callbacks SET deal_amount = '99' WHERE seq = 1")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="order callbacks do not verify"):
            copy_journal(f"sqlite://{path}", postgres_url)
        check = PostgresJournal(postgres_url)
        check.open()
        try:
            assert check.head().seq == 0
        finally:
            check.close()


class TestFactory:
    def test_postgresql(self) -> None:
        """postgresql URLs give the PostgreSQL order journal (not opened: no I/O); its
        name never shows the password."""
        journal = order_journal_from_url("postgresql://cosigner:pw@db/journal", transition)
        assert isinstance(journal, PostgresOrderJournal)
        assert "pw" not in repr(journal)

    def test_sqlite_and_memory(self, tmp_path: Path) -> None:
        """sqlite URLs give the SQLite order journal; memory:// the in-memory one."""
        journal = order_journal_from_url(f"sqlite://{tmp_path}/j.db", transition)
        assert isinstance(journal, SqliteOrderJournal)
        assert journal.path == tmp_path / "j.db"
        assert isinstance(order_journal_from_url("memory://", transition), MemoryOrderJournal)
