"""C2C order progression and callback delivery to a real local receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cosigner.api.auth import verify_callback
from cosigner.api.client import ApiClient
from cosigner.sandbox import Merchant, SandboxAdmin, SandboxConfig, SandboxServer, UvicornServer
from cosigner.sandbox.callbacks import CALLBACK_SCHEDULE_S, answer_ok, callback_body
from cosigner.sandbox.state import Order
from tests.sandbox.conftest import API_SECRET, TIME_SCALE
from tests.sandbox.test_endpoints import ORDER


class Receiver:
    """A merchant's callback endpoint answering from a script, remembering what it got."""

    def __init__(self, answers: list[Response]) -> None:
        self.answers = answers
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self.arrived = asyncio.Event()
        self.app = Starlette(routes=[Route("/notify", self.notify, methods=["POST"])])

    async def notify(self, request: Request) -> Response:
        self.bodies.append(await request.body())
        self.times.append(time.monotonic())
        self.arrived.set()
        index = min(len(self.bodies), len(self.answers)) - 1
        return self.answers[index]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.bodies) < count:
                self.arrived.clear()
                await self.arrived.wait()


OK = JSONResponse({"code": 200, "message": "Success"})


async def serve(receiver: Receiver) -> AsyncIterator[str]:
    async with UvicornServer(receiver.app) as running:
        yield f"{running.url}/notify"


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Receiver, str]]:
    """A receiver that fails twice (HTTP 500, then code 500) and then succeeds."""
    receiver = Receiver([PlainTextResponse("boom", status_code=500),
                         JSONResponse({"code": 500, "message": "busy"}), OK])
    async for url in serve(receiver):
        yield receiver, url


class TestCallbackDelivery:
    async def test_receiver_failing_twice_gets_exactly_three_signed_callbacks(
            self, client: ApiClient, admin: SandboxAdmin,
            flaky: tuple[Receiver, str]) -> None:
        """Fail, fail, succeed: exactly three callbacks, each with a valid signature."""
        receiver, url = flaky
        created = await client.create_order({**ORDER, "asyncUrl": url})
        await receiver.wait_for(3)
        # the next retry would be due 60 ms after the first attempt: wait well past it
        await asyncio.sleep(CALLBACK_SCHEDULE_S[2] * TIME_SCALE * 3)
        assert len(receiver.bodies) == 3
        for body in receiver.bodies:
            assert verify_callback(body, API_SECRET)
        assert len(set(receiver.bodies)) == 1
        (order,) = await admin.orders()
        assert order["orderNo"] == created.order_no
        assert order["status"] == 1
        assert [(c["attempt"], c["ok"]) for c in order["callbacks"]] == [
            (1, False), (2, False), (3, True)]

    async def test_retries_follow_the_doc_schedule(
            self, merchant: Merchant, flaky: tuple[Receiver, str]) -> None:
        """Retries come 2 and 5 (scaled) minutes after the first attempt, not much sooner."""
        receiver, url = flaky
        scale = 0.001  # 2 minutes: 120 ms, large against the delivery's own latency
        config = SandboxConfig(callback_time_scale=scale, order_steps=((1, 0.0),))
        async with SandboxServer(merchants=[merchant], config=config) as server, \
                ApiClient(server.url, merchant.merchant_no, merchant.api_key, API_SECRET,
                          retries=1) as api:
            await api.create_order({**ORDER, "asyncUrl": url})
            await receiver.wait_for(3)
        first = receiver.times[0]
        assert 0.100 <= receiver.times[1] - first <= 0.200
        assert 0.280 <= receiver.times[2] - first <= 0.400

    async def test_callback_carries_the_doc_fields(
            self, client: ApiClient, flaky: tuple[Receiver, str]) -> None:
        """The callback has status, dealAmount as a number, orderNo, merchantOrderNo, orderType."""
        receiver, url = flaky
        created = await client.create_order({**ORDER, "asyncUrl": url,
                                             "cryptoAmount": "10.50"})
        await receiver.wait_for(1)
        text = receiver.bodies[0].decode()
        assert '"dealAmount":10.50' in text
        assert f'"orderNo":"{created.order_no}"' in text
        assert '"merchantOrderNo":"1231222112d8"' in text
        assert '"status":1' in text
        assert '"orderType":1' in text

    async def test_gives_up_after_the_schedule(self, merchant: Merchant) -> None:
        """A receiver that never says 200 gets the first attempt plus one per schedule entry."""
        receiver = Receiver([JSONResponse({"code": 500})])
        config = SandboxConfig(callback_time_scale=1.0, order_steps=((1, 0.0),),
                               callback_schedule=(0.01, 0.02, 0.03))
        async for url in serve(receiver):
            async with SandboxServer(merchants=[merchant], config=config) as server:
                async with ApiClient(server.url, merchant.merchant_no, merchant.api_key,
                                     API_SECRET, retries=1) as api:
                    await api.create_order({**ORDER, "asyncUrl": url})
                await receiver.wait_for(4)
                await server.sandbox.orders.idle()
        assert len(receiver.bodies) == 4

    async def test_unreachable_receiver_is_recorded(self, client: ApiClient,
                                                    admin: SandboxAdmin) -> None:
        """A refused connection is a failed attempt recorded with its error."""
        await client.create_order({**ORDER, "asyncUrl": "http://127.0.0.1:9/nowhere"})
        async with asyncio.timeout(5):
            # the attempt is only visible through the admin route: poll it
            while not (await admin.orders())[0]["callbacks"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        attempt = (await admin.orders())[0]["callbacks"][0]
        assert attempt["ok"] is False
        assert attempt["httpStatus"] is None
        assert "ConnectError" in attempt["error"]

    async def test_no_async_url_no_callback(self, client: ApiClient, admin: SandboxAdmin,
                                            server: SandboxServer) -> None:
        """An order without asyncUrl still completes, silently."""
        await client.create_order(ORDER)
        await server.sandbox.orders.idle()
        (order,) = await admin.orders()
        assert (order["status"], order["callbacks"]) == (1, [])


class TestRestart:
    async def test_order_progression_resumes_after_restart(
            self, merchant: Merchant, tmp_path: Path) -> None:
        """An order created before a restart completes and calls back after it."""
        from cosigner.sandbox import SqliteState
        receiver = Receiver([OK])
        path = tmp_path / "sandbox.db"
        async for url in serve(receiver):
            state = SqliteState(path)
            async with SandboxServer(state, merchants=[merchant]) as server, \
                    ApiClient(server.url, merchant.merchant_no, merchant.api_key, API_SECRET,
                              retries=1) as api:
                await api.create_order({**ORDER, "asyncUrl": url})  # real time: minutes
            state.close()
            assert receiver.bodies == []
            state = SqliteState(path)
            fast = SandboxConfig(callback_time_scale=TIME_SCALE)
            async with SandboxServer(state, config=fast):
                await receiver.wait_for(1)
            state.close()
        assert b'"status":1' in receiver.bodies[0]


class TestOrderStatus:
    async def test_admin_cancel_sends_the_callback(self, merchant: Merchant) -> None:
        """Forcing status -1 stops the progression and delivers a callback with status -1."""
        receiver = Receiver([OK])
        config = SandboxConfig(callback_time_scale=1.0)  # the progression would take minutes
        async for url in serve(receiver):
            async with SandboxServer(merchants=[merchant], config=config) as server, \
                    SandboxAdmin(server.url) as admin:
                async with ApiClient(server.url, merchant.merchant_no, merchant.api_key,
                                     API_SECRET, retries=1) as api:
                    created = await api.create_order({**ORDER, "asyncUrl": url})
                await admin.set_order_status(created.order_no, -1)
                await receiver.wait_for(1)
                (order,) = await admin.orders()
        assert order["status"] == -1
        assert b'"status":-1' in receiver.bodies[0]

    async def test_unknown_order_is_404(self, admin: SandboxAdmin) -> None:
        """Forcing the status of an unknown order is a 404."""
        from cosigner.sandbox import SandboxAdminError
        with pytest.raises(SandboxAdminError) as caught:
            await admin.set_order_status("1", 1)
        assert caught.value.status == 404


class TestPureParts:
    def test_callback_body_verifies(self) -> None:
        """callback_body's signature verifies with the same secret and not another."""
        order = Order("335793449653514240", "M", "mo-1", 2, "10.11", "USDT", "CNY",
                      "http://x", 9, 0, 0, {})
        body = callback_body(order, 9, "s3cret", "ascii")
        assert verify_callback(body, "s3cret", "ascii")
        assert not verify_callback(body, "other")

    @pytest.mark.parametrize(("body", "ok"), [
        (b'{"code":200,"message":"Success"}', True), (b'{"code":"200"}', True),
        (b'{"code":201}', False), (b"OK", False), (b"[200]", False)])
    def test_answer_ok(self, body: bytes, ok: bool) -> None:
        """Only a JSON object with code 200 counts as delivered."""
        assert answer_ok(body) is ok

    def test_schedule_is_the_docs(self) -> None:
        """2, 5, 10, 30, 60, 90 minutes, then hourly from 2 h to 12 h."""
        minutes: list[Any] = [s / 60 for s in CALLBACK_SCHEDULE_S]
        assert minutes == [2, 5, 10, 30, 60, 90, *range(120, 721, 60)]
