"""``cosigner journal init`` creates (or migrates) the journal; ``cosigner audit
list|export|verify`` read it, never create or lock it (they work while the daemon runs).

The journal is the one ``--database-url`` names, else ``COSIGNER_DATABASE_URL``,
else ``sqlite:///var/lib/cosigner/journal.db``.  A journal that does not exist,
cannot be read or is from a newer schema is a configuration error (exit 2); a
broken hash chain makes ``verify`` exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from cosigner.errors import ConfigError
from cosigner.models import Action
from cosigner.settings import load_settings
from cosigner.store import DEFAULT_URL, SETTING, Journal, init_journal, open_journal
from cosigner.store.audit import parse_since, verdict, write_csv, write_jsonl, write_table

Clock = Callable[[], datetime]


def register(subparsers: Any) -> None:
    """Add ``journal`` and ``audit`` and their subcommands to the ``cosigner`` parser."""
    url_help = (f"the journal (default: ${SETTING}, else {DEFAULT_URL}); "
                "sqlite:///abs/path.db or sqlite:relative.db")
    journal = subparsers.add_parser(
        "journal", help="create or migrate the decision journal",
        description="Creating a journal is an explicit act: `cosigner run` never creates one.")
    jsub = journal.add_subparsers(dest="journal_command", metavar="SUBCOMMAND", required=True)
    init = jsub.add_parser(
        "init", help="create the journal (or migrate it to this version's schema); prints "
        "its id", description="Create the journal COSIGNER_DATABASE_URL names, or migrate an "
        "existing one; verify its whole hash chain and write its head to the rollback "
        "witness (COSIGNER_JOURNAL_WITNESS). Safe to run again.")
    init.add_argument("--database-url", default=None, help=url_help)
    init.set_defaults(func=run_init)
    copy = jsub.add_parser(
        "copy", help="copy a journal into an empty PostgreSQL journal and verify it",
        description="Copy every record (with its hash chain, hence the limits' history) and "
        "the policy first-seen times from one journal into an empty postgresql:// journal "
        "(created if its database has none), then verify the copy end to end. Stop the "
        "daemons writing either journal first: both are opened as writers.")
    copy.add_argument("--from", dest="source", required=True, metavar="URL",
                      help="the journal to copy (sqlite:///abs/path.db or postgresql://...)")
    copy.add_argument("--to", dest="target", default=None, metavar="URL",
                      help=f"the PostgreSQL journal to fill (default: ${SETTING}, so the "
                      "password can come from COSIGNER_DATABASE_URL_FILE)")
    copy.set_defaults(func=run_copy)

    audit = subparsers.add_parser(
        "audit", help="show, export and verify the decision journal",
        description="Read the decision journal. It is never created or changed here.")
    audit.add_argument("--database-url", default=None, help=url_help)
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    # On the subcommands too, so it can follow them; SUPPRESS keeps a value given
    # before the subcommand from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", default=argparse.SUPPRESS, help=url_help)

    listing = sub.add_parser("list", parents=[common], help="decisions as a table, oldest first")
    listing.add_argument("--since", help="an ISO 8601 time (UTC if no offset) or a duration "
                         "back from now: 90s, 30m, 24h, 7d")
    listing.add_argument("--action", choices=[a.value for a in Action])
    listing.add_argument("--limit", type=_count, help="show at most N decisions")
    listing.set_defaults(func=run_list)

    export = sub.add_parser("export", parents=[common],
                            help="every decision with its state and hashes")
    export.add_argument("--format", choices=("jsonl", "csv"), required=True)
    export.add_argument("--output", metavar="FILE",
                        help="write to FILE (created 0600) instead of standard output")
    export.set_defaults(func=run_export)

    verify = sub.add_parser("verify", parents=[common],
                            help="check the hash chain; exit 1 naming the first broken record")
    verify.set_defaults(func=run_verify)


def run_init(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``journal init``: exit 0 and print the journal id."""
    settings = load_settings()
    url = args.database_url or settings.database_url.get_secret_value()
    witness = str(settings.journal_witness) if settings.journal_witness else None
    journal_id = init_journal(url, witness=witness)
    (out or sys.stdout).write(f"{journal_id}\n")
    return 0


def run_copy(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``journal copy``: exit 0 once the copy verifies."""
    from cosigner.store.copy import copy_journal  # psycopg only when used
    target = args.target or load_settings().database_url.get_secret_value()
    result = copy_journal(args.source, target)
    (out or sys.stdout).write(result.summary() + "\n")
    return 0


def run_list(args: argparse.Namespace, *, out: TextIO | None = None,
             clock: Clock | None = None) -> int:
    """``audit list``."""
    out = out or sys.stdout
    now = (clock or _utc_now)()
    since = parse_since(args.since, now) if args.since else None
    action = Action(args.action) if args.action else None
    with _journal(args) as journal:
        shown = write_table(journal.records(since=since, action=action, limit=args.limit), out)
    if not shown:
        out.write("no decisions match\n")
    return 0


def run_export(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``audit export``."""
    write = write_jsonl if args.format == "jsonl" else write_csv
    with _journal(args) as journal, _output(args.output, out or sys.stdout) as stream:
        write(journal.records(), stream)
    return 0


def run_verify(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``audit verify``."""
    with _journal(args) as journal:
        code, line = verdict(journal.verify())
    (out or sys.stdout).write(line + "\n")
    return code


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0, 1, 2, ...)")
    return value


@contextlib.contextmanager
def _journal(args: argparse.Namespace) -> Iterator[Journal]:
    # The same settings as the daemon (environment, *_FILE, .env), so one .env serves both.
    url = args.database_url or load_settings().database_url.get_secret_value()
    journal = open_journal(url)  # read-only: no writer lock, so it works beside the daemon
    try:
        yield journal
    finally:
        journal.close()


@contextlib.contextmanager
def _output(path: str | None, default: TextIO) -> Iterator[TextIO]:
    if path is None:
        yield default
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        stream = os.fdopen(fd, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"--output {path}: cannot write ({exc.strerror})") from exc
    with stream:
        yield stream
