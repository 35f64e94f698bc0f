"""SQLite-specific behaviour: files and modes, pragmas, refusing a bad database,
and detecting rows edited or deleted behind the journal's back."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from cosigner.errors import JournalUnavailableError, StoreError
from cosigner.store import NewOutcome, SqliteJournal
from cosigner.store.chain import entry_hash
from cosigner.store.records import stored_entry as _stored
from cosigner.store.sqlite import _SELECT_ALL_FROM, SCHEMA_VERSION
from tests.store.conftest import FakeClock, decision


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tamper(path: Path, *statements: str) -> None:
    """Change the database directly, as an attacker with file access would:
    drop the append-only triggers, then run ``statements``."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
        conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def journal(db_path: Path) -> Iterator[SqliteJournal]:
    """An open SQLite journal with ten decisions, the first five posted."""
    journal = SqliteJournal(db_path, writer=True, clock=FakeClock())
    journal.init()
    journal.open()
    records = journal.record_decisions([decision(1000 + i) for i in range(10)])
    journal.record_outcomes([NewOutcome(r.seq, r.item_id, "posted", 200, "success")
                             for r in records[:5]])
    yield journal
    journal.close()


_opened: list[SqliteJournal] = []


def reopened(path: Path) -> SqliteJournal:
    """The journal at ``path`` opened again (closed when the test ends)."""
    journal = SqliteJournal(path, writer=False)
    journal.open()
    _opened.append(journal)
    return journal


@pytest.fixture(autouse=True)
def _close_reopened() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


class TestFiles:
    def test_file_0600_in_new_directory_0700(self, journal: SqliteJournal,
                                             db_path: Path) -> None:
        """A new journal file is 0600 in a directory created 0700, and so is its marker."""
        assert mode_of(db_path) == 0o600
        assert mode_of(db_path.parent) == 0o700
        assert mode_of(journal.marker_path) == 0o600
        assert mode_of(Path(f"{db_path}-wal")) == 0o600

    def test_existing_directory_keeps_its_mode(self, tmp_path: Path) -> None:
        """A directory that already exists is used as it is."""
        tmp_path.chmod(0o755)
        journal = SqliteJournal(tmp_path / "j.db", writer=True)
        journal.init()
        assert mode_of(tmp_path) == 0o755
        assert mode_of(tmp_path / "j.db") == 0o600

    def test_wal_and_synchronous_full(self, journal: SqliteJournal) -> None:
        """The connection runs in WAL mode with synchronous=FULL (2)."""
        assert journal.pragmas() == {"journal_mode": "wal", "synchronous": 2}

    def test_marker_records_the_creation_id(self, journal: SqliteJournal,
                                            db_path: Path) -> None:
        """The marker holds the creation id stored in the database."""
        with sqlite3.connect(db_path) as conn:
            [creation_id] = conn.execute(
                "SELECT value FROM meta WHERE key = 'creation_id'").fetchone()
        conn.close()
        assert f"creation_id={creation_id}" in journal.marker_path.read_text()

    def test_marker_is_rewritten_when_lost(self, journal: SqliteJournal) -> None:
        """A daemon opening a journal whose marker was lost writes it again."""
        journal.close()
        journal.marker_path.unlink()
        journal.open()
        assert journal.marker_path.exists()

    def test_entries_are_append_only(self, journal: SqliteJournal, db_path: Path) -> None:
        """Triggers refuse UPDATE and DELETE on entries, even from another connection."""
        conn = sqlite3.connect(db_path)
        try:
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute("UPDATE entries SET amount_text = '9' WHERE seq = 1")
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute("DELETE FROM entries WHERE seq = 1")
        finally:
            conn.close()

    async def test_calls_from_worker_threads(self, journal: SqliteJournal) -> None:
        """The daemon's asyncio.to_thread calls, even overlapping, are serialised safely."""
        writes = [asyncio.to_thread(journal.record_decisions, [decision(i)])
                  for i in range(50, 70)]
        reads = [asyncio.to_thread(journal.lookup, range(1000, 1010), {"enforce"})
                 for _ in range(20)]
        await asyncio.gather(*writes, *reads)
        assert journal.verify().entries == 35


class TestRefusals:
    def test_missing_without_create(self, tmp_path: Path) -> None:
        """Open never creates: a missing journal is refused and nothing is created."""
        path = tmp_path / "nowhere" / "journal.db"
        with pytest.raises(JournalUnavailableError, match=f"journal {path} does not exist; "
                           "create it with `cosigner journal init`"):
            SqliteJournal(path).open()
        assert not path.parent.exists()

    def test_missing_where_the_marker_shows_one_existed(self, journal: SqliteJournal,
                                                        db_path: Path) -> None:
        """A journal deleted after creation is refused even when creating is allowed."""
        journal.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        with pytest.raises(JournalUnavailableError,
                           match=f"journal {db_path} is missing but {db_path}.marker shows"):
            SqliteJournal(db_path, writer=True).open()
        assert not db_path.exists()

    def test_swapped_database_is_refused(self, journal: SqliteJournal, db_path: Path,
                                         tmp_path: Path) -> None:
        """A different journal put in place of the one the marker names is refused."""
        journal.close()
        SqliteJournal(tmp_path / "other" / "journal.db", writer=True).init()
        for suffix in ("-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        (tmp_path / "other" / "journal.db").replace(db_path)
        with pytest.raises(JournalUnavailableError, match="is not the journal"):
            SqliteJournal(db_path, writer=True).open()

    def test_emptied_database_with_marker_is_refused(self, journal: SqliteJournal,
                                                     db_path: Path) -> None:
        """A journal truncated to nothing is not silently re-created."""
        journal.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        db_path.write_bytes(b"")
        with pytest.raises(JournalUnavailableError, match="is empty but"):
            SqliteJournal(db_path, writer=True).open()

    def test_newer_schema_is_refused(self, journal: SqliteJournal, db_path: Path) -> None:
        """A journal from a newer cosigner is refused, naming the file and both versions."""
        journal.close()
        newer = SCHEMA_VERSION + 1
        tamper(db_path, f"UPDATE meta SET value = '{newer}' "  # noqa: S608 - an int
               "WHERE key = 'schema_version'")
        with pytest.raises(JournalUnavailableError) as caught:
            SqliteJournal(db_path, writer=True).open()
        assert str(caught.value) == (
            f"journal {db_path} has schema version {newer}, newer than this cosigner supports "
            f"({SCHEMA_VERSION}); upgrade cosigner")

    def test_garbage_file_is_refused(self, tmp_path: Path) -> None:
        """A file that is not a database is refused, even with create allowed."""
        path = tmp_path / "journal.db"
        path.write_bytes(b"this is not a database, just some text\n" * 200)
        with pytest.raises(JournalUnavailableError, match=f"journal {path} is unreadable"):
            SqliteJournal(path, writer=True).open()

    def test_corrupted_header_is_refused(self, journal: SqliteJournal, db_path: Path) -> None:
        """A journal whose header was overwritten is refused as unreadable."""
        journal.close()
        with db_path.open("r+b") as f:
            f.write(b"\xff" * 100)
        with pytest.raises(JournalUnavailableError, match="is unreadable"):
            reopened(db_path)

    def test_directory_in_place_of_the_file_is_refused(self, tmp_path: Path) -> None:
        """Something that cannot be read as a file (here a directory) is refused."""
        path = tmp_path / "journal.db"
        path.mkdir()
        with pytest.raises(JournalUnavailableError, match="is unreadable: it is not a regular"):
            SqliteJournal(path, writer=True).open()

    def test_other_database_is_refused(self, tmp_path: Path) -> None:
        """An SQLite database that is not a journal is refused."""
        path = tmp_path / "journal.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
        conn.close()
        with pytest.raises(JournalUnavailableError, match="is not a cosigner journal"):
            SqliteJournal(path, writer=True).open()

    def test_unreadable_marker_is_refused(self, journal: SqliteJournal) -> None:
        """A marker without a creation id makes the journal uncheckable, so it is refused."""
        journal.close()
        journal.marker_path.write_text("garbage\n")
        with pytest.raises(JournalUnavailableError, match="holds no creation_id"):
            journal.open()


    def test_marker_that_cannot_be_read_is_refused(self, journal: SqliteJournal) -> None:
        """A marker that cannot be read (here a directory) is refused, naming it."""
        journal.close()
        journal.marker_path.unlink()
        journal.marker_path.mkdir()
        with pytest.raises(JournalUnavailableError, match=r"its marker .* is unreadable"):
            journal.open()

    def test_file_that_cannot_be_created(self, tmp_path: Path) -> None:
        """A journal file that cannot be created (a dangling symlink is in the way) says so."""
        (tmp_path / "journal.db").symlink_to(tmp_path / "elsewhere" / "target.db")
        journal = SqliteJournal(tmp_path / "journal.db", writer=True)
        with pytest.raises(JournalUnavailableError, match="cannot be created"):
            journal.init()
        assert "journal.db" in repr(journal)

    @pytest.mark.parametrize(("version", "problem"), [
        ("abc", "has no valid schema_version ('abc')"),
        ("0", "has no valid schema_version ('0')"),
        ("1", f"has schema version 1, older than {SCHEMA_VERSION}; run `cosigner journal init` "
              "to migrate it"),
    ])
    def test_invalid_or_older_schema_is_refused(self, journal: SqliteJournal, db_path: Path,
                                                version: str, problem: str) -> None:
        """A schema version that is not a number, or older than known, is refused."""
        journal.close()
        tamper(db_path, f"UPDATE meta SET value = '{version}' "  # noqa: S608 - fixed test values
               "WHERE key = 'schema_version'")
        with pytest.raises(JournalUnavailableError, match=re.escape(problem)):
            journal.open()


class TestReadErrors:
    def test_broken_schema_is_a_store_error(self, journal: SqliteJournal,
                                            db_path: Path) -> None:
        """When the tables are gone under an open journal, calls raise StoreError."""
        tamper(db_path, "DROP TABLE entries")
        with pytest.raises(StoreError, match="cannot be read"):
            journal.lookup([1], {"enforce"})
        with pytest.raises(StoreError, match="cannot be written"):
            journal.record_decisions([decision(1)])

    def test_missing_head_is_reported(self, journal: SqliteJournal, db_path: Path) -> None:
        """A journal whose recorded head was removed fails verification."""
        tamper(db_path, "DELETE FROM meta WHERE key = 'head_seq'")
        result = journal.verify()
        assert (result.ok, result.first_bad_seq) == (False, 15)


class TestTamperDetection:
    def test_edited_record(self, journal: SqliteJournal, db_path: Path) -> None:
        """An edited field is found at its record."""
        tamper(db_path, "UPDATE entries SET amount_text = '999999' WHERE seq = 4")
        result = reopened(db_path).verify()
        assert (result.ok, result.first_bad_seq, result.entries) == (False, 4, 3)
        assert result.problem == "record seq 4 (item 1003) was edited: hash mismatch"

    def test_edited_outcome(self, journal: SqliteJournal, db_path: Path) -> None:
        """An edited outcome (say failed turned into posted) is found too."""
        tamper(db_path, "UPDATE entries SET api_code = 201 WHERE seq = 12")
        assert reopened(db_path).verify().first_bad_seq == 12

    def test_edited_and_rehashed_record(self, journal: SqliteJournal, db_path: Path) -> None:
        """A record edited with a correctly recomputed hash breaks the next record's link."""
        tamper(db_path, "UPDATE entries SET amount_text = '999999' WHERE seq = 4")
        conn = sqlite3.connect(db_path)
        try:
            [row] = [r for r in conn.execute(_SELECT_ALL_FROM, (0,)) if r[0] == 4]
            forged = entry_hash(_stored(row).payload)
            conn.execute("UPDATE entries SET record_hash = ? WHERE seq = 4", (forged,))
            conn.commit()
        finally:
            conn.close()
        result = reopened(db_path).verify()
        assert (result.first_bad_seq, result.problem) == (
            5, "record seq 5 (item 1004) does not follow record seq 4: prev_hash mismatch "
               "(a record before it was replaced)")

    def test_deleted_record(self, journal: SqliteJournal, db_path: Path) -> None:
        """A deleted record is reported as missing."""
        tamper(db_path, "DELETE FROM entries WHERE seq = 7")
        result = reopened(db_path).verify()
        assert (result.first_bad_seq, result.problem) == (7, "record seq 7 is missing")

    def test_deleted_first_record(self, journal: SqliteJournal, db_path: Path) -> None:
        """Deleting the very first record is found."""
        tamper(db_path, "DELETE FROM entries WHERE seq = 1")
        assert reopened(db_path).verify().first_bad_seq == 1

    def test_deleted_last_records(self, journal: SqliteJournal, db_path: Path) -> None:
        """Cutting records off the end is found through the recorded head."""
        tamper(db_path, "DELETE FROM entries WHERE seq >= 14")
        result = reopened(db_path).verify()
        assert (result.first_bad_seq, result.problem) == (
            14, "record seq 14 is missing (the journal's head is seq 15)")

    def test_deleted_and_renumbered_records(self, journal: SqliteJournal,
                                            db_path: Path) -> None:
        """Deleting a record and renumbering the rest does not hide it."""
        tamper(db_path, "DELETE FROM entries WHERE seq = 7",
               "UPDATE entries SET seq = seq - 1 WHERE seq > 7",
               "UPDATE meta SET value = '14' WHERE key = 'head_seq'")
        assert reopened(db_path).verify().first_bad_seq == 7

    def test_no_appending_after_the_end_was_cut(self, journal: SqliteJournal,
                                                db_path: Path) -> None:
        """The journal refuses to extend a chain whose last records were removed."""
        tamper(db_path, "DELETE FROM entries WHERE seq = 15")
        with pytest.raises(StoreError, match="does not match its recorded head"):
            journal.record_decisions([decision(1)])

    def test_unreadable_row_is_a_store_error(self, journal: SqliteJournal,
                                             db_path: Path) -> None:
        """A row edited into nonsense makes records() raise StoreError, not crash."""
        tamper(db_path, "UPDATE entries SET action = 'steal' WHERE seq = 2")
        with pytest.raises(StoreError, match="record seq 2 cannot be read"):
            list(journal.records())
        assert journal.verify().first_bad_seq == 2

    def test_garbled_reasons_are_an_edit(self, journal: SqliteJournal, db_path: Path) -> None:
        """reasons that are no longer JSON are reported as an edit, not a crash."""
        tamper(db_path, "UPDATE entries SET reasons = '[not json' WHERE seq = 3")
        assert reopened(db_path).verify().first_bad_seq == 3


class TestQueryPlans:
    def test_reads_by_key_not_by_kind(self, journal: SqliteJournal, db_path: Path) -> None:
        """The lookup's and the write transactions' reads find rows by seq or item id: none
        walks every decision (or every verdict) of an index on kind (the journal's size)."""
        class NoLimits:
            window = timedelta(hours=1)

            def violations(self, history: object, approvals: object, now: object) -> dict[
                    int, str]:
                return {}

        statements: list[str] = []
        conn = journal._conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        try:
            journal.lookup([1000, 1001, 2000], ["enforce"])
            records = journal.record_decisions([decision(2000 + i) for i in range(3)],
                                               NoLimits())
            journal.record_outcomes([NewOutcome(r.seq, r.item_id, "posted", 200, "ok")
                                     for r in records])
        finally:
            conn.set_trace_callback(None)
        selects = [s for s in statements if "FROM entries" in s and "item_id" in s]
        # the lookup (2), the verdicts, the approvals, the outcomes' decisions
        assert len(selects) >= 5
        kind_only = re.compile(r"USING (COVERING )?INDEX entries_by_\w+ "
                               r"\(kind=\?( AND mode=\?)?( AND action=\?)?\)$")
        reader = sqlite3.connect(db_path)
        try:
            for sql in selects:
                steps = [row[3] for row in reader.execute("EXPLAIN QUERY PLAN " + sql)]
                assert not [s for s in steps if kind_only.search(s)], (sql, steps)
        finally:
            reader.close()
