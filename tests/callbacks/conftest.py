"""Fixtures of the callback tests: signed callback bodies, journals, a forward backend.

:func:`signed` builds a callback body the way 1BitPay (and the sandbox) signs it;
:class:`Backend` is a merchant backend on a real loopback socket that checks the
forward signature with nothing but the standard library, as ``docs/callbacks.md``
tells merchants to.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cosigner.api.auth import SignSort, sign_callback
from cosigner.callbacks.verify import transition
from cosigner.models import JsonNumber, dumps_exact
from cosigner.sandbox import UvicornServer
from cosigner.store import init_journal
from cosigner.store.orders import MemoryOrderJournal, OrderJournal
from cosigner.store.orders_sqlite import SqliteOrderJournal

SECRET = "callback-test-secret-Qw7"
FORWARD_SECRET = "forward-test-secret-Zx9"
T0 = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)


def fields(status: int = 1, *, order_no: str = "335793449653514240",
           amount: str = "10.50", **extra: Any) -> dict[str, Any]:
    """The fields of a callback (dealAmount as a JSON number literal, like the provider)."""
    return {"status": status, "dealAmount": JsonNumber(amount), "orderNo": order_no,
            "merchantOrderNo": "1231222112d8", "orderType": 1, **extra}


def signed(status: int = 1, *, secret: str = SECRET, sort: SignSort = "casefold",
           **kwargs: Any) -> bytes:
    """A callback body signed as the API doc says."""
    values = fields(status, **kwargs)
    values["signature"] = sign_callback(values, secret, sort)
    return dumps_exact(values).encode("utf-8")


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def new_sqlite_journal(path: Path) -> Path:
    """Create an empty journal at ``path`` (what ``cosigner journal init`` does)."""
    init_journal(f"sqlite://{path}")
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def order_journal(request: pytest.FixtureRequest, tmp_path: Path,
                  clock: FakeClock) -> Iterator[OrderJournal]:
    """Each order journal implementation, opened (the contract suite runs over all)."""
    journal: OrderJournal
    if request.param == "memory":
        journal = MemoryOrderJournal(transition, clock=clock)
    else:
        path = new_sqlite_journal(tmp_path / "journal.db")
        journal = SqliteOrderJournal(path, transition, writer=True,
                                     clock=clock)
    journal.open()
    try:
        yield journal
    finally:
        journal.close()


@dataclass
class Backend:
    """A merchant backend: verifies the HMAC, answers from a script (default 200)."""

    secret: bytes = FORWARD_SECRET.encode()
    #: HTTP status to answer per request, in order; then ``default``.
    script: list[int] = field(default_factory=list)
    default: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def verified(self, body: bytes, header: str) -> bool:
        """The five lines of ``docs/callbacks.md``."""
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, header)

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        if not self.verified(body, request.headers.get("x-cosigner-signature", "")):
            self.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        event = json.loads(body)
        assert request.headers["x-cosigner-event-id"] == event["event_id"]
        self.received.append(event)
        self.arrived.set()
        status = self.script.pop(0) if self.script else self.default
        if 200 <= status < 300:
            self.accepted.append(event)
        return JSONResponse({"ok": status < 300}, status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/events", self.receive, methods=["POST"])])

    async def wait_accepted(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self.accepted) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, UvicornServer]]:
    """A running :class:`Backend` on 127.0.0.1 (its URL: ``server.url + '/events'``)."""
    backend = Backend()
    async with UvicornServer(backend.app()) as server:
        yield backend, server
