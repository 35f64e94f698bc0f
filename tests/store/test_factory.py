"""``open_journal`` / ``journal_from_url``: the COSIGNER_DATABASE_URL forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosigner.errors import JournalUnavailableError, SettingsError
from cosigner.store import (
    MemoryJournal,
    SqliteJournal,
    init_journal,
    journal_from_url,
    open_journal,
    redact_url,
)


class TestJournalFromUrl:
    def test_absolute_sqlite_path(self) -> None:
        """sqlite:///abs/path.db names /abs/path.db."""
        journal = journal_from_url("sqlite:///var/lib/cosigner/journal.db")
        assert isinstance(journal, SqliteJournal)
        assert journal.path == Path("/var/lib/cosigner/journal.db")

    def test_relative_sqlite_path(self, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """sqlite:relative.db is relative to the current directory."""
        monkeypatch.chdir(tmp_path)
        journal = journal_from_url("sqlite:data/journal.db")
        assert isinstance(journal, SqliteJournal)
        assert journal.path == tmp_path / "data" / "journal.db"

    def test_memory(self) -> None:
        """memory:// is an in-memory journal."""
        assert isinstance(journal_from_url("memory://"), MemoryJournal)

    @pytest.mark.parametrize(("url", "problem"), [
        ("sqlite://host/journal.db", "sqlite://HOST/... is not supported"),
        ("sqlite:///", "names no file"),
        ("sqlite:", "names no file"),
        ("sqlite:///tmp/j.db?mode=ro", "no query or fragment"),
        ("memory://somewhere", "use memory://"),
        ("mysql://u:p@h/db", "unsupported scheme 'mysql'"),
        ("journal.db", "is not a URL"),
    ])
    def test_bad_urls(self, url: str, problem: str) -> None:
        """Unusable URLs are settings errors naming COSIGNER_DATABASE_URL."""
        with pytest.raises(SettingsError, match=r"^COSIGNER_DATABASE_URL: ") as caught:
            journal_from_url(url)
        assert problem in str(caught.value)

    @pytest.mark.parametrize("url", ["postgresql://cosigner:s3cret@db:5432/cosigner",
                                     "postgres://cosigner:s3cret@db/cosigner"])
    def test_postgresql(self, url: str) -> None:
        """Both schemes make a PostgreSQL journal whose repr never shows the userinfo."""
        from cosigner.store.postgres import PostgresJournal
        journal = journal_from_url(url, writer=True)
        assert isinstance(journal, PostgresJournal)
        assert journal.writer
        assert "s3cret" not in repr(journal)
        assert "cosigner:" not in repr(journal).split("//", 1)[1]

    def test_unknown_scheme_hides_the_password(self) -> None:
        """An unsupported URL's message never contains its password."""
        with pytest.raises(SettingsError) as caught:
            journal_from_url("mysql://user:s3cret@db/x")
        assert "s3cret" not in str(caught.value)


class TestOpenJournal:
    def test_init_then_open(self, tmp_path: Path) -> None:
        """init_journal creates a journal (returning its id) that open_journal then opens."""
        journal_id = init_journal(f"sqlite://{tmp_path}/j.db")
        journal = open_journal(f"sqlite://{tmp_path}/j.db", writer=True)
        assert journal.journal_id == journal_id
        try:
            assert journal.verify().ok
        finally:
            journal.close()

    @pytest.mark.parametrize("writer", [False, True])
    def test_never_creates(self, tmp_path: Path, writer: bool) -> None:
        """Opening, as reader or writer, refuses a missing journal and creates nothing."""
        with pytest.raises(JournalUnavailableError, match="does not exist"):
            open_journal(f"sqlite://{tmp_path}/j.db", writer=writer)
        assert not (tmp_path / "j.db").exists()

    def test_four_slash_url_is_the_absolute_path(self, tmp_path: Path) -> None:
        """sqlite:////abs/path (SQLAlchemy's form) names /abs/path, like sqlite:///abs/path."""
        init_journal(f"sqlite:///{tmp_path}/j.db")
        assert (tmp_path / "j.db").is_file()
        journal = open_journal(f"sqlite://{tmp_path}/j.db")
        journal.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "j.db", "j.db.lock", "j.db.marker", "j.db.witness"]

    def test_memory_is_refused_where_durability_is_needed(self) -> None:
        """cosigner run asks for a durable journal: memory:// is refused, naming the setting."""
        with pytest.raises(SettingsError, match="COSIGNER_DATABASE_URL: memory:// keeps nothing"):
            journal_from_url("memory://", durable=True)


class TestRedactUrl:
    def test_a_key_value_string_is_not_echoed(self) -> None:
        """A libpq key=value string is not a URL: the error does not show it."""
        with pytest.raises(SettingsError, match="is not a URL") as caught:
            journal_from_url("host=db password=s3cret-kv")
        assert "s3cret-kv" not in str(caught.value)

    @pytest.mark.parametrize(("url", "shown"), [
        ("postgresql://u:pw@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql://db/x", "postgresql://db/x"),
        ("sqlite:///a.db", "sqlite:///a.db"),
        ("postgresql://u:pw@[::1/x", "<unparsable URL>"),
        ("postgresql://app@db/c?password=s3cr&sslmode=require",
         "postgresql://app@db/c?password=***&sslmode=require"),
    ])
    def test_password_is_replaced(self, url: str, shown: str) -> None:
        """Only the password is hidden; an unparsable URL is not shown at all."""
        assert redact_url(url) == shown
