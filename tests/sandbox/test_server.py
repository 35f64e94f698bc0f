"""SandboxServer: in the test's loop, in a background thread, and over a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from cosigner.api.auth import SignAuth
from cosigner.errors import AlreadyProcessedError, ApiConnectError, ApiTransportError
from cosigner.models import JsonNumber
from cosigner.sandbox import Merchant, SandboxAdmin, SandboxServer, SqliteState
from cosigner.signing import Shard
from tests.sandbox.conftest import API_KEY, API_SECRET, MERCHANT_NO, approval, make_client
from tests.sandbox.test_endpoints import ITEM


class TestInProcess:
    async def test_random_port_and_url(self, server: SandboxServer) -> None:
        """Port 0 binds a free port on 127.0.0.1 and the url names it."""
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"

    async def test_stopped_server_refuses_connections(self, merchant: Merchant) -> None:
        """After stop the port no longer answers: our client sees ApiConnectError."""
        server = SandboxServer(merchants=[merchant])
        await server.start()
        url = server.url
        await server.stop()
        async with make_client(url) as api:
            with pytest.raises(ApiConnectError):
                await api.rate("USDT", "CNY")

    async def test_url_before_start_is_an_error(self) -> None:
        """A server that is not started has no url."""
        with pytest.raises(RuntimeError, match="not started"):
            _ = SandboxServer().url

    async def test_stop_ends_hanging_requests(self, merchant: Merchant) -> None:
        """Stopping while a request hangs on a fault returns promptly, dropping it."""
        async with SandboxServer(merchants=[merchant]) as server, \
                SandboxAdmin(server.url) as admin:
            await admin.set_faults({"lostAnswerRate": 1, "lostAnswerMode": "hang"})
            api = make_client(server.url, timeout=30)
            pending = asyncio.ensure_future(api.rate("USDT", "CNY"))
            await asyncio.sleep(0.2)
            started = time.monotonic()
        assert time.monotonic() - started < 3
        with pytest.raises(ApiTransportError):  # the hanging request is dropped, unanswered
            await pending
        await api.aclose()


class TestThread:
    def test_serves_synchronous_callers(self, merchant: Merchant) -> None:
        """Started in a thread, the sandbox answers a plain synchronous httpx client."""
        auth = SignAuth(MERCHANT_NO, API_KEY, API_SECRET)
        with SandboxServer(merchants=[merchant]) as server, \
                httpx.Client(base_url=server.url, auth=auth) as http:
            http.post("/sandbox/items", json=ITEM)
            answer = http.post("/api/transaction/pending",
                               json={"pageNum": 1, "pageSize": 10}).json()
        assert answer["code"] == 200
        assert answer["data"]["total"] == 1

    def test_state_is_readable_from_the_caller(self, merchant: Merchant) -> None:
        """The state served from the thread can be inspected directly."""
        with SandboxServer(merchants=[merchant]) as server, httpx.Client() as http:
            http.post(f"{server.url}/sandbox/items", json={"generate": 3, "seed": 1})
            assert len(server.state.items()) == 3


class TestRestart:
    async def test_sqlite_state_survives_a_restart(self, tmp_path: Path, merchant: Merchant,
                                                   signer: Shard) -> None:
        """Items, decisions and merchants in a state file are all there after a restart."""
        path = tmp_path / "sandbox.db"
        state = SqliteState(path)
        async with SandboxServer(state, merchants=[merchant]) as server, \
                SandboxAdmin(server.url) as admin, make_client(server.url) as api:
            first = await admin.add_item(ITEM)
            await admin.add_item({**ITEM, "amount": JsonNumber("7.50")})
            fields, data = approval(signer, first)
            await api.approve(fields, data)
        state.close()

        reopened = SqliteState(path)
        try:
            async with SandboxServer(reopened) as server, \
                    SandboxAdmin(server.url) as admin, make_client(server.url) as api:
                snapshot = await api.pending()
                assert [i.amount_text for i in snapshot.items] == ["7.50"]
                assert [d["code"] for d in await admin.decisions()] == [200]
                with pytest.raises(AlreadyProcessedError):
                    await api.approve(fields, data)
        finally:
            reopened.close()
