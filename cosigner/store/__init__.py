"""cosigner.store: the decision journal (DESIGN section 4).

The interface and value types are in :mod:`cosigner.store.base`; this module
picks an implementation from ``COSIGNER_DATABASE_URL``:

``sqlite:///abs/path.db`` or ``sqlite:////abs/path.db``
    SQLite at the absolute path ``/abs/path.db`` (three slashes then the path, or
    SQLAlchemy's four-slash form: both mean the same file).
``sqlite:relative/path.db``
    SQLite at a path relative to the current directory (no slashes after the colon).
``memory://``
    An in-memory journal for tests: nothing survives the process, so ``cosigner run``
    refuses it (``durable=True``).
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
    Head,
    ItemView,
    Journal,
    LimitGuard,
    NewDecision,
    NewOutcome,
    VerifyResult,
    utc_now,
)
from cosigner.store.memory import MemoryJournal
from cosigner.store.sqlite import CommitHook, SqliteJournal
from cosigner.store.witness import Witness

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
    "Head",
    "ItemView",
    "Journal",
    "LimitGuard",
    "MemoryJournal",
    "NewDecision",
    "NewOutcome",
    "SqliteJournal",
    "VerifyResult",
    "Witness",
    "init_journal",
    "journal_from_url",
    "open_journal",
    "redact_url",
]

SETTING = "COSIGNER_DATABASE_URL"
DEFAULT_URL = "sqlite:///var/lib/cosigner/journal.db"


def redact_url(url: str) -> str:
    """``url`` with any password (in its userinfo or a ``password=`` query parameter)
    replaced by ``***``; the user is kept (for messages and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is not None:
        netloc = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in pairs):
        parts = parts._replace(query="&".join(
            f"{k}={'***' if k.lower() == 'password' else v}" for k, v in pairs))
    elif password is None:
        return url  # nothing to hide: shown exactly as given
    return urllib.parse.urlunsplit(parts)


def journal_from_url(url: str, *, writer: bool = False, witness: str | None = None,
                     durable: bool = False, clock: Clock = utc_now,
                     on_commit: CommitHook | None = None, election: bool = False) -> Journal:
    """The journal ``url`` names, not yet opened.

    ``writer``: this process writes it (takes the single-writer lock on open; the
    daemon, ``journal init``); read-only users (``cosigner audit``) pass False.
    ``witness``: the rollback witness file (``COSIGNER_JOURNAL_WITNESS``; SQLite
    defaults to ``<db>.witness``).  ``durable``: refuse ``memory://`` (``cosigner run``).
    ``on_commit``: called with the new head after every commit.  ``election``: a
    PostgreSQL writer that finds the leader lock held opens as a standby instead of failing.

    Raises:
        SettingsError: the URL is not one of the forms above, or is ``memory://`` where a
            durable journal is needed (the message names ``COSIGNER_DATABASE_URL`` and
            never contains a password).
    """
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep:
        # Not shown: a libpq key=value string ("host=db password=...") lands here.
        raise SettingsError(f"{SETTING}: the value is not a URL; use "
                            "sqlite:///abs/path.db, sqlite:relative.db or memory://")
    if scheme == "sqlite":
        return SqliteJournal(_sqlite_path(rest), writer=writer, witness=witness, clock=clock,
                             on_commit=on_commit)
    if scheme == "memory":
        if rest not in ("", "//"):
            raise SettingsError(f"{SETTING}: use memory:// for the in-memory journal")
        if durable:
            raise SettingsError(f"{SETTING}: memory:// keeps nothing across restarts, so it "
                                "could decide an item twice; use a sqlite:/// or "
                                "postgresql:// journal (create it with `cosigner journal init`)")
        return MemoryJournal(clock=clock)
    if scheme in ("postgresql", "postgres"):
        from cosigner.store.postgres import PostgresJournal  # psycopg only when used
        return PostgresJournal(url, writer=writer, election=election, witness=witness,
                               clock=clock, on_commit=on_commit)
    raise SettingsError(f"{SETTING}: unsupported scheme {scheme!r}; use "
                        "sqlite:///abs/path.db, sqlite:relative.db or memory://")


def open_journal(url: str, *, writer: bool = False, witness: str | None = None,
                 durable: bool = False, clock: Clock = utc_now,
                 on_commit: CommitHook | None = None) -> Journal:
    """The journal ``url`` names, opened (see :func:`journal_from_url`); never creates one.

    Raises:
        SettingsError: the URL is unusable.
        JournalLockedError: ``writer`` and another process is the journal's writer.
        JournalUnavailableError: the journal is missing, unreadable, from another schema
            version, does not verify, or is behind its witness.
    """
    journal = journal_from_url(url, writer=writer, witness=witness, durable=durable,
                               clock=clock, on_commit=on_commit)
    journal.open()
    return journal


def init_journal(url: str, *, witness: str | None = None, clock: Clock = utc_now) -> str:
    """Create (or migrate) the journal ``url`` names and return its id (``journal init``).

    Raises:
        SettingsError: the URL is unusable (``memory://`` included: nothing to create).
        JournalLockedError: another process is the journal's writer.
        JournalUnavailableError: it cannot be created or migrated, or does not verify.
    """
    journal = journal_from_url(url, writer=True, witness=witness, durable=True, clock=clock)
    return journal.init()


def _sqlite_path(rest: str) -> str:
    if "?" in rest or "#" in rest:
        raise SettingsError(f"{SETTING}: sqlite URLs take no query or fragment")
    if rest.startswith("///"):
        path = "/" + rest.lstrip("/")  # sqlite:///abs and SQLAlchemy's sqlite:////abs
    elif rest.startswith("//"):
        raise SettingsError(f"{SETTING}: sqlite://HOST/... is not supported; use "
                            "sqlite:///abs/path.db (three slashes) or sqlite:relative.db")
    else:
        path = rest
    if path in ("", "/") or path.endswith("/"):
        raise SettingsError(f"{SETTING}: the sqlite URL names no file")
    return path
