"""What ``cosigner audit`` shows: the decision table, JSONL/CSV exports, the verdict
of the chain check.  Functions of records and a text stream; opening the journal
and parsing arguments is :mod:`cosigner.cli.audit`'s job.

Journal fields come from 1BitPay's pending list, so they are untrusted text: the
table escapes control and invisible characters (no terminal escape sequences
reach the screen), JSONL escapes every non-ASCII character and is exact.  CSV is
for people and spreadsheets: control characters are escaped as in the table,
and cells a spreadsheet would run as a formula (starting with ``= + - @``, tab
or CR) get a leading ``'``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, TextIO

from cosigner.durations import parse_duration
from cosigner.errors import ConfigError
from cosigner.journal import plain
from cosigner.store.base import DecisionRecord, VerifyResult

#: Export columns, in their stable order.
EXPORT_COLUMNS = (
    "seq", "created_at", "item_id", "action", "rule", "reasons", "state", "outcome_code",
    "outcome_message", "outcome_at", "mode", "chain_id", "from_address", "to_address",
    "amount_text", "content_hash", "policy_name", "policy_sha256", "prev_hash", "record_hash",
)

_TABLE = (("seq", 6), ("time", 20), ("item", 10), ("action", 7), ("rule", 20), ("state", 7),
          ("amount", 14), ("chain", 5))



def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO 8601 time (UTC when it has no offset) or a duration
    before ``now`` such as ``90s``, ``30m``, ``24h``, ``7d`` (:mod:`cosigner.durations`).

    Raises:
        ConfigError: ``text`` is neither.
    """
    duration = parse_duration(text.strip())
    if duration is not None:
        return now - duration
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since: {text!r} is neither an ISO 8601 time "
                          "(2025-03-03T12:00:00Z) nor a duration (24h, 7d)") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def printable(text: str) -> str:
    """``text`` with control and invisible characters shown as ``\\uXXXX`` escapes."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_table(records: Iterable[DecisionRecord], out: TextIO) -> int:
    """Write a readable table of ``records`` (streamed); return how many rows."""
    out.write("  ".join(name.ljust(width) for name, width in _TABLE).rstrip() + "\n")
    count = 0
    for record in records:
        cells = (str(record.seq), _when(record.created_at), str(record.item_id),
                 record.action.value, record.rule, record.state, record.amount_text or "-",
                 record.chain_id or "-")
        out.write("  ".join(printable(cell).ljust(width)
                            for cell, (_, width) in zip(cells, _TABLE, strict=True)).rstrip()
                  + "\n")
        count += 1
    return count


def export_row(record: DecisionRecord) -> dict[str, Any]:
    """A record as an export row (JSON types, columns in :data:`EXPORT_COLUMNS` order)."""
    values = {f.name: _json(getattr(record, f.name)) for f in fields(DecisionRecord)}
    return {column: values[column] for column in EXPORT_COLUMNS}


def _json(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return plain(value)


def write_jsonl(records: Iterable[DecisionRecord], out: TextIO) -> int:
    """One JSON object per record and line; return how many."""
    count = 0
    for record in records:
        out.write(json.dumps(export_row(record), ensure_ascii=True) + "\n")
        count += 1
    return count


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        return ("'" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else "") + printable(value)
    return "" if value is None else value


def write_csv(records: Iterable[DecisionRecord], out: TextIO) -> int:
    """A header row then one row per record (reasons as a JSON array); return how many."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for record in records:
        writer.writerow([_csv_cell(v) for v in export_row(record).values()])
        count += 1
    return count


def verdict(result: VerifyResult) -> tuple[int, str]:
    """``audit verify``'s exit code and line for a chain check."""
    if result.ok:
        return 0, f"journal OK: {result.entries} entries"
    return 1, (f"journal verification FAILED: {result.problem} "
               f"({result.entries} entries before it are intact)")
