"""``cosigner orders list|show``: the C2C orders received through callbacks.

Reads the order tables of the journal (``--database-url``, else
``COSIGNER_DATABASE_URL``); never creates or changes anything.  Exit codes: 0, 1
when ``show`` finds no callback for the order, 2 for a journal that cannot be read.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from cosigner.callbacks.verify import ORDER_STATUSES, transition
from cosigner.settings import load_settings
from cosigner.store import DEFAULT_URL, SETTING
from cosigner.store.audit import parse_since, printable
from cosigner.store.orders import OrderJournal, order_journal_from_url

Clock = Callable[[], datetime]

#: The API doc's order statuses.
STATUS_NAMES = {-2: "matching failed", -1: "canceled", 0: "initialized", 1: "completed",
                2: "in progress", 9: "completed",
                **{s: "processing" for s in range(3, 9)}}
ORDER_TYPES = {1: "buy", 2: "sell"}


def register(subparsers: Any) -> None:
    """Add ``orders`` and its subcommands."""
    url_help = f"the journal (default: ${SETTING}, else {DEFAULT_URL})"
    orders = subparsers.add_parser(
        "orders", help="C2C orders received through 1BitPay's callbacks",
        description="Read the C2C orders and their callbacks from the journal. Nothing is "
                    "created or changed here.")
    orders.add_argument("--database-url", default=None, help=url_help)
    sub = orders.add_subparsers(dest="orders_command", metavar="SUBCOMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", default=argparse.SUPPRESS, help=url_help)

    listing = sub.add_parser("list", parents=[common],
                             help="orders and their current status, least recently updated first")
    listing.add_argument("--since", help="updated at or after: an ISO 8601 time (UTC if no "
                         "offset) or a duration back from now: 30m, 24h, 7d")
    listing.add_argument("--status", type=_statuses, metavar="S[,S...]",
                         help="only orders in these statuses (-2..9), e.g. 1,9 or --status=-2,-1")
    listing.set_defaults(func=run_list)

    show = sub.add_parser("show", parents=[common],
                          help="one order: its status, every callback and forward")
    show.add_argument("order_no", metavar="ORDER_NO", help="1BitPay's orderNo")
    show.set_defaults(func=run_show)


def _statuses(text: str) -> frozenset[int]:
    found = set()
    for part in text.split(","):
        try:
            status = int(part.strip())
        except ValueError:
            status = 99
        if status not in ORDER_STATUSES:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not an order status (-2..9)")
        found.add(status)
    return frozenset(found)


def status_text(status: int | None) -> str:
    if status is None:
        return "-"
    return f"{status} ({STATUS_NAMES.get(status, '?')})"


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def run_list(args: argparse.Namespace, *, out: TextIO | None = None,
             clock: Clock | None = None) -> int:
    """``orders list``."""
    out = out or sys.stdout
    now = (clock or (lambda: datetime.now(UTC)))()
    since = parse_since(args.since, now) if args.since else None
    with _journal(args) as journal:
        found = journal.orders(since=since, statuses=args.status)
    if not found:
        out.write("no orders match\n")
        return 0
    out.write(f"{'orderNo':<22} {'merchantOrderNo':<20} {'type':<4} {'status':<20} "
              f"{'dealAmount':>14} {'applied':>9}  updated (UTC)\n")
    for order in found:
        out.write(f"{printable(order.order_no):<22} {printable(order.merchant_order_no):<20} "
                  f"{ORDER_TYPES.get(order.order_type, '?'):<4} "
                  f"{status_text(order.status):<20} {order.deal_amount:>14} "
                  f"{order.callbacks:>9}  {_when(order.updated_at)}\n")
    return 0


def run_show(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``orders show ORDER_NO``."""
    out = out or sys.stdout
    with _journal(args) as journal:
        order = journal.order(args.order_no)
        history = journal.history(args.order_no)
        events = journal.events(args.order_no)
    if not history:
        out.write(f"no callback recorded for order {printable(args.order_no)}\n")
        return 1
    first = history[0]
    out.write(f"orderNo          {printable(first.order_no)}\n"
              f"merchantOrderNo  {printable(first.merchant_order_no)}\n"
              f"type             {ORDER_TYPES.get(first.order_type, '?')}\n")
    if order is not None:
        out.write(f"status           {status_text(order.status)}\n"
                  f"dealAmount       {order.deal_amount}\n"
                  f"updated          {_when(order.updated_at)} UTC\n")
    out.write(f"\ncallbacks ({len(history)}):\n")
    out.write(f"  {'seq':>5}  {'received (UTC)':<19}  {'status':<20} {'outcome':<8} "
              f"{'from':<20} {'dealAmount':>14}  source\n")
    for record in history:
        out.write(f"  {record.seq:>5}  {_when(record.received_at):<19}  "
                  f"{status_text(record.status):<20} {record.outcome:<8} "
                  f"{status_text(record.previous_status):<20} {record.deal_amount:>14}  "
                  f"{record.source or '-'}\n")
    if events:
        out.write(f"\nforwards ({len(events)}):\n")
        out.write(f"  {'event_id':<32}  {'seq':>5}  {'attempts':>8}  {'delivered (UTC)':<19}  "
                  "last error\n")
        for event in events:
            out.write(f"  {event.event_id:<32}  {event.seq:>5}  {event.attempts:>8}  "
                      f"{_when(event.delivered_at):<19}  "
                      f"{printable(event.last_error or '-')}\n")
    return 0


@contextlib.contextmanager
def _journal(args: argparse.Namespace) -> Iterator[OrderJournal]:
    # The same settings as the daemon (environment, *_FILE, .env), so one .env serves both.
    url = args.database_url or load_settings().database_url.get_secret_value()
    journal = order_journal_from_url(url, transition)
    journal.open()
    try:
        yield journal
    finally:
        journal.close()
