"""PostgreSQL for tests: the server named by ``COSIGNER_TEST_POSTGRES_URL``.

Tests that need it call :func:`require_postgres` (skip with the reason when it is
unset or unreachable; fail under ``COSIGNER_REQUIRE_ALL=1``) and get throwaway
databases named ``cosigner_pg_*`` from :func:`scratch_database`, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import psycopg
from psycopg import sql

from tests.conftest import require_tool

ENV = "COSIGNER_TEST_POSTGRES_URL"


@cache
def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def require_postgres() -> str:
    """The admin URL of the test server; skips (or fails) when there is none."""
    url = os.environ.get(ENV, "")
    require_tool(lambda: bool(url) and _reachable(url),
                 f"PostgreSQL is not available: set {ENV} to a reachable server "
                 f"(e.g. postgresql://postgres@127.0.0.1:5432/postgres)")
    return url


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` pointing at database ``name``."""
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def create_database(admin_url: str, prefix: str = "t") -> tuple[str, str]:
    """Create ``cosigner_pg_<prefix>_<random>``; return (name, url)."""
    name = f"cosigner_pg_{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database made by :func:`create_database`, ending its sessions."""
    assert name.startswith("cosigner_pg_")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@contextmanager
def scratch_database(prefix: str = "t") -> Iterator[str]:
    """A new empty database for the duration of the block; yields its URL."""
    admin = require_postgres()
    name, url = create_database(admin, prefix)
    try:
        yield url
    finally:
        drop_database(admin, name)


def reset_journal(url: str) -> None:
    """Remove every cosigner table from the database at ``url`` (an empty database again)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS cosigner_claims, cosigner_verdicts, "
                     "cosigner_policies, cosigner_entries, cosigner_head, cosigner_meta CASCADE")
        conn.execute("DROP FUNCTION IF EXISTS cosigner_append_only() CASCADE")
        conn.execute("DROP FUNCTION IF EXISTS cosigner_test_fail() CASCADE")


def terminate_backends(url: str, *, where: str = "true") -> int:
    """``pg_terminate_backend`` every other session on ``url``'s database matching ``where``
    (SQL over pg_stat_activity); returns how many were ended."""
    dbname = urllib.parse.urlsplit(url).path.lstrip("/")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() AND ({})").format(sql.SQL(where)),  # type: ignore[arg-type]
            (dbname,)).fetchall()
    return sum(1 for (ok,) in rows if ok)
