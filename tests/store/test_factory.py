"""``open_journal`` / ``journal_from_url``: the COSIGNER_DATABASE_URL forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosigner.errors import ConfigError, JournalUnavailableError, SettingsError
from cosigner.store import (
    MemoryJournal,
    SqliteJournal,
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
    def test_postgresql_not_yet(self, url: str) -> None:
        """PostgreSQL is refused for now, and the password is never repeated."""
        with pytest.raises(ConfigError) as caught:
            journal_from_url(url)
        assert str(caught.value) == ("COSIGNER_DATABASE_URL: PostgreSQL journal is not "
                                     "available yet")

    def test_unknown_scheme_hides_the_password(self) -> None:
        """An unsupported URL's message never contains its password."""
        with pytest.raises(SettingsError) as caught:
            journal_from_url("mysql://user:s3cret@db/x")
        assert "s3cret" not in str(caught.value)


class TestOpenJournal:
    def test_opens_and_creates_when_allowed(self, tmp_path: Path) -> None:
        """With create=True a new journal is created and returned open."""
        journal = open_journal(f"sqlite://{tmp_path}/j.db", create=True)
        try:
            assert journal.verify().ok
        finally:
            journal.close()

    def test_refuses_to_create_by_default(self, tmp_path: Path) -> None:
        """By default a missing journal is refused, not created."""
        with pytest.raises(JournalUnavailableError, match="does not exist"):
            open_journal(f"sqlite://{tmp_path}/j.db")
        assert not (tmp_path / "j.db").exists()


class TestRedactUrl:
    @pytest.mark.parametrize(("url", "shown"), [
        ("postgresql://u:pw@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql://db/x", "postgresql://db/x"),
        ("sqlite:///a.db", "sqlite:///a.db"),
        ("postgresql://u:pw@[::1/x", "<unparsable URL>"),
    ])
    def test_password_is_replaced(self, url: str, shown: str) -> None:
        """Only the password is hidden; an unparsable URL is not shown at all."""
        assert redact_url(url) == shown
