"""Each fault kind, switched on through the admin routes and observed by our client."""

from __future__ import annotations

import asyncio
import time

import pytest

from cosigner.api.client import ApiClient
from cosigner.errors import (
    AlreadyProcessedError,
    ApiConnectError,
    ApiHTTPError,
    ApiProtocolError,
    ApiTimeoutError,
    ApiTransportError,
)
from cosigner.sandbox import FaultConfig, SandboxAdmin, SandboxAdminError, SandboxServer
from cosigner.signing import Shard
from tests.sandbox.conftest import approval, make_client
from tests.sandbox.test_endpoints import ITEM


class TestRefusedRequests:
    async def test_latency_is_added(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """latencyMs delays each API answer by at least that long."""
        await admin.set_faults({"latencyMs": 150})
        started = time.monotonic()
        await client.rate("USDT", "CNY")
        assert time.monotonic() - started >= 0.15

    async def test_server_error_json(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """errorRate 1 answers HTTP 5xx with code 5000, seen as ApiHTTPError."""
        await admin.set_faults({"errorRate": 1, "errorStatuses": [503]})
        with pytest.raises(ApiHTTPError) as caught:
            await client.rate("USDT", "CNY")
        assert caught.value.status == 503
        assert "Internal server error" in str(caught.value)

    async def test_server_error_html(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """errorBody html answers a proxy's HTML page with the 5xx status."""
        await admin.set_faults({"errorRate": 1, "errorStatuses": [502], "errorBody": "html"})
        with pytest.raises(ApiHTTPError) as caught:
            await client.rate("USDT", "CNY")
        assert caught.value.status == 502

    async def test_rate_limit(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """rateLimitRate 1 answers HTTP 429 (code 4290)."""
        await admin.set_faults({"rateLimitRate": 1})
        with pytest.raises(ApiHTTPError) as caught:
            await client.rate("USDT", "CNY")
        assert caught.value.status == 429

    async def test_dropped_connection(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """dropRate 1 closes the connection without an answer: a transport error."""
        await admin.set_faults({"dropRate": 1})
        with pytest.raises(ApiTransportError) as caught:
            await client.rate("USDT", "CNY")
        assert not isinstance(caught.value, ApiConnectError)

    async def test_non_json_body(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """nonJsonRate 1 answers HTTP 200 with HTML: ApiProtocolError."""
        await admin.set_faults({"nonJsonRate": 1})
        with pytest.raises(ApiProtocolError):
            await client.rate("USDT", "CNY")

    async def test_refused_approve_is_not_acted_on(
            self, client: ApiClient, admin: SandboxAdmin, signer: Shard) -> None:
        """A 5xx fault on approve leaves the item pending and records nothing."""
        item = await admin.add_item(ITEM)
        await admin.set_faults({"errorRate": 1})
        fields, data = approval(signer, item)
        with pytest.raises(ApiHTTPError):
            await client.approve(fields, data)
        assert (await admin.items())[0]["status"] == "pending"
        assert await admin.decisions() == []


class TestSpoiledAnswers:
    async def test_truncated_body(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """truncateRate 1 cuts the JSON answer in half: ApiProtocolError."""
        await admin.set_faults({"truncateRate": 1})
        with pytest.raises(ApiProtocolError):
            await client.rate("USDT", "CNY")

    async def test_connection_cut_mid_body(self, client: ApiClient,
                                           admin: SandboxAdmin) -> None:
        """truncateMode connection closes mid-body: a transport error."""
        await admin.set_faults({"truncateRate": 1, "truncateMode": "connection"})
        with pytest.raises(ApiTransportError):
            await client.rate("USDT", "CNY")

    async def test_approve_answer_dropped_after_acting(
            self, client: ApiClient, admin: SandboxAdmin, signer: Shard) -> None:
        """lostAnswer drop: the server approves and records, the client sees a broken exchange."""
        item = await admin.add_item(ITEM)
        await admin.set_faults({"lostAnswerRate": 1, "endpoints": ["approve"]})
        fields, data = approval(signer, item)
        with pytest.raises(ApiTransportError):
            await client.approve(fields, data)
        assert (await admin.items())[0]["status"] == "approved"
        assert [d["code"] for d in await admin.decisions()] == [200]
        await admin.clear_faults()
        with pytest.raises(AlreadyProcessedError):   # re-posting the same decision
            await client.approve(fields, data)

    async def test_approve_answer_never_arrives(
            self, server: SandboxServer, admin: SandboxAdmin, signer: Shard) -> None:
        """lostAnswer hang: the item is approved, the client times out."""
        item = await admin.add_item(ITEM)
        await admin.set_faults({"lostAnswerRate": 1, "lostAnswerMode": "hang",
                                "endpoints": ["/api/transaction/approve"]})
        fields, data = approval(signer, item)
        async with make_client(server.url, timeout=0.3) as api:
            with pytest.raises(ApiTimeoutError):
                await api.approve(fields, data)
        assert (await admin.items())[0]["status"] == "approved"


class TestFaultControl:
    async def test_clearing_lets_hanging_requests_go(self, server: SandboxServer,
                                                     admin: SandboxAdmin) -> None:
        """DELETE /sandbox/faults ends a hanging request (dropped) without waiting it out."""
        await admin.set_faults({"lostAnswerRate": 1, "lostAnswerMode": "hang"})
        async with make_client(server.url, timeout=20) as api:
            hanging = asyncio.ensure_future(api.rate("USDT", "CNY"))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await admin.clear_faults()
            with pytest.raises(ApiTransportError):
                await hanging
        assert time.monotonic() - started < 2


    async def test_limit_then_healthy(self, server: SandboxServer, admin: SandboxAdmin) -> None:
        """limit 2 fails two requests, then the client's read retry gets through."""
        await admin.set_faults({"errorRate": 1, "limit": 2})
        async with make_client(server.url, retries=3) as api:
            assert (await api.rate("USDT", "CNY")).buy_rate_text == "6.47"
        assert (await admin.faults())["injected"]["error"] == 2

    async def test_endpoint_filter(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """Faults restricted to pending leave rate alone."""
        await admin.set_faults({"errorRate": 1, "endpoints": ["pending"]})
        await client.rate("USDT", "CNY")
        with pytest.raises(ApiHTTPError):
            await client.pending_page(1, 10)

    async def test_admin_routes_never_fault(self, admin: SandboxAdmin) -> None:
        """Faults apply to the API only; the admin routes keep answering."""
        await admin.set_faults({"dropRate": 1})
        assert (await admin.health())["ok"] is True

    async def test_clear(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """DELETE /sandbox/faults switches everything off."""
        await admin.set_faults(FaultConfig(error_rate=1.0))
        await admin.clear_faults()
        await client.rate("USDT", "CNY")
        assert (await admin.faults())["config"]["errorRate"] == 0

    async def test_seeded_faults_repeat(self, server: SandboxServer,
                                        admin: SandboxAdmin) -> None:
        """The same seed gives the same sequence of faulty and healthy answers."""
        async def run() -> list[bool]:
            await admin.set_faults({"errorRate": 0.5, "seed": 7})
            outcomes = []
            async with make_client(server.url) as api:
                for _ in range(12):
                    try:
                        await api.rate("USDT", "CNY")
                        outcomes.append(True)
                    except ApiHTTPError:
                        outcomes.append(False)
            return outcomes

        first = await run()
        assert first == await run()
        assert True in first
        assert False in first

    @pytest.mark.parametrize("body", [{"errorRate": 2}, {"errorRate": 0.6, "dropRate": 0.6},
                                      {"bogus": 1}, {"errorStatuses": [404]},
                                      {"truncateMode": "sideways"}])
    async def test_bad_configuration_is_400(self, admin: SandboxAdmin,
                                            body: dict[str, object]) -> None:
        """Rates outside 0..1 or adding past 1, unknown keys, non-5xx statuses: HTTP 400."""
        with pytest.raises(SandboxAdminError) as caught:
            await admin.set_faults(body)
        assert caught.value.status == 400
