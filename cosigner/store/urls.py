"""Masking a journal URL for messages and logs (no driver imported: ``cosigner run`` on
SQLite logs its masked URL without loading psycopg)."""

from __future__ import annotations

import urllib.parse


def mask_url(url: str) -> str:
    """``url`` with its userinfo (user and password) replaced by ``***``.

    >>> mask_url("postgresql://app:s3cret@db:5432/cosigner")
    'postgresql://***@db:5432/cosigner'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(query=_mask_query(parts.query)))
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}",
                                                  query=_mask_query(parts.query)))


def _mask_query(query: str) -> str:
    # libpq also accepts ?user=...&password=... in the query string.
    if not query:
        return query
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{k}={'***' if k.lower() in ('password', 'user') else v}"
                    for k, v in pairs)
