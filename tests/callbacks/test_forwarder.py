"""The outbox forwarder against a real merchant backend on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from cosigner.callbacks.forwarder import Backoff, Forwarder, signature
from cosigner.callbacks.verify import transition
from cosigner.logs import get_logger
from cosigner.sandbox import UvicornServer
from cosigner.store.orders import MemoryOrderJournal, OrderJournal
from tests.callbacks.conftest import FORWARD_SECRET, Backend, FakeClock
from tests.callbacks.test_store import callback


class Observed:
    """The forwarder's observer, remembering what it was told."""

    def __init__(self) -> None:
        self.forwards: Counter[str] = Counter()
        self.queue: list[int] = []

    def order_forward(self, outcome: str) -> None:
        self.forwards[outcome] += 1

    def order_forward_queue(self, size: int) -> None:
        self.queue.append(size)


def forwarder(journal: OrderJournal, url: str, clock: FakeClock | None = None,
              **kwargs: object) -> tuple[Forwarder, Observed]:
    observed = Observed()
    options: dict[str, object] = {"observer": observed, "log": get_logger("test"),
                                  "timeout": 3.0, "backoff": Backoff(1.0, 8.0)}
    if clock is not None:
        options["clock"] = clock
    options.update(kwargs)
    return Forwarder(journal, url, FORWARD_SECRET, **options), observed  # type: ignore[arg-type]


def test_the_repr_hides_the_url_userinfo() -> None:
    from cosigner.callbacks.verify import transition
    from cosigner.store.orders import MemoryOrderJournal
    journal = MemoryOrderJournal(transition)
    shown = repr(forwarder(journal, "https://u:repr-pw-48@hook.example/in")[0])
    assert "repr-pw-48" not in shown


class TestSignature:
    def test_signature_is_hmac_sha256_of_the_body(self) -> None:
        """The header value is sha256=<hex HMAC-SHA256 of the exact body>."""
        body = b'{"event_id":"e1"}'
        expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
        assert signature(b"k", body) == f"sha256={expected}"

    def test_backoff_doubles_to_the_cap(self) -> None:
        """1, 2, 4, 8, 8 ... seconds."""
        assert [Backoff(1.0, 8.0).delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]

    def test_repr_hides_the_secret(self) -> None:
        """The forward secret never shows in a repr."""
        fwd, _ = forwarder(MemoryOrderJournal(transition), "http://127.0.0.1:9/x")
        assert FORWARD_SECRET not in repr(fwd)


class TestDelivery:
    async def test_delivers_with_event_id_and_valid_signature(
            self, backend: tuple[Backend, UvicornServer], clock: FakeClock) -> None:
        """Each event arrives once, its HMAC verifies, and it is marked delivered."""
        got, server = backend
        journal = MemoryOrderJournal(transition, clock=clock)
        journal.open()
        record = journal.record(callback(1), forward=True).record
        assert record is not None
        fwd, observed = forwarder(journal, server.url + "/events", clock)
        await fwd.start(background=False)
        try:
            assert await fwd.run_once() == 1
            assert await fwd.run_once() == 0
        finally:
            await fwd.stop()
        assert got.bad_signatures == 0
        assert [e["event_id"] for e in got.accepted] == [record.event_id]
        assert got.accepted[0]["dealAmount"] == "10.50"
        assert observed.forwards == {"delivered": 1}
        assert observed.queue[-1] == 0
        (event,) = journal.events(record.order_no)
        assert (event.attempts, event.delivered_at) == (1, clock.now)

    async def test_failure_backs_off_then_delivers_the_same_bytes(
            self, backend: tuple[Backend, UvicornServer], clock: FakeClock) -> None:
        """A 503 is retried after the backoff with the identical body and event id."""
        got, server = backend
        got.script = [503, 500]
        journal = MemoryOrderJournal(transition, clock=clock)
        journal.open()
        journal.record(callback(1), forward=True)
        fwd, observed = forwarder(journal, server.url + "/events", clock)
        await fwd.start(background=False)
        try:
            with capture_logs() as logs:
                assert await fwd.run_once() == 0
            assert logs[0]["event"] == "order.forward_failed"
            assert logs[0]["error"] == "HTTP 503"
            assert await fwd.run_once() == 0      # not due yet: no attempt
            clock.advance(seconds=1)
            assert await fwd.run_once() == 0      # 500
            clock.advance(seconds=1)
            assert await fwd.run_once() == 0      # backoff is now 2 s
            clock.advance(seconds=1)
            assert await fwd.run_once() == 1
        finally:
            await fwd.stop()
        assert len(got.received) == 3
        assert len({e["event_id"] for e in got.received}) == 1
        assert observed.forwards == {"rejected": 2, "delivered": 1}

    async def test_backend_down_is_an_error_attempt(self, clock: FakeClock) -> None:
        """A refused connection counts as an error attempt and is retried later."""
        journal = MemoryOrderJournal(transition, clock=clock)
        journal.open()
        journal.record(callback(1), forward=True)
        async with UvicornServer(Backend().app()) as server:
            url = server.url + "/events"
        fwd, observed = forwarder(journal, url, clock)  # the port is closed now
        await fwd.start(background=False)
        try:
            assert await fwd.run_once() == 0
        finally:
            await fwd.stop()
        assert observed.forwards == {"error": 1}
        assert journal.queue_size() == 1
        assert journal.next_due() == clock.now + timedelta(seconds=1)

    async def test_gate_closed_forwards_nothing(
            self, backend: tuple[Backend, UvicornServer]) -> None:
        """An instance that is not the leader leaves the outbox alone."""
        got, server = backend
        journal = MemoryOrderJournal(transition)
        journal.open()
        journal.record(callback(1), forward=True)
        leader = False
        fwd, observed = forwarder(journal, server.url + "/events", gate=lambda: leader,
                                  idle=0.05)
        await fwd.start()
        try:
            await asyncio.sleep(0.3)
            assert got.received == []
            assert observed.queue[-1] == 1
            leader = True
            await got.wait_accepted(1)
        finally:
            await fwd.stop()
        assert journal.queue_size() == 0

    async def test_loop_wakes_on_notify(self, backend: tuple[Backend, UvicornServer]) -> None:
        """A new event goes out on notify(), without waiting for the idle tick."""
        got, server = backend
        journal = MemoryOrderJournal(transition)
        journal.open()
        fwd, _ = forwarder(journal, server.url + "/events", idle=60.0)
        await fwd.start()
        try:
            await asyncio.sleep(0.05)
            journal.record(callback(1), forward=True)
            fwd.notify()
            await got.wait_accepted(1, within=5)
        finally:
            await fwd.stop()


@pytest.mark.parametrize("status", [301, 404])
async def test_non_2xx_is_not_delivered(status: int, backend: tuple[Backend, UvicornServer],
                                        clock: FakeClock) -> None:
    """Only a 2xx answer delivers (a redirect is not followed)."""
    got, server = backend
    got.default = status
    journal = MemoryOrderJournal(transition, clock=clock)
    journal.open()
    journal.record(callback(1), forward=True)
    fwd, observed = forwarder(journal, server.url + "/events", clock)
    await fwd.start(background=False)
    try:
        assert await fwd.run_once() == 0
    finally:
        await fwd.stop()
    assert observed.forwards == {"rejected": 1}
    assert journal.queue_size() == 1


def test_the_documented_verification_accepts_a_real_forward() -> None:
    """docs/callbacks.md's five lines verify what the forwarder signs, and nothing else."""
    text = (Path(__file__).parents[2] / "docs" / "callbacks.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert snippet is not None
    assert len(snippet.group(1).strip().splitlines()) <= 5
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)  # noqa: S102 - the documentation's own code
    body = b'{"event_id":"e1","status":1,"dealAmount":"10.50"}'
    header = signature(FORWARD_SECRET.encode(), body)
    assert namespace["verified"](body, header, FORWARD_SECRET.encode())
    assert not namespace["verified"](body + b" ", header, FORWARD_SECRET.encode())
    assert not namespace["verified"](body, header, b"another secret")


async def test_stop_cuts_a_hanging_attempt_and_keeps_the_event() -> None:
    """A backend that never answers does not hold up the daemon's stop; the event stays
    undelivered, to be sent again (same id) after the restart."""
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def hang(_request: Request) -> Response:
        arrived.set()
        await release.wait()
        return JSONResponse({}, status_code=200)

    journal = MemoryOrderJournal(transition)
    journal.open()
    journal.record(callback(1), forward=True)
    app = Starlette(routes=[Route("/events", hang, methods=["POST"])])
    async with UvicornServer(app) as server:
        fwd, observed = forwarder(journal, server.url + "/events", timeout=60.0)
        await fwd.start()
        await asyncio.wait_for(arrived.wait(), 10)
        await fwd.stop(grace=0.1)
        release.set()
    assert journal.queue_size() == 1
    assert observed.forwards == {}
