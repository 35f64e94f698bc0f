"""The journal as the one authority (issue "One decision, one authority"): a single writer
per SQLite journal, idempotency and limits re-checked inside the write transaction, the
rollback witness, verification at start, and explicit creation."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cosigner.errors import (
    JournalConflictError,
    JournalLockedError,
    JournalUnavailableError,
    LockLostError,
    StoreError,
)
from cosigner.models import Action, RecordState
from cosigner.store import (
    ApprovalRow,
    Head,
    Journal,
    NewDecision,
    NewOutcome,
    SqliteJournal,
    Witness,
)
from tests.store.conftest import FakeClock, Harness, decision


class CountGuard:
    """A LimitGuard allowing ``max_count`` enforced approvals per ``window``."""

    def __init__(self, max_count: int, window: timedelta = timedelta(hours=24)) -> None:
        self.max_count = max_count
        self._window = window
        self.histories: list[int] = []

    @property
    def window(self) -> timedelta:
        return self._window

    def violations(self, history: Sequence[ApprovalRow], approvals: Sequence[NewDecision],
                   now: datetime) -> dict[int, str]:
        self.histories.append(len(history))
        used = len(history)
        refused = {}
        for d in approvals:
            if d.action is not Action.APPROVE:
                continue
            if used + 1 > self.max_count:
                refused[d.item_id] = "limit:count"
            else:
                used += 1
        return refused


def new_journal(path: Path, clock: FakeClock | None = None, **kwargs: object) -> SqliteJournal:
    journal = SqliteJournal(path, writer=True, clock=clock or FakeClock(), **kwargs)  # type: ignore[arg-type]
    journal.init()
    journal.open()
    return journal


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def writer(db_path: Path) -> Iterator[SqliteJournal]:
    journal = new_journal(db_path)
    yield journal
    journal.close()


class TestInTransactionChecks:
    """Every store refuses, inside its write transaction, what the journal cannot justify."""

    def test_an_id_already_approved_is_refused(self, journal: Journal) -> None:
        """A second enforce approve for one id records nothing and names the id."""
        journal.record_decisions([decision(1)])
        with pytest.raises(JournalConflictError) as caught:
            journal.record_decisions([decision(2), decision(1, content="v1")])
        assert caught.value.conflicts == {1: "already_decided"}
        assert journal.head().seq == 1

    def test_a_reject_after_an_approve_is_refused_too(self, journal: Journal) -> None:
        """Approve and reject are both final: neither may follow the other."""
        journal.record_decisions([decision(1, Action.REJECT)])
        with pytest.raises(JournalConflictError):
            journal.record_decisions([decision(1)])

    def test_the_same_id_twice_in_one_batch_is_refused(self, journal: Journal) -> None:
        """Two final decisions for one id in one batch are as bad as across batches."""
        with pytest.raises(JournalConflictError, match="1 decision"):
            journal.record_decisions([decision(1), decision(1)])
        assert journal.head().seq == 0

    def test_holds_and_shadow_decisions_may_repeat(self, journal: Journal) -> None:
        """A hold is re-evaluated each cycle, and shadow decisions are never posted."""
        journal.record_decisions([decision(1, Action.HOLD), decision(2, mode="shadow")])
        journal.record_decisions([decision(1, Action.HOLD), decision(2, mode="shadow")])
        journal.record_decisions([decision(1), decision(2)])
        assert journal.head().seq == 6

    def test_an_approval_over_the_limit_is_refused(self, journal: Journal) -> None:
        """With a guard, approvals the journal's history would push over a limit are refused,
        the whole batch is not recorded, and the guard saw the recorded history."""
        guard = CountGuard(max_count=3)
        journal.record_decisions([decision(1), decision(2)], guard)
        with pytest.raises(JournalConflictError) as caught:
            journal.record_decisions([decision(3), decision(4), decision(5)], guard)
        assert caught.value.conflicts == {4: "limit:count", 5: "limit:count"}
        assert guard.histories == [0, 2]
        journal.record_decisions([decision(3)], guard)
        assert journal.head().seq == 3

    def test_history_is_the_window(self, journal: Journal, clock: FakeClock) -> None:
        """Approvals older than the guard's window are not part of the history."""
        guard = CountGuard(max_count=1, window=timedelta(hours=1))
        journal.record_decisions([decision(1)], guard)
        clock.advance(minutes=61)
        journal.record_decisions([decision(2)], guard)
        assert guard.histories == [0, 0]

    def test_a_guard_that_cannot_count_records_nothing(self, journal: Journal) -> None:
        """A guard failing on the history (an unreadable amount) fails the write closed."""
        class Broken(CountGuard):
            def violations(self, history: Sequence[ApprovalRow],
                           approvals: Sequence[NewDecision], now: datetime) -> dict[int, str]:
                raise ArithmeticError("cannot add")

        with pytest.raises(Exception, match="cannot be counted"):
            journal.record_decisions([decision(1)], Broken(5))
        assert journal.head().seq == 0

    def test_remember_policy_keeps_the_first_time(self, harness: Harness,
                                                  clock: FakeClock) -> None:
        """The first-seen time of a policy digest survives later calls and a reopen."""
        journal = harness.make(clock)
        first = clock.now
        assert journal.remember_policy("ab" * 32, first) == first
        assert journal.remember_policy("ab" * 32, clock.advance(hours=1)) == first
        journal = harness.reopen(journal)
        assert journal.remember_policy("ab" * 32, clock.advance(hours=1)) == first
        journal.close()


class TestWriterWindow:
    """The writer keeps the limit window it read: each batch reads and hash-checks only the
    approvals recorded since, and the window drops what falls out of it."""

    def test_approvals_are_read_and_checked_once(self, writer: SqliteJournal,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """The writer reads (and hash-checks) the window once after it opens; the approvals
        it records later join its window as it wrote them, never read back."""
        checked: list[int] = []
        original = writer._approval_row

        def counting(row: Sequence[object]) -> tuple[int, ApprovalRow]:
            found = original(row)  # type: ignore[arg-type]
            checked.append(found[0])
            return found

        monkeypatch.setattr(writer, "_approval_row", counting)
        guard = CountGuard(max_count=10_000)
        writer.record_decisions([decision(i) for i in range(1, 301)], guard)
        writer.record_outcomes([NewOutcome(1, 1, RecordState.POSTED, 200, "Success")])
        writer.record_decisions([decision(i) for i in range(301, 311)])  # no guard
        writer.record_decisions([decision(311), decision(312, Action.REJECT)], guard)
        writer.record_decisions([decision(313)], guard)
        assert checked == []
        assert guard.histories == [0, 310, 311]
        writer.close()
        writer.open()
        writer.record_decisions([decision(314)], guard)
        assert checked == list(range(1, 301)) + list(range(302, 313)) + [314]  # seqs
        assert guard.histories[-1] == 312

    def test_the_window_moves(self, writer: SqliteJournal, db_path: Path) -> None:
        clock = FakeClock()
        journal = writer
        journal._clock = clock  # type: ignore[assignment]
        guard = CountGuard(max_count=10_000, window=timedelta(hours=1))
        journal.record_decisions([decision(1), decision(2)], guard)
        clock.advance(minutes=40)
        journal.record_decisions([decision(3)], guard)
        clock.advance(minutes=40)  # 1 and 2 are out of the window now, 3 is not
        journal.record_decisions([decision(4)], guard)
        clock.advance(minutes=40)
        journal.record_decisions([decision(5)], guard)
        assert guard.histories == [0, 2, 1, 1]

    def test_an_edited_new_row_leaves_the_window_as_it_was(
            self, writer: SqliteJournal, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A row that fails its hash check is refused, and none of the rows read with it is
        kept: once the row is put back, every approval counts exactly once.  (The window is
        made to lag, so that the rows are read back: normally the writer keeps its own.)"""
        monkeypatch.setattr(writer, "_keep_own_approvals", lambda *_: None)
        guard = CountGuard(max_count=10_000)
        writer.record_decisions([decision(1)], guard)
        writer.record_decisions([decision(2), decision(3)], guard)
        with sqlite3.connect(db_path) as conn:
            conn.execute("DROP TRIGGER entries_no_update")
            conn.execute("UPDATE entries SET amount_text = '0.01' WHERE seq = 3")
        conn.close()
        with pytest.raises(StoreError, match=r"record seq 3 \(item 3\) was edited"):
            writer.record_decisions([decision(4)], guard)
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE entries SET amount_text = '4.10' WHERE seq = 3")
        conn.close()
        writer.record_decisions([decision(4)], guard)
        assert guard.histories == [0, 1, 3]


class TestSingleWriter:
    def test_a_second_writer_is_refused_naming_the_holder(self, writer: SqliteJournal,
                                                          db_path: Path) -> None:
        """Another writer (here in the same process) gets JournalLockedError with the pid."""
        with pytest.raises(JournalLockedError) as caught:
            SqliteJournal(db_path, writer=True).open()
        assert str(caught.value) == (
            f"journal {db_path} is locked by another writer (pid {os.getpid()}, lock "
            f"{db_path}.lock); only one process may write a journal")

    def test_readers_work_while_a_writer_holds_it(self, writer: SqliteJournal,
                                                  db_path: Path) -> None:
        """audit-style read-only opens take no lock and see the writer's commits."""
        writer.record_decisions([decision(1)])
        reader = SqliteJournal(db_path)
        reader.open()
        try:
            assert [r.item_id for r in reader.records()] == [1]
            assert reader.verify().ok
            assert not reader.lock_held()
        finally:
            reader.close()

    def test_init_is_refused_while_a_writer_runs(self, writer: SqliteJournal,
                                                 db_path: Path) -> None:
        """journal init takes the lock too (two inits never race)."""
        with pytest.raises(JournalLockedError):
            SqliteJournal(db_path, writer=True).init()

    def test_close_releases_the_lock(self, writer: SqliteJournal, db_path: Path) -> None:
        """After close another writer may open it."""
        writer.close()
        again = SqliteJournal(db_path, writer=True)
        again.open()
        assert again.lock_held()
        again.close()
        assert not again.lock_held()

    def test_the_os_releases_the_lock_of_a_killed_process(self, writer: SqliteJournal,
                                                          db_path: Path) -> None:
        """A writer killed with SIGKILL leaves no stale lock: the kernel drops the flock."""
        writer.close()
        code = (f"from cosigner.store import SqliteJournal\n"
                f"j = SqliteJournal({str(db_path)!r}, writer=True); j.open()\n"
                f"print('locked', flush=True)\nimport time; time.sleep(60)\n")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "locked"
            with pytest.raises(JournalLockedError, match=f"pid {child.pid}"):
                SqliteJournal(db_path, writer=True).open()
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=10)
            if child.stdout is not None:
                child.stdout.close()
        again = SqliteJournal(db_path, writer=True)
        again.open()
        again.close()

    def test_a_replaced_lock_file_stops_writes(self, writer: SqliteJournal,
                                               db_path: Path) -> None:
        """If the lock file is deleted (so another process could lock a new one), this
        writer knows it no longer holds the lock and records nothing."""
        Path(f"{db_path}.lock").unlink()
        assert not writer.lock_held()
        with pytest.raises(LockLostError):
            writer.record_decisions([decision(1)])
        assert writer.head().seq == 0


class TestCreation:
    def test_init_prints_an_id_and_is_idempotent(self, db_path: Path) -> None:
        """init creates once; a second init keeps the same journal (same id)."""
        first = SqliteJournal(db_path, writer=True).init()
        assert SqliteJournal(db_path, writer=True).init() == first
        assert len(first) == 32

    def test_init_migrates_an_older_schema(self, db_path: Path, tmp_path: Path) -> None:
        """A version 1 journal is refused by open and migrated by init, keeping its entries."""
        journal = new_journal(db_path)
        journal.record_decisions([decision(1)])
        journal.close()
        with sqlite3.connect(db_path) as conn:
            for table in ("order_outbox", "order_state", "order_chain_head",
                          "order_callbacks"):  # schema 3
                conn.execute(f"DROP TABLE {table}")
            conn.execute("DROP TABLE policies")
            conn.execute("DROP INDEX entries_by_action")
            conn.execute("DELETE FROM meta WHERE key IN ('verified_seq', 'verified_hash')")
            conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.close()
        with pytest.raises(JournalUnavailableError, match="run `cosigner journal init`"):
            SqliteJournal(db_path, writer=True).open()
        SqliteJournal(db_path, writer=True).init()
        again = SqliteJournal(db_path, writer=True)
        again.open()
        assert [r.item_id for r in again.records()] == [1]
        again.close()


class TestWitness:
    def test_every_commit_updates_the_witness(self, writer: SqliteJournal) -> None:
        """After each commit the witness holds the head, and the hook is told."""
        writer.record_decisions([decision(1), decision(2)])
        state = writer.witness.read()
        assert state is not None
        assert (state.journal_id, state.head) == (writer.journal_id, writer.head())

    def test_a_reader_records_nothing(self, writer: SqliteJournal, db_path: Path) -> None:
        """Regression: a journal opened read-only (no writer lock) could record decisions
        beside the daemon."""
        reader = SqliteJournal(db_path)
        reader.open()
        try:
            with pytest.raises(StoreError, match="read-only"):
                reader.record_decisions([decision(1)])
            with pytest.raises(StoreError, match="read-only"):
                reader.record_outcomes([NewOutcome(1, 1, RecordState.POSTED, 200, "ok")])
        finally:
            reader.close()
        assert writer.head().seq == 0

    def test_a_witness_that_cannot_be_written_stops_everything_after(
            self, writer: SqliteJournal, monkeypatch: pytest.MonkeyPatch) -> None:
        """Regression: a witness write failing after a commit raised, and the next write
        and the next lookup (which reposts what is decided) went on regardless.  Until the
        witness takes the committed head, every write and lookup is refused."""
        witness_write = writer.witness.write

        def full(*_: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(writer.witness, "write", full)
        with pytest.raises(StoreError, match=r"witness .* cannot be written"):
            writer.record_decisions([decision(1)])
        assert writer.head().seq == 1  # committed before the witness failed
        with pytest.raises(StoreError, match="cannot be written"):
            writer.lookup([1], ["enforce"])
        with pytest.raises(StoreError, match="cannot be written"):
            writer.record_decisions([decision(2)])
        with pytest.raises(StoreError, match="cannot be written"):
            writer.record_outcomes([NewOutcome(1, 1, RecordState.POSTED, 200, "Success")])
        assert writer.head().seq == 1
        monkeypatch.setattr(writer.witness, "write", witness_write)
        assert 1 in writer.lookup([1], ["enforce"])  # the witness took the head first
        state = writer.witness.read()
        assert state is not None
        assert state.head == writer.head()

    def test_a_restored_older_copy_is_refused(self, writer: SqliteJournal, db_path: Path,
                                              tmp_path: Path) -> None:
        """Copying back an older database and marker (the witness stays) is refused."""
        writer.record_decisions([decision(1)])
        writer.close()
        backup = tmp_path / "backup"
        backup.mkdir()
        for name in ("journal.db", "journal.db.marker"):
            shutil.copy2(db_path.parent / name, backup / name)
        writer.open()
        writer.record_decisions([decision(2)])
        writer.close()
        for name in ("journal.db", "journal.db.marker"):
            shutil.copy2(backup / name, db_path.parent / name)
        with pytest.raises(JournalUnavailableError, match=r"is behind its witness .*head seq 1, "
                           r"witnessed seq 2; it was rolled back or lost writes"):
            SqliteJournal(db_path, writer=True).open()

    def test_a_lost_wal_is_refused(self, db_path: Path) -> None:
        """Deleting the -wal of a killed writer loses commits: the witness catches it."""
        new_journal(db_path).close()
        code = (f"import os\nfrom cosigner.store import SqliteJournal\n"
                f"from tests.store.conftest import decision\n"
                f"j = SqliteJournal({str(db_path)!r}, writer=True); j.open()\n"
                f"j.record_decisions([decision(1)])\nos._exit(0)\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                       cwd=Path(__file__).parents[2])
        assert Path(f"{db_path}-wal").stat().st_size > 0
        for suffix in ("-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink()
        with pytest.raises(JournalUnavailableError, match="is behind its witness"):
            SqliteJournal(db_path, writer=True).open()

    def test_a_journal_off_the_witnessed_line_is_refused(self, writer: SqliteJournal,
                                                         db_path: Path) -> None:
        """A witness whose entry at its seq has another hash means another history."""
        writer.record_decisions([decision(1)])
        writer.close()
        Witness(f"{db_path}.witness").write(writer.journal_id, Head(1, "f" * 64))
        with pytest.raises(JournalUnavailableError, match="is not a descendant"):
            SqliteJournal(db_path, writer=True).open()

    def test_another_journal_is_refused(self, writer: SqliteJournal, db_path: Path,
                                        tmp_path: Path) -> None:
        """A re-created journal (another id) is not the witnessed one."""
        witness = tmp_path / "elsewhere" / "witness.json"
        writer.close()
        SqliteJournal(db_path, writer=True, witness=witness).init()
        other = tmp_path / "other.db"
        SqliteJournal(other, writer=True, witness=tmp_path / "w2").init()
        with pytest.raises(JournalUnavailableError, match="is not the journal its witness"):
            SqliteJournal(other, writer=True, witness=witness).open()

    def test_a_missing_witness_of_a_used_journal_is_refused(self, writer: SqliteJournal,
                                                            db_path: Path) -> None:
        """Deleting the witness of a journal with entries is refused; init re-blesses it."""
        writer.record_decisions([decision(1)])
        writer.close()
        Path(f"{db_path}.witness").unlink()
        with pytest.raises(JournalUnavailableError, match="does not exist; if this journal"):
            SqliteJournal(db_path, writer=True).open()
        SqliteJournal(db_path, writer=True).init()
        SqliteJournal(db_path, writer=True).open()

    def test_a_witness_on_another_path(self, db_path: Path, tmp_path: Path) -> None:
        """COSIGNER_JOURNAL_WITNESS may point anywhere (another volume)."""
        witness = tmp_path / "secret-volume" / "head.json"
        journal = new_journal(db_path, witness=witness)
        journal.record_decisions([decision(1)])
        journal.close()
        state = Witness(witness).read()
        assert state is not None
        assert state.head.seq == 1
        assert not Path(f"{db_path}.witness").exists()


class TestIntegrityAtStart:
    def test_an_edited_row_is_refused_at_start(self, writer: SqliteJournal,
                                               db_path: Path) -> None:
        """An approval edited in place (trigger dropped, amount lowered) stops the start."""
        writer.record_decisions([decision(1), decision(2)])
        writer.close()
        with sqlite3.connect(db_path) as conn:
            conn.execute("DROP TRIGGER entries_no_update")
            conn.execute("UPDATE entries SET amount_text = '0.01' WHERE seq = 1")
        conn.close()
        with pytest.raises(JournalUnavailableError, match="does not verify: record seq 1 "
                           r"\(item 1\) was edited"):
            SqliteJournal(db_path, writer=True).open()

    def test_verification_starts_at_the_checkpoint(self, writer: SqliteJournal,
                                                   db_path: Path) -> None:
        """Each writer start verifies only what was added since the last one; an edit behind
        the checkpoint is still caught where the limits read it."""
        writer.record_decisions([decision(1)])
        writer.close()
        writer.open()  # verifies seq 1 and moves the checkpoint there
        writer.close()
        with sqlite3.connect(db_path) as conn:
            assert dict(conn.execute("SELECT key, value FROM meta"))["verified_seq"] == "1"
            conn.execute("DROP TRIGGER entries_no_update")
            conn.execute("UPDATE entries SET amount_text = '0.01' WHERE seq = 1")
        conn.close()
        journal = SqliteJournal(db_path, writer=True)
        journal.open()  # the checkpoint is past the edit ...
        try:
            with pytest.raises(Exception, match=r"record seq 1 \(item 1\) was edited"):
                journal.approvals_since(datetime.fromisoformat("2000-01-01T00:00:00+00:00"))
        finally:
            journal.close()

    @pytest.mark.parametrize(("seq", "hash_text"), [("x", "0" * 64), ("-1", "0" * 64),
                                                    ("1", "abc")])
    def test_a_malformed_checkpoint_refuses_the_start(self, writer: SqliteJournal,
                                                      db_path: Path, seq: str,
                                                      hash_text: str) -> None:
        """Regression: a malformed ``verified_seq`` escaped ``open`` as a bare ValueError;
        it is a journal that does not verify now (the reading PostgreSQL shares)."""
        writer.record_decisions([decision(1)])
        writer.close()
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'verified_seq'", (seq,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'verified_hash'", (hash_text,))
        conn.close()
        with pytest.raises(JournalUnavailableError,
                           match="does not verify: a malformed verification checkpoint"):
            SqliteJournal(db_path, writer=True).open()

    def test_start_up_verification_is_incremental(self, db_path: Path) -> None:
        """Opening a big journal again does not walk it all again (checkpointed)."""
        journal = new_journal(db_path)
        journal.record_decisions([decision(i) for i in range(1, 5001)])
        journal.close()
        journal.open()
        journal.close()
        with sqlite3.connect(db_path) as conn:
            assert dict(conn.execute("SELECT key, value FROM meta"))["verified_seq"] == "5000"
            # an edit behind the checkpoint is not walked again by open (the daemon's ledger
            # hash-checks the approvals it reads; `audit verify` walks everything)
            conn.execute("DROP TRIGGER entries_no_update")
            conn.execute("UPDATE entries SET rule = 'x' WHERE seq = 1")
        conn.close()
        journal.open()
        journal.close()
        reader = SqliteJournal(db_path)
        reader.open()
        assert reader.verify().first_bad_seq == 1
        reader.close()
