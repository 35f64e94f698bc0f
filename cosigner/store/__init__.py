"""cosigner.store: the decision journal (DESIGN section 4).

The interface and value types are in :mod:`cosigner.store.base`; this module
picks an implementation from ``COSIGNER_DATABASE_URL``:

``sqlite:///abs/path.db``
    SQLite at the absolute path ``/abs/path.db`` (three slashes, then the path).
``sqlite:relative/path.db``
    SQLite at a path relative to the current directory (no slashes after the colon).
``memory://``
    An in-memory journal (tests, throwaway demos): nothing survives the process.
``postgresql://user@host:port/db`` (or ``postgres://``)
    PostgreSQL (high availability, :mod:`cosigner.store.postgres`); the password
    comes from the URL itself (so from ``COSIGNER_DATABASE_URL_FILE`` in production).

Error messages never repeat a URL's password.
"""

from __future__ import annotations

import urllib.parse

from cosigner.errors import SettingsError
from cosigner.store.base import (
    DECIDED,
    ENFORCE,
    FAILED,
    MODES,
    POSTED,
    SHADOW,
    SHADOW_STATE,
    STATES,
    ApprovalRow,
    Clock,
    DecisionRecord,
    ItemView,
    Journal,
    NewDecision,
    NewOutcome,
    VerifyResult,
    utc_now,
)
from cosigner.store.memory import MemoryJournal
from cosigner.store.sqlite import SqliteJournal

__all__ = [
    "DECIDED",
    "DEFAULT_URL",
    "ENFORCE",
    "FAILED",
    "MODES",
    "POSTED",
    "SETTING",
    "SHADOW",
    "SHADOW_STATE",
    "STATES",
    "ApprovalRow",
    "DecisionRecord",
    "ItemView",
    "Journal",
    "MemoryJournal",
    "NewDecision",
    "NewOutcome",
    "SqliteJournal",
    "VerifyResult",
    "journal_from_url",
    "open_journal",
    "redact_url",
]

SETTING = "COSIGNER_DATABASE_URL"
DEFAULT_URL = "sqlite:///var/lib/cosigner/journal.db"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def journal_from_url(url: str, *, create: bool = False, clock: Clock = utc_now,
                     election: bool = False) -> Journal:
    """The journal ``url`` names, not yet opened.

    ``create``: whether opening may create a new journal (the daemon) or must
    find an existing one (``cosigner audit``).  ``election``: a PostgreSQL writer
    that finds the leader lock held opens as a standby instead of failing.

    Raises:
        SettingsError: the URL is not one of the forms above (the message names
            ``COSIGNER_DATABASE_URL`` and never contains a password).
    """
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise SettingsError(f"{SETTING}: {redact_url(url)!r} is not a URL; use "
                            "sqlite:///abs/path.db, sqlite:relative.db or memory://")
    if scheme == "sqlite":
        return SqliteJournal(_sqlite_path(rest), create=create, clock=clock)
    if scheme == "memory":
        if rest not in ("", "//"):
            raise SettingsError(f"{SETTING}: use memory:// for the in-memory journal")
        return MemoryJournal(clock=clock)
    if scheme in ("postgresql", "postgres"):
        from cosigner.store.postgres import PostgresJournal  # psycopg only when used
        return PostgresJournal(url, writer=create, election=election, clock=clock)
    raise SettingsError(f"{SETTING}: unsupported scheme {scheme!r}; use "
                        "sqlite:///abs/path.db, sqlite:relative.db or memory://")


def open_journal(url: str, *, create: bool = False, clock: Clock = utc_now) -> Journal:
    """The journal ``url`` names, opened (see :func:`journal_from_url`).

    Raises:
        SettingsError: the URL is unusable.
        JournalUnavailableError: the journal is missing (or may not be created),
            unreadable, or from a newer schema.
    """
    journal = journal_from_url(url, create=create, clock=clock)
    journal.open()
    return journal


def _sqlite_path(rest: str) -> str:
    if "?" in rest or "#" in rest:
        raise SettingsError(f"{SETTING}: sqlite URLs take no query or fragment")
    if rest.startswith("///"):
        path = rest[2:]
    elif rest.startswith("//"):
        raise SettingsError(f"{SETTING}: sqlite://HOST/... is not supported; use "
                            "sqlite:///abs/path.db (three slashes) or sqlite:relative.db")
    else:
        path = rest
    if path in ("", "/") or path.endswith("/"):
        raise SettingsError(f"{SETTING}: the sqlite URL names no file")
    return path
