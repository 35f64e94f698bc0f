"""What the sandbox remembers: merchants, the pending queue, what it received, orders.

:class:`SandboxState` is the interface; :class:`SqliteState` implements it on
SQLite, in memory by default (``SqliteState()``) or in a file
(``SqliteState("sandbox.db")``) so that a sandbox survives restarts.  One
implementation for both keeps the two from drifting apart: paging, the atomic
"decide only while pending" and nonce bookkeeping are the same SQL either way.

Every method is thread-safe (one lock around one connection), so a test may
read the state while a :class:`~cosigner.sandbox.server.SandboxServer` serves
it from another thread.

Cost per request stays flat however many items and nonces there are: a nonce is
checked with one upsert on its primary key (expired nonces are pruned through an
index on ``seen_ms`` at most once per bucket of the window, not on every
request), and the pending list is paged by keyset (``id > last id of the
previous page``) with the pending total cached, both valid only while the
pending set is unchanged (our own writes and SQLite's ``data_version``, which
moves when another connection commits); otherwise it falls back to ``OFFSET``,
so the answer is always the one ``OFFSET`` paging would give.

Times are milliseconds passed in by the caller; the state never reads a clock.
Item JSON is stored with :func:`~cosigner.models.dumps_exact`, so an amount
given as the number literal ``4.10`` is listed back as ``4.10``, never as a float.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509

from cosigner.api.auth import SignSort
from cosigner.models import amount_text, dumps_exact, loads_exact
from cosigner.signing.shard import SignScheme

ItemStatus = Literal["pending", "approved", "rejected"]
ITEM_STATUSES: tuple[ItemStatus, ...] = ("pending", "approved", "rejected")

#: Quoted when a state is created (crypto, legal) -> (buyRate, sellRate).
DEFAULT_RATES: Mapping[tuple[str, str], tuple[str, str]] = {
    ("USDT", "CNY"): ("6.47", "6.9"),
    ("USDT", "USD"): ("0.998", "1.002"),
    ("USDT", "EUR"): ("0.91", "0.94"),
    ("BTC", "USD"): ("64250.10", "64890.55"),
    ("ETH", "USD"): ("3120.40", "3151.75"),
}

SCHEMA_VERSION = 1


@functools.lru_cache(maxsize=64)
def _parse_certificate(pem: str) -> x509.Certificate:
    # Parsed once per PEM, not on every approve: certificates are immutable values.
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


@dataclass(frozen=True, slots=True)
class Merchant:
    """A merchant as the sandbox knows it (its API key, secret, Sign mode and certificate)."""

    merchant_no: str
    api_key: str
    api_secret: str = field(repr=False)
    sign_sort: SignSort = "casefold"
    sign_scheme: SignScheme = "java-rsa"
    certificate_pem: str | None = field(default=None, repr=False)
    #: Addresses or networks (``10.0.0.0/8``) allowed to call; empty: any address.
    ip_whitelist: tuple[str, ...] = ()

    def certificate(self) -> x509.Certificate | None:
        """The registered certificate, parsed (None when none is registered)."""
        if not self.certificate_pem:
            return None
        return _parse_certificate(self.certificate_pem)

    def public_json(self) -> dict[str, Any]:
        """What the admin routes show: never the secret."""
        return {"merchantNo": self.merchant_no, "apiKey": self.api_key,
                "signSort": self.sign_sort, "signScheme": self.sign_scheme,
                "hasCertificate": bool(self.certificate_pem),
                "ipWhitelist": list(self.ip_whitelist)}


@dataclass(frozen=True, slots=True)
class Item:
    """A pending-signature item: ``raw`` is exactly what ``/pending`` lists."""

    id: int
    merchant_no: str
    raw: Mapping[str, Any]
    status: ItemStatus
    created_ms: int
    decided_ms: int | None = None

    @property
    def amount_text(self) -> str | None:
        return amount_text(self.raw.get("amount"))

    def admin_json(self) -> dict[str, Any]:
        return {"item": dict(self.raw), "merchantNo": self.merchant_no, "status": self.status,
                "createdMs": self.created_ms, "decidedMs": self.decided_ms}


@dataclass(frozen=True, slots=True)
class ApproveRecord:
    """One call to ``/api/transaction/approve`` that passed authentication."""

    seq: int
    received_ms: int
    merchant_no: str
    item_id: int | None
    status: int | None
    body: Mapping[str, Any]
    verified: bool | None   # None: `data` was never checked (a parameter was missing)
    code: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "receivedMs": self.received_ms, "merchantNo": self.merchant_no,
                "id": self.item_id, "status": self.status, "body": dict(self.body),
                "verified": self.verified, "code": self.code, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class CollectRecord:
    """One call to ``/api/transaction/assets/collect`` that passed authentication."""

    seq: int
    received_ms: int
    merchant_no: str
    is_main: int | None
    body: Mapping[str, Any]
    verified: bool | None
    code: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "receivedMs": self.received_ms, "merchantNo": self.merchant_no,
                "isMain": self.is_main, "body": dict(self.body), "verified": self.verified,
                "code": self.code, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Order:
    """A C2C order created through ``/api/otc/create``."""

    order_no: str
    merchant_no: str
    merchant_order_no: str
    order_type: int
    crypto_amount: str
    crypto_currency: str
    legal_currency: str
    async_url: str | None
    status: int
    created_ms: int
    updated_ms: int
    request: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"orderNo": self.order_no, "merchantNo": self.merchant_no,
                "merchantOrderNo": self.merchant_order_no, "orderType": self.order_type,
                "cryptoAmount": self.crypto_amount, "cryptoCurrency": self.crypto_currency,
                "legalCurrency": self.legal_currency, "asyncUrl": self.async_url,
                "status": self.status, "createdMs": self.created_ms,
                "updatedMs": self.updated_ms, "request": dict(self.request)}


@dataclass(frozen=True, slots=True)
class CallbackAttempt:
    """One delivery attempt of an order callback to its ``asyncUrl``."""

    seq: int
    order_no: str
    attempt: int
    sent_ms: int
    order_status: int
    body: str
    http_status: int | None
    answer: str | None
    ok: bool
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "orderNo": self.order_no, "attempt": self.attempt,
                "sentMs": self.sent_ms, "orderStatus": self.order_status, "body": self.body,
                "httpStatus": self.http_status, "answer": self.answer, "ok": self.ok,
                "error": self.error}


class DuplicateItemError(ValueError):
    """An item with this id already exists."""

    def __init__(self, item_id: int) -> None:
        self.item_id = item_id
        super().__init__(f"item {item_id} already exists")


class UnknownMerchantError(KeyError):
    """No merchant with this number is registered."""

    def __init__(self, merchant_no: str) -> None:
        self.merchant_no = merchant_no
        super().__init__(f"no merchant by the number {merchant_no!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class SandboxState(Protocol):
    """The sandbox's memory.  Implementations must be safe to call from several threads.

    Raises: :class:`DuplicateItemError` from :meth:`add_items`,
    :class:`UnknownMerchantError` where a merchant number must exist,
    :class:`KeyError` from :meth:`set_order_status` for an unknown order.
    """

    # merchants
    def put_merchant(self, merchant: Merchant) -> None: ...
    def merchant(self, merchant_no: str) -> Merchant | None: ...
    def merchant_by_api_key(self, api_key: str) -> Merchant | None: ...
    def merchants(self) -> list[Merchant]: ...
    def set_certificate(self, merchant_no: str, certificate_pem: str) -> Merchant: ...

    # the pending queue
    def add_items(self, merchant_no: str, raws: Sequence[Mapping[str, Any]],
                  now_ms: int) -> list[Item]: ...
    def item(self, item_id: int) -> Item | None: ...
    def items(self, merchant_no: str | None = None,
              status: ItemStatus | None = None) -> list[Item]: ...
    def pending_page(self, merchant_no: str, page_num: int,
                     page_size: int) -> tuple[int, list[Item]]: ...
    def decide(self, item_id: int, status: ItemStatus, now_ms: int) -> bool: ...
    def change_item(self, item_id: int, changes: Mapping[str, Any]) -> Item | None: ...

    # what was received
    def record_approve(self, *, received_ms: int, merchant_no: str, item_id: int | None,
                       status: int | None, body: Mapping[str, Any], verified: bool | None,
                       code: int, reason: str) -> ApproveRecord: ...
    def approvals(self) -> list[ApproveRecord]: ...
    def record_collect(self, *, received_ms: int, merchant_no: str, is_main: int | None,
                       body: Mapping[str, Any], verified: bool | None, code: int,
                       reason: str) -> CollectRecord: ...
    def collections(self) -> list[CollectRecord]: ...

    # C2C
    def create_order(self, order: Order) -> tuple[Order, bool]: ...
    def order(self, order_no: str) -> Order | None: ...
    def orders(self) -> list[Order]: ...
    def set_order_status(self, order_no: str, status: int, now_ms: int) -> Order: ...
    def record_callback(self, *, order_no: str, attempt: int, sent_ms: int, order_status: int,
                        body: str, http_status: int | None, answer: str | None, ok: bool,
                        error: str | None) -> CallbackAttempt: ...
    def callbacks(self, order_no: str | None = None) -> list[CallbackAttempt]: ...
    def rate(self, crypto: str, legal: str) -> tuple[str, str] | None: ...
    def set_rate(self, crypto: str, legal: str, buy: str, sell: str) -> None: ...

    # authentication
    def use_nonce(self, api_key: str, nonce: str, now_ms: int, window_ms: int) -> bool: ...

    def reset(self, *, merchants: bool = False) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS merchants (
    merchant_no TEXT PRIMARY KEY, api_key TEXT NOT NULL UNIQUE, api_secret TEXT NOT NULL,
    sign_sort TEXT NOT NULL, sign_scheme TEXT NOT NULL, certificate_pem TEXT,
    ip_whitelist TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, merchant_no TEXT NOT NULL, raw TEXT NOT NULL,
    status TEXT NOT NULL, created_ms INTEGER NOT NULL, decided_ms INTEGER);
CREATE INDEX IF NOT EXISTS items_queue ON items (merchant_no, status, id);
CREATE TABLE IF NOT EXISTS approvals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL,
    merchant_no TEXT NOT NULL, item_id INTEGER, status INTEGER, body TEXT NOT NULL,
    verified INTEGER, code INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL,
    merchant_no TEXT NOT NULL, is_main INTEGER, body TEXT NOT NULL, verified INTEGER,
    code INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_no TEXT PRIMARY KEY, merchant_no TEXT NOT NULL, merchant_order_no TEXT NOT NULL,
    order_type INTEGER NOT NULL, crypto_amount TEXT NOT NULL, crypto_currency TEXT NOT NULL,
    legal_currency TEXT NOT NULL, async_url TEXT, status INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, request TEXT NOT NULL,
    UNIQUE (merchant_no, merchant_order_no));
CREATE TABLE IF NOT EXISTS callbacks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, order_no TEXT NOT NULL, attempt INTEGER NOT NULL,
    sent_ms INTEGER NOT NULL, order_status INTEGER NOT NULL, body TEXT NOT NULL,
    http_status INTEGER, answer TEXT, ok INTEGER NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS nonces (
    api_key TEXT NOT NULL, nonce TEXT NOT NULL, seen_ms INTEGER NOT NULL,
    PRIMARY KEY (api_key, nonce));
CREATE INDEX IF NOT EXISTS nonces_seen ON nonces (seen_ms);
CREATE TABLE IF NOT EXISTS rates (
    crypto TEXT NOT NULL, legal TEXT NOT NULL, buy TEXT NOT NULL, sell TEXT NOT NULL,
    PRIMARY KEY (crypto, legal));
"""

_RESET_TABLES = ("items", "approvals", "collections", "orders", "callbacks", "nonces")

#: Expired nonces are deleted at most once per this fraction of the window.
NONCE_PRUNE_BUCKETS = 8


def _opt_bool(v: Any) -> bool | None:
    return None if v is None else bool(v)


class SqliteState:
    """:class:`SandboxState` on SQLite: in memory when ``path`` is None, else in that file."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.RLock()
        target = ":memory:" if self.path is None else str(self.path)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Bumped by every write that changes which items are pending (or their order).
        self._pending_version = 0
        # (version, data_version) -> cached pending totals and page cursors.
        self._page_key: tuple[int, int] | None = None
        self._totals: dict[str, int] = {}
        self._cursors: dict[tuple[str, int, int], int] = {}  # (merchant, size, page) -> id
        self._next_prune_ms: int | None = None
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        self._db.executescript(_SCHEMA)  # executescript commits on its own
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                db.executemany("INSERT OR IGNORE INTO rates VALUES (?, ?, ?, ?)",
                               [(c, lg, b, s) for (c, lg), (b, s) in DEFAULT_RATES.items()])
            elif int(row["value"]) != SCHEMA_VERSION:
                raise ValueError(f"{self.path}: sandbox state schema {row['value']} is not "
                                 f"{SCHEMA_VERSION}; remove the file to start afresh")

    def __repr__(self) -> str:
        return f"SqliteState({str(self.path) if self.path else ':memory:'!r})"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- merchants ------------------------------------------------------------------

    @staticmethod
    def _merchant(row: sqlite3.Row) -> Merchant:
        return Merchant(merchant_no=row["merchant_no"], api_key=row["api_key"],
                        api_secret=row["api_secret"], sign_sort=row["sign_sort"],
                        sign_scheme=row["sign_scheme"], certificate_pem=row["certificate_pem"],
                        ip_whitelist=tuple(loads_exact(row["ip_whitelist"])))

    def put_merchant(self, merchant: Merchant) -> None:
        """Add or replace a merchant (a merchant's API key is unique to it)."""
        with self._tx() as db:
            db.execute("DELETE FROM merchants WHERE api_key = ? AND merchant_no != ?",
                       (merchant.api_key, merchant.merchant_no))
            db.execute("INSERT OR REPLACE INTO merchants VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (merchant.merchant_no, merchant.api_key, merchant.api_secret,
                        merchant.sign_sort, merchant.sign_scheme, merchant.certificate_pem,
                        dumps_exact(list(merchant.ip_whitelist))))

    def merchant(self, merchant_no: str) -> Merchant | None:
        rows = self._query("SELECT * FROM merchants WHERE merchant_no = ?", (merchant_no,))
        return self._merchant(rows[0]) if rows else None

    def merchant_by_api_key(self, api_key: str) -> Merchant | None:
        rows = self._query("SELECT * FROM merchants WHERE api_key = ?", (api_key,))
        return self._merchant(rows[0]) if rows else None

    def merchants(self) -> list[Merchant]:
        return [self._merchant(r) for r in self._query(
            "SELECT * FROM merchants ORDER BY rowid")]

    def set_certificate(self, merchant_no: str, certificate_pem: str) -> Merchant:
        with self._lock:
            current = self.merchant(merchant_no)
            if current is None:
                raise UnknownMerchantError(merchant_no)
            updated = replace(current, certificate_pem=certificate_pem)
            self.put_merchant(updated)
            return updated

    # -- items ----------------------------------------------------------------------

    @staticmethod
    def _item(row: sqlite3.Row) -> Item:
        return Item(id=row["id"], merchant_no=row["merchant_no"], raw=loads_exact(row["raw"]),
                    status=row["status"], created_ms=row["created_ms"],
                    decided_ms=row["decided_ms"])

    def add_items(self, merchant_no: str, raws: Sequence[Mapping[str, Any]],
                  now_ms: int) -> list[Item]:
        """Queue ``raws`` for ``merchant_no``; an item without ``id`` gets the next free one."""
        added: list[Item] = []
        with self._tx() as db:
            if db.execute("SELECT 1 FROM merchants WHERE merchant_no = ?",
                          (merchant_no,)).fetchone() is None:
                raise UnknownMerchantError(merchant_no)
            for raw in raws:
                item = dict(raw)
                if "id" not in item:
                    (top,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()
                    item = {"id": top + 1, **item}
                item_id = item["id"]
                if isinstance(item_id, bool) or not isinstance(item_id, int):
                    raise ValueError(f"item id must be an integer, not {item_id!r}")
                try:
                    db.execute("INSERT INTO items VALUES (?, ?, ?, 'pending', ?, NULL)",
                               (item_id, merchant_no, dumps_exact(item), now_ms))
                except sqlite3.IntegrityError:
                    raise DuplicateItemError(item_id) from None
                added.append(Item(id=item_id, merchant_no=merchant_no, raw=item,
                                  status="pending", created_ms=now_ms))
            self._pending_version += 1
        return added

    def item(self, item_id: int) -> Item | None:
        rows = self._query("SELECT * FROM items WHERE id = ?", (item_id,))
        return self._item(rows[0]) if rows else None

    def items(self, merchant_no: str | None = None,
              status: ItemStatus | None = None) -> list[Item]:
        sql, args = "SELECT * FROM items WHERE 1=1", []
        if merchant_no is not None:
            sql += " AND merchant_no = ?"
            args.append(merchant_no)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return [self._item(r) for r in self._query(sql + " ORDER BY id", args)]

    def pending_page(self, merchant_no: str, page_num: int,
                     page_size: int) -> tuple[int, list[Item]]:
        """``(total pending, the items of page page_num)``, pages 1-based, by id.

        The answer is exactly ``OFFSET (page_num - 1) * page_size``; when the previous
        page was read since the pending set last changed, it is found from that page's
        last id instead (keyset), so reading page after page costs the same at page 1
        and at page 1,000.
        """
        with self._lock:
            key = (self._pending_version, self._data_version())
            if key != self._page_key:
                self._page_key, self._totals, self._cursors = key, {}, {}
            total = self._totals.get(merchant_no)
            if total is None:
                (total,) = self._db.execute(
                    "SELECT COUNT(*) FROM items WHERE merchant_no = ? AND status = 'pending'",
                    (merchant_no,)).fetchone()
                self._totals[merchant_no] = total
            after = self._cursors.get((merchant_no, page_size, page_num - 1))
            if after is not None:
                rows = self._db.execute(
                    "SELECT * FROM items WHERE merchant_no = ? AND status = 'pending' "
                    "AND id > ? ORDER BY id LIMIT ?",
                    (merchant_no, after, page_size)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM items WHERE merchant_no = ? AND status = 'pending' "
                    "ORDER BY id LIMIT ? OFFSET ?",
                    (merchant_no, page_size, max(0, (page_num - 1) * page_size))).fetchall()
            last: int | None = rows[-1]["id"] if rows else after
            if page_num >= 1 and last is not None:
                self._cursors[(merchant_no, page_size, page_num)] = last
        return total, [self._item(r) for r in rows]

    def _data_version(self) -> int:
        # Moves when another connection (another process on the same file) commits.
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        return int(version)

    def change_item(self, item_id: int, changes: Mapping[str, Any]) -> Item | None:
        """Change a *pending* item's fields under the same id (a provider-side mutation).

        Returns the changed item, or None when no pending item has this id.
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM items WHERE id = ? AND status = 'pending'",
                             (item_id,)).fetchone()
            if row is None:
                return None
            current = self._item(row)
            raw = {**dict(current.raw), **{k: v for k, v in changes.items() if k != "id"}}
            db.execute("UPDATE items SET raw = ? WHERE id = ?", (dumps_exact(raw), item_id))
        return replace(current, raw=raw)

    def decide(self, item_id: int, status: ItemStatus, now_ms: int) -> bool:
        """Move a *pending* item to ``status``; False when it is not (or no longer) pending."""
        with self._tx() as db:
            cur = db.execute("UPDATE items SET status = ?, decided_ms = ? "
                             "WHERE id = ? AND status = 'pending'", (status, now_ms, item_id))
            if cur.rowcount == 1:
                self._pending_version += 1
            return cur.rowcount == 1

    # -- approvals and collections ----------------------------------------------------

    def record_approve(self, *, received_ms: int, merchant_no: str, item_id: int | None,
                       status: int | None, body: Mapping[str, Any], verified: bool | None,
                       code: int, reason: str) -> ApproveRecord:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO approvals (received_ms, merchant_no, item_id, status, body, "
                "verified, code, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (received_ms, merchant_no, item_id, status, dumps_exact(body),
                 verified, code, reason))
            seq = cur.lastrowid or 0
        return ApproveRecord(seq, received_ms, merchant_no, item_id, status, body, verified,
                             code, reason)

    def approvals(self) -> list[ApproveRecord]:
        return [ApproveRecord(r["seq"], r["received_ms"], r["merchant_no"], r["item_id"],
                              r["status"], loads_exact(r["body"]), _opt_bool(r["verified"]),
                              r["code"], r["reason"])
                for r in self._query("SELECT * FROM approvals ORDER BY seq")]

    def record_collect(self, *, received_ms: int, merchant_no: str, is_main: int | None,
                       body: Mapping[str, Any], verified: bool | None, code: int,
                       reason: str) -> CollectRecord:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO collections (received_ms, merchant_no, is_main, body, verified, "
                "code, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (received_ms, merchant_no, is_main, dumps_exact(body), verified, code, reason))
            seq = cur.lastrowid or 0
        return CollectRecord(seq, received_ms, merchant_no, is_main, body, verified, code, reason)

    def collections(self) -> list[CollectRecord]:
        return [CollectRecord(r["seq"], r["received_ms"], r["merchant_no"], r["is_main"],
                              loads_exact(r["body"]), _opt_bool(r["verified"]), r["code"],
                              r["reason"])
                for r in self._query("SELECT * FROM collections ORDER BY seq")]

    # -- C2C --------------------------------------------------------------------------

    @staticmethod
    def _order(row: sqlite3.Row) -> Order:
        return Order(order_no=row["order_no"], merchant_no=row["merchant_no"],
                     merchant_order_no=row["merchant_order_no"], order_type=row["order_type"],
                     crypto_amount=row["crypto_amount"], crypto_currency=row["crypto_currency"],
                     legal_currency=row["legal_currency"], async_url=row["async_url"],
                     status=row["status"], created_ms=row["created_ms"],
                     updated_ms=row["updated_ms"], request=loads_exact(row["request"]))

    def create_order(self, order: Order) -> tuple[Order, bool]:
        """Store ``order``; ``(the existing order, False)`` for a known merchantOrderNo."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM orders WHERE merchant_no = ? AND "
                             "merchant_order_no = ?",
                             (order.merchant_no, order.merchant_order_no)).fetchone()
            if row is not None:
                return self._order(row), False
            db.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (order.order_no, order.merchant_no, order.merchant_order_no,
                        order.order_type, order.crypto_amount, order.crypto_currency,
                        order.legal_currency, order.async_url, order.status, order.created_ms,
                        order.updated_ms, dumps_exact(order.request)))
        return order, True

    def order(self, order_no: str) -> Order | None:
        rows = self._query("SELECT * FROM orders WHERE order_no = ?", (order_no,))
        return self._order(rows[0]) if rows else None

    def orders(self) -> list[Order]:
        return [self._order(r) for r in self._query("SELECT * FROM orders ORDER BY rowid")]

    def set_order_status(self, order_no: str, status: int, now_ms: int) -> Order:
        with self._tx() as db:
            cur = db.execute("UPDATE orders SET status = ?, updated_ms = ? WHERE order_no = ?",
                             (status, now_ms, order_no))
            if cur.rowcount != 1:
                raise KeyError(order_no)
            return self._order(db.execute("SELECT * FROM orders WHERE order_no = ?",
                                          (order_no,)).fetchone())

    def record_callback(self, *, order_no: str, attempt: int, sent_ms: int, order_status: int,
                        body: str, http_status: int | None, answer: str | None, ok: bool,
                        error: str | None) -> CallbackAttempt:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO callbacks (order_no, attempt, sent_ms, order_status, body, "
                "http_status, answer, ok, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (order_no, attempt, sent_ms, order_status, body, http_status, answer, ok, error))
            seq = cur.lastrowid or 0
        return CallbackAttempt(seq, order_no, attempt, sent_ms, order_status, body, http_status,
                               answer, ok, error)

    def callbacks(self, order_no: str | None = None) -> list[CallbackAttempt]:
        sql, args = "SELECT * FROM callbacks", []
        if order_no is not None:
            sql += " WHERE order_no = ?"
            args.append(order_no)
        return [CallbackAttempt(r["seq"], r["order_no"], r["attempt"], r["sent_ms"],
                                r["order_status"], r["body"], r["http_status"], r["answer"],
                                bool(r["ok"]), r["error"])
                for r in self._query(sql + " ORDER BY seq", args)]

    def rate(self, crypto: str, legal: str) -> tuple[str, str] | None:
        rows = self._query("SELECT buy, sell FROM rates WHERE crypto = ? AND legal = ?",
                           (crypto.upper(), legal.upper()))
        return (rows[0]["buy"], rows[0]["sell"]) if rows else None

    def set_rate(self, crypto: str, legal: str, buy: str, sell: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO rates VALUES (?, ?, ?, ?)",
                       (crypto.upper(), legal.upper(), buy, sell))

    # -- nonces -----------------------------------------------------------------------

    def use_nonce(self, api_key: str, nonce: str, now_ms: int, window_ms: int) -> bool:
        """Remember ``nonce``; False when it was already used within ``window_ms``.

        One upsert on the primary key: a nonce last seen before the window is taken
        again, whether or not it was pruned yet.  Expired nonces are deleted (through
        the ``seen_ms`` index) once per bucket of the window, so the table holds about
        one window of nonces and no request scans it.
        """
        cutoff = now_ms - window_ms
        with self._tx() as db:
            if self._next_prune_ms is None or now_ms >= self._next_prune_ms:
                db.execute("DELETE FROM nonces WHERE seen_ms < ?", (cutoff,))
                self._next_prune_ms = now_ms + max(1, window_ms // NONCE_PRUNE_BUCKETS)
            cur = db.execute(
                "INSERT INTO nonces VALUES (?, ?, ?) ON CONFLICT (api_key, nonce) "
                "DO UPDATE SET seen_ms = excluded.seen_ms WHERE nonces.seen_ms < ?",
                (api_key, nonce, now_ms, cutoff))
            return cur.rowcount == 1

    # -- lifecycle --------------------------------------------------------------------

    def reset(self, *, merchants: bool = False) -> None:
        """Forget items, records, orders and nonces (and the merchants when asked)."""
        with self._tx() as db:
            for table in _RESET_TABLES:
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            self._pending_version += 1
            self._next_prune_ms = None
            if merchants:
                db.execute("DELETE FROM merchants")

    def close(self) -> None:
        with self._lock:
            self._db.close()
