"""What only the PostgreSQL journal does: migrations under a lock, the leader lock and its
fencing, the database's own refusal of a second verdict or an approval over a limit,
post claims, the witness, ``journal copy``, and never showing the URL's userinfo.

The shared behaviour is in ``test_contract.py`` (parametrized over every store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cosigner.cli import main
from cosigner.errors import (
    JournalConflictError,
    JournalLockedError,
    JournalUnavailableError,
    LockLostError,
    StoreError,
)
from cosigner.models import Action
from cosigner.store import ApprovalRow, NewDecision, NewOutcome, SqliteJournal
from cosigner.store.postgres import SCHEMA_VERSION, PostgresJournal, mask_url
from cosigner.store.witness import Witness
from tests.postgres import reset_journal, terminate_backends
from tests.store.conftest import FakeClock, decision

pytestmark = pytest.mark.external_service


@pytest.fixture
def url(postgres_url: str) -> str:
    """The session's scratch database, emptied."""
    reset_journal(postgres_url)
    return postgres_url


@pytest.fixture
def writer(url: str) -> Iterator[PostgresJournal]:
    journal = PostgresJournal(url, writer=True)
    journal.init()
    journal.open()
    yield journal
    journal.close()


class CountGuard:
    """At most ``limit`` enforced approvals in the window (a pure LimitGuard)."""

    window = timedelta(hours=24)

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def violations(self, history: Sequence[ApprovalRow], approvals: Sequence[NewDecision],
                   now: datetime) -> dict[int, str]:
        used = len(history)
        refused = {}
        for approval in approvals:
            if used + 1 > self.limit:
                refused[approval.item_id] = "limit:count"
            else:
                used += 1
        return refused


class TestMasking:
    @pytest.mark.parametrize(("url", "shown"), [
        ("postgresql://app:s3cret@db:5432/cosigner", "postgresql://***@db:5432/cosigner"),
        ("postgres://app@db/cosigner", "postgres://***@db/cosigner"),
        ("postgresql://db/cosigner?user=app&password=s3cret",
         "postgresql://db/cosigner?user=***&password=***"),
        ("postgresql://db/cosigner", "postgresql://db/cosigner"),
    ])
    def test_userinfo_is_masked(self, url: str, shown: str) -> None:
        """User and password never appear; host, port and database do."""
        assert mask_url(url) == shown

    def test_unreachable_server_error_names_no_secret(self) -> None:
        """A connection failure names the masked URL, not the password."""
        journal = PostgresJournal("postgresql://app:hunter2@127.0.0.1:1/cosigner",
                                  connect_timeout=2)
        with pytest.raises(JournalUnavailableError) as caught:
            journal.open()
        assert "hunter2" not in str(caught.value)
        assert "postgresql://***@127.0.0.1:1/cosigner" in str(caught.value)


class TestInit:
    def test_open_refuses_an_uninitialised_database(self, url: str) -> None:
        """open() never creates: an empty database is 'run cosigner journal init'."""
        with pytest.raises(JournalUnavailableError, match="cosigner journal init"):
            PostgresJournal(url, writer=True).open()

    def test_concurrent_init_does_not_race(self, url: str) -> None:
        """Eight replicas initialising one empty database at once make one journal."""
        ids: list[str] = []
        errors: list[BaseException] = []

        def init() -> None:
            try:
                ids.append(PostgresJournal(url).init())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=init) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(set(ids)) == 1

    def test_init_again_keeps_the_journal(self, writer: PostgresJournal, url: str) -> None:
        """init is idempotent: same id, records kept."""
        writer.record_decisions([decision(1)])
        assert PostgresJournal(url).init() == writer.journal_id
        assert writer.head().seq == 1

    def test_newer_schema_is_refused_with_exit_2(self, writer: PostgresJournal, url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        """A journal from a newer cosigner is refused by open and by init (exit 2)."""
        writer.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE cosigner_meta SET value = %s WHERE key = 'schema_version'",
                         (str(SCHEMA_VERSION + 1),))
        with pytest.raises(JournalUnavailableError, match="newer than this cosigner"):
            PostgresJournal(url).open()
        assert main(["journal", "init", "--database-url", url]) == 2
        assert "newer than this cosigner" in capsys.readouterr().err


class TestLeaderLock:
    def test_second_writer_is_refused_naming_the_holder(self, writer: PostgresJournal,
                                                        url: str) -> None:
        """Without election a second writer is JournalLockedError (exit 2)."""
        with pytest.raises(JournalLockedError, match="another writer: cosigner"):
            PostgresJournal(url, writer=True).open()

    def test_standby_takes_over_when_the_leader_closes(self, writer: PostgresJournal,
                                                       url: str) -> None:
        """With election a second writer opens as a standby and leads once the lock is free,
        with a higher epoch."""
        standby = PostgresJournal(url, writer=True, election=True)
        standby.open()
        try:
            assert not standby.lock_held()
            assert not standby.try_lead()
            with pytest.raises(LockLostError):
                standby.record_decisions([decision(1)])
            first_epoch = writer.epoch
            writer.close()
            assert standby.try_lead()
            assert standby.epoch is not None
            assert first_epoch is not None
            assert standby.epoch > first_epoch
            assert standby.record_decisions([decision(1)])[0].seq == 1
        finally:
            standby.close()

    def test_close_releases_the_lock_before_the_session_ends(
            self, writer: PostgresJournal, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """A closing leader unlocks explicitly: a standby leads at once, even while the
        server has not yet noticed the closed session (here: a close that never reaches it,
        as if the server were slow to see it)."""
        standby = PostgresJournal(url, writer=True, election=True)
        standby.open()
        conn = writer._conn
        assert conn is not None
        monkeypatch.setattr(conn, "close", lambda: None)  # the session outlives close()
        try:
            writer.close()
            assert standby.try_lead()
        finally:
            standby.close()
            monkeypatch.undo()
            conn.close()

    def test_leader_whose_connection_is_killed_cannot_record(self, writer: PostgresJournal,
                                                             url: str) -> None:
        """pg_terminate_backend of the lock's connection: the next write is LockLostError,
        and every write after it too, until it leads again."""
        writer.record_decisions([decision(1)])
        assert terminate_backends(url) == 1
        with pytest.raises(LockLostError):
            writer.record_decisions([decision(2)])
        assert not writer.lock_held()
        with pytest.raises(LockLostError):
            writer.record_outcomes([NewOutcome(1, 1, "posted", 200, "ok")])
        assert writer.try_lead()
        assert writer.record_decisions([decision(2)])[0].seq == 2

    def test_check_lead_notices_a_killed_connection(self, writer: PostgresJournal,
                                                    url: str) -> None:
        """The leadership probe turns False once the lock's connection is gone."""
        assert writer.check_lead()
        terminate_backends(url)
        assert not writer.check_lead()
        assert not writer.lock_held()

    def test_a_stale_epoch_cannot_record(self, writer: PostgresJournal, url: str) -> None:
        """Fencing: once another process took the lock (a new epoch), the old one's write
        is refused inside the transaction even though its connection is alive."""
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE cosigner_head SET leader_epoch = leader_epoch + 1")
        with pytest.raises(LockLostError, match="another process became the writer"):
            writer.record_decisions([decision(1)])
        assert writer.head().seq == 0


class TestAuthority:
    def test_second_verdict_for_an_id_is_refused(self, writer: PostgresJournal) -> None:
        """The journal refuses a second enforce approve/reject for one id; holds are fine."""
        writer.record_decisions([decision(1, Action.HOLD)])
        writer.record_decisions([decision(1)])
        with pytest.raises(JournalConflictError) as caught:
            writer.record_decisions([decision(2), decision(1, Action.REJECT)])
        assert caught.value.conflicts == {1: "already_decided"}
        assert writer.head().seq == 2

    def test_two_unfenced_writers_cannot_exceed_a_limit_or_decide_twice(self, url: str) -> None:
        """Two 'leaders' (fencing off, a test hook) racing on the same ids with a limit of
        10: the head row lock and the verdicts key let exactly 10 approvals through."""
        PostgresJournal(url).init()
        journals = [PostgresJournal(url, writer=True, election=True) for _ in range(2)]
        for j in journals:
            j.open()
            j.fenced = False
        recorded: list[list[int]] = [[], []]

        def run(n: int) -> None:
            for item_id in range(40):
                try:
                    records = journals[n].record_decisions([decision(item_id)], CountGuard(10))
                except JournalConflictError:
                    continue
                recorded[n] += [r.item_id for r in records]

        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            everything = recorded[0] + recorded[1]
            assert len(everything) == 10
            assert len(set(everything)) == 10
            assert len(journals[0].approvals_since(datetime(2000, 1, 1).astimezone())) == 10
            assert journals[0].verify().ok
        finally:
            for j in journals:
                j.close()

    def test_an_edited_approval_stops_the_limits(self, writer: PostgresJournal,
                                                 url: str) -> None:
        """An approval whose amount was edited in the database is caught when the limits
        read it: the write is refused instead of counting a falsified history."""
        writer.record_decisions([decision(1)], CountGuard(5))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE cosigner_entries DISABLE TRIGGER USER")
            conn.execute("UPDATE cosigner_entries SET amount_text = '0.01' WHERE seq = 1")
            conn.execute("ALTER TABLE cosigner_entries ENABLE TRIGGER USER")
        fresh = PostgresJournal(url, writer=True, election=True)
        writer.close()
        with pytest.raises(JournalUnavailableError, match="does not verify"):
            fresh.open()
        fresh.close()
        # A writer that verified before the edit reads the approvals once, checked.
        again = PostgresJournal(url, writer=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE cosigner_entries DISABLE TRIGGER USER")
            conn.execute("UPDATE cosigner_entries SET amount_text = '4.10' WHERE seq = 1")
            conn.execute("ALTER TABLE cosigner_entries ENABLE TRIGGER USER")
        again.open()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER TABLE cosigner_entries DISABLE TRIGGER USER")
                conn.execute("UPDATE cosigner_entries SET amount_text = '0.01' WHERE seq = 1")
                conn.execute("ALTER TABLE cosigner_entries ENABLE TRIGGER USER")
            with pytest.raises(StoreError, match="was edited"):
                again.record_decisions([decision(2)], CountGuard(5))
            assert again.head().seq == 1
        finally:
            again.close()

    def test_approvals_since_checks_each_row(self, writer: PostgresJournal, url: str) -> None:
        """The approvals the pipeline's limits start from (``approvals_since``) are
        hash-checked as they are read, as on SQLite: an amount lowered in the database
        raises instead of loosening a limit."""
        writer.record_decisions([decision(1), decision(2)])
        since = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
        assert [row.amount_text for row in writer.approvals_since(since)] == ["4.10", "4.10"]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE cosigner_entries DISABLE TRIGGER USER")
            conn.execute("UPDATE cosigner_entries SET amount_text = '0.01' WHERE seq = 2")
            conn.execute("ALTER TABLE cosigner_entries ENABLE TRIGGER USER")
        with pytest.raises(StoreError, match=r"record seq 2 \(item 2\) was edited"):
            writer.approvals_since(since)

    def test_post_claims(self, writer: PostgresJournal, url: str) -> None:
        """The recording session holds an item's claim; another live session cannot take
        it; once the holder is gone it can."""
        writer.record_decisions([decision(1)])
        assert writer.holds_claim(1)
        other = PostgresJournal(url, writer=True, election=True)
        other.open()
        try:
            assert not other.claim_post(1)
            writer.close()
            # The server ends the closed session's backend a moment later.
            deadline = time.monotonic() + 10
            while not other.claim_post(1) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert other.claim_post(1)
            assert other.holds_claim(1)
        finally:
            other.close()


class TestWitness:
    def test_a_rolled_back_journal_is_refused(self, url: str, tmp_path: Path) -> None:
        """A witness ahead of the database (a restored older backup) stops open."""
        witness = Witness(tmp_path / "witness.json")
        journal = PostgresJournal(url, writer=True, witness=witness)
        journal.init()
        journal.open()
        journal.record_decisions([decision(1), decision(2)])
        state = witness.read()
        assert state is not None
        assert state.head.seq == 2
        journal.close()
        witness.write(state.journal_id, type(state.head)(5, state.head.hash))
        with pytest.raises(JournalUnavailableError, match="behind its witness"):
            PostgresJournal(url, writer=True, witness=witness).open()


class TestCheckpoint:
    """A start verifies the chain from the checkpoint a leader recorded, not from seq 1."""

    @staticmethod
    def _meta(url: str) -> dict[str, str]:
        with psycopg.connect(url, autocommit=True) as conn:
            return dict(conn.execute("SELECT key, value FROM cosigner_meta").fetchall())

    @staticmethod
    def _edit(url: str, sql: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE cosigner_entries DISABLE TRIGGER USER")
            conn.execute(sql)
            conn.execute("ALTER TABLE cosigner_entries ENABLE TRIGGER USER")

    def _two_starts(self, url: str) -> str:
        """Three decisions, a start that verifies them (checkpoint at 3), two more."""
        first = PostgresJournal(url, writer=True)
        first.init()
        first.open()
        first.record_decisions([decision(i) for i in range(1, 4)])
        first.close()
        second = PostgresJournal(url, writer=True)
        second.open()
        try:
            checkpoint = second.head()
            second.record_decisions([decision(4), decision(5)])
        finally:
            second.close()
        assert self._meta(url)["verified_seq"] == "3"
        return checkpoint.hash

    def test_a_start_verifies_from_the_checkpoint_and_moves_it(
            self, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Regression: every writer's start walked the whole chain (its cost grew with the
        journal).  It starts from the recorded checkpoint and moves it to the head."""
        from cosigner.store import postgres as postgres_module

        checkpoint_hash = self._two_starts(url)
        assert self._meta(url)["verified_hash"] == checkpoint_hash
        starts: list[tuple[int, str]] = []
        real = postgres_module.verify_entries

        def spy(entries: Any, head: Any = None, start: Any = (0, "")) -> Any:
            starts.append(tuple(start))
            return real(entries, head, start=start)

        monkeypatch.setattr(postgres_module, "verify_entries", spy)
        third = PostgresJournal(url, writer=True)
        third.open()
        try:
            assert starts == [(3, checkpoint_hash)]
            assert third.verify().ok  # audit verify still walks everything
            assert starts[-1][0] == 0
            head = third.head()
        finally:
            third.close()
        assert {"verified_seq": "5", "verified_hash": head.hash}.items() <= self._meta(url).items()

    def test_an_edit_after_the_checkpoint_is_refused_at_start(self, url: str) -> None:
        self._two_starts(url)
        self._edit(url, "UPDATE cosigner_entries SET amount_text = '0.01' WHERE seq = 4")
        with pytest.raises(JournalUnavailableError, match="does not verify"):
            PostgresJournal(url, writer=True).open()

    def test_a_rewritten_checkpoint_record_is_refused_at_start(self, url: str) -> None:
        """The record at the checkpoint must be the one verified (its hash), and a
        checkpoint beyond the head (a truncated chain) is refused too."""
        self._two_starts(url)
        self._edit(url, "UPDATE cosigner_entries SET record_hash = repeat('0', 64) "
                        "WHERE seq = 3")
        with pytest.raises(JournalUnavailableError, match="record seq 3 is not the one "
                                                          "last verified"):
            PostgresJournal(url, writer=True).open()

    def test_a_checkpoint_past_the_head_is_refused_at_start(self, url: str) -> None:
        self._two_starts(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE cosigner_meta SET value = '99' WHERE key = 'verified_seq'")
        with pytest.raises(JournalUnavailableError, match="record seq 99 is not the one "
                                                          "last verified"):
            PostgresJournal(url, writer=True).open()

    def test_without_its_rows_a_start_walks_the_chain_and_records_a_new_one(
            self, url: str) -> None:
        """The runbook's way out once `audit verify` has passed: delete the two rows."""
        self._two_starts(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM cosigner_meta WHERE key IN ('verified_seq', "
                         "'verified_hash')")
        journal = PostgresJournal(url, writer=True)
        journal.open()
        try:
            head = journal.head()
        finally:
            journal.close()
        assert head.seq == 5
        assert {"verified_seq": "5", "verified_hash": head.hash}.items() <= self._meta(url).items()

    def test_a_malformed_checkpoint_is_refused(self, url: str) -> None:
        self._two_starts(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE cosigner_meta SET value = 'x' WHERE key = 'verified_seq'")
        with pytest.raises(JournalUnavailableError, match="malformed verification checkpoint"):
            PostgresJournal(url, writer=True).open()

    def test_a_standby_does_not_move_the_checkpoint(self, writer: PostgresJournal,
                                                    url: str) -> None:
        writer.record_decisions([decision(1), decision(2)])
        standby = PostgresJournal(url, writer=True, election=True)
        standby.open()
        try:
            assert not standby.lock_held()
            assert "verified_seq" not in self._meta(url)
        finally:
            standby.close()


class TestCopy:
    def _sqlite(self, tmp_path: Path, clock: FakeClock) -> str:
        path = tmp_path / "journal" / "journal.db"
        journal = SqliteJournal(path, writer=True, clock=clock)
        journal.init()
        journal.open()
        records = journal.record_decisions([decision(i) for i in range(1, 6)]
                                           + [decision(6, Action.HOLD)])
        journal.record_outcomes([NewOutcome(r.seq, r.item_id, "posted", 200, "ok")
                                 for r in records[:3]])
        journal.remember_policy("a" * 64, clock.now)
        journal.close()
        return f"sqlite://{path}"

    def test_copy_sqlite_into_postgres(self, url: str, tmp_path: Path, clock: FakeClock,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """Records, chain, limit history and policy times arrive intact, and verify."""
        source_url = self._sqlite(tmp_path, clock)
        assert main(["journal", "copy", "--from", source_url, "--to", url]) == 0
        out = capsys.readouterr().out
        assert "copied 9 entries and 1 policy digests" in out
        assert "the copy verifies, head seq 9" in out
        source = SqliteJournal(source_url.removeprefix("sqlite://"))
        target = PostgresJournal(url)
        source.open()
        target.open()
        try:
            assert target.verify().ok
            assert target.head() == source.head()
            assert list(target.records()) == list(source.records())
            since = clock.now - timedelta(days=1)
            assert target.approvals_since(since) == source.approvals_since(since)
            assert target.remember_policy("a" * 64, clock.now + timedelta(hours=1)) == clock.now
        finally:
            source.close()
            target.close()
        # The copy can continue: a leader appends to the copied chain.
        writer = PostgresJournal(url, writer=True)
        writer.open()
        try:
            with pytest.raises(JournalConflictError):
                writer.record_decisions([decision(1)])
            assert writer.record_decisions([decision(7)])[0].seq == 10
        finally:
            writer.close()

    def test_copy_into_a_non_empty_journal_is_refused(self, writer: PostgresJournal, url: str,
                                                      tmp_path: Path, clock: FakeClock,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
        """The target must be empty; nothing is changed (exit 1)."""
        writer.record_decisions([decision(99)])
        writer.close()
        source_url = self._sqlite(tmp_path, clock)
        assert main(["journal", "copy", "--from", source_url, "--to", url]) == 1
        assert "is not empty" in capsys.readouterr().err
        check = PostgresJournal(url)
        check.open()
        try:
            assert check.head().seq == 1
        finally:
            check.close()

    def test_copy_while_the_source_has_a_writer_is_refused(
            self, url: str, tmp_path: Path, clock: FakeClock,
            capsys: pytest.CaptureFixture[str]) -> None:
        """A daemon still writing the source: exit 2, nothing copied."""
        source_url = self._sqlite(tmp_path, clock)
        daemon = SqliteJournal(source_url.removeprefix("sqlite://"), writer=True)
        daemon.open()
        try:
            assert main(["journal", "copy", "--from", source_url, "--to", url]) == 2
        finally:
            daemon.close()
        assert "writer" in capsys.readouterr().err

    def test_copy_password_is_never_printed(self, url: str, tmp_path: Path, clock: FakeClock,
                                            capsys: pytest.CaptureFixture[str]) -> None:
        """An unreachable target with a password: exit 2, no password in the output."""
        source_url = self._sqlite(tmp_path, clock)
        code = main(["journal", "copy", "--from", source_url,
                     "--to", "postgresql://app:hunter2@127.0.0.1:1/x"])
        captured = capsys.readouterr()
        assert code == 2
        assert "hunter2" not in captured.err + captured.out

    def test_tampered_source_is_not_copied(self, url: str, tmp_path: Path, clock: FakeClock,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """A source whose chain does not verify is refused before anything is written."""
        import sqlite3
        source_url = self._sqlite(tmp_path, clock)
        path = source_url.removeprefix("sqlite://")
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
            conn.execute("UPDATE entries SET amount_text = '9999' WHERE seq = 2")
        conn.close()
        assert main(["journal", "copy", "--from", source_url, "--to", url]) == 2
        assert "does not verify" in capsys.readouterr().err
        with psycopg.connect(url) as check:
            assert check.execute("SELECT count(*) FROM cosigner_entries").fetchone() == (0,)


class TestCommitHook:
    def test_on_commit_without_a_witness(self, url: str) -> None:
        """The commit hook gets every new head; no witness configured is fine (a write
        must not fail after its commit)."""
        heads: list[int] = []
        journal = PostgresJournal(url, writer=True, on_commit=lambda head: heads.append(head.seq))
        journal.init()
        journal.open()
        try:
            records = journal.record_decisions([decision(1), decision(2)])
            journal.record_outcomes([NewOutcome(records[0].seq, 1, "posted", 200, "ok")])
        finally:
            journal.close()
        assert heads == [2, 3]
