"""The admin routes under /sandbox/, through SandboxAdmin and raw HTTP."""

from __future__ import annotations

import httpx
import pytest

from cosigner.api.client import ApiClient
from cosigner.errors import ApiResponseError
from cosigner.models import JsonNumber
from cosigner.sandbox import SandboxAdmin, SandboxAdminError, SandboxServer
from cosigner.signing import Shard
from tests.conftest import ThrowawayShard
from tests.sandbox.conftest import API_KEY, API_SECRET, MERCHANT_NO, approval, make_client
from tests.sandbox.test_endpoints import ITEM


class TestItems:
    async def test_one_item_list_and_batch_forms(self, server: SandboxServer) -> None:
        """POST /sandbox/items takes one item, a list, or {"items": [...]}."""
        async with httpx.AsyncClient(base_url=server.url) as http:
            one = await http.post("/sandbox/items", json=ITEM)
            many = await http.post("/sandbox/items", json=[ITEM, ITEM])
            batch = await http.post("/sandbox/items", json={"items": [ITEM]})
        assert [r.status_code for r in (one, many, batch)] == [201, 201, 201]
        assert [i["id"] for i in many.json()["items"]] == [2, 3]
        assert batch.json()["items"][0]["id"] == 4

    async def test_generate(self, admin: SandboxAdmin) -> None:
        """{"generate": N, "seed": S} queues N reproducible items."""
        first = await admin.generate_items(5, seed=9, chains=["195"])
        await admin.reset()
        again = await admin.generate_items(5, seed=9, chains=["195"])
        assert first == again
        assert {i["chainId"] for i in first} == {"195"}

    async def test_exact_literal_round_trip(self, admin: SandboxAdmin) -> None:
        """A JsonNumber amount is stored and listed as the same literal."""
        item = await admin.add_item({**ITEM, "amount": JsonNumber("1e3")})
        listed = (await admin.items())[0]["item"]
        assert item["amount"] == listed["amount"] == "1e3"
        assert isinstance(listed["amount"], JsonNumber)

    async def test_malformed_items_can_be_queued(self, admin: SandboxAdmin,
                                                 client: ApiClient) -> None:
        """Items with missing or mistyped fields are served as given (policy tests need them)."""
        await admin.add_items([{"fromAddress": "x"}, {**ITEM, "chainId": 56}])
        page = await client.pending_page(1, 10)
        assert page.items[0].to_address is None
        assert page.items[1].chain_id is None

    async def test_change_item_keeps_the_id(self, admin: SandboxAdmin,
                                            client: ApiClient) -> None:
        """PATCH /sandbox/items/{id} changes a pending item's fields under the same id."""
        added = await admin.add_item({**ITEM, "amount": "4.10"})
        changed = await admin.change_item(added["id"], {"amount": "9.99", "id": 77})
        assert changed["id"] == added["id"]
        page = await client.pending_page(1, 10)
        assert [(i.id, i.amount_text) for i in page.items] == [(added["id"], "9.99")]

    async def test_change_item_refuses_unknown_or_decided_ids(self,
                                                             admin: SandboxAdmin) -> None:
        """Only a pending item can be changed: otherwise 404."""
        with pytest.raises(SandboxAdminError) as caught:
            await admin.change_item(999, {"amount": "1"})
        assert caught.value.status == 404

    async def test_duplicate_id_is_409(self, admin: SandboxAdmin) -> None:
        """Adding an existing id is refused with 409."""
        await admin.add_item({**ITEM, "id": 5})
        with pytest.raises(SandboxAdminError) as caught:
            await admin.add_item({**ITEM, "id": 5})
        assert caught.value.status == 409

    @pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"generate": -1}',
                                      b'{"generate": 1, "chains": ["7"]}', b'{"id": "x"}'])
    async def test_bad_bodies_are_400(self, server: SandboxServer, body: bytes) -> None:
        """Unparseable bodies, non-object items, bad counts, chains and ids are HTTP 400."""
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post("/sandbox/items", content=body)
        assert response.status_code == 400
        assert response.json()["error"]

    async def test_items_by_status(self, admin: SandboxAdmin, client: ApiClient,
                                   signer: Shard) -> None:
        """GET /sandbox/items?status= filters; an unknown status is 400."""
        first, _ = await admin.add_items([ITEM, ITEM])
        fields, data = approval(signer, first, status=2)
        await client.approve(fields, data)
        assert [i["item"]["id"] for i in await admin.items("rejected")] == [first["id"]]
        assert len(await admin.items("pending")) == 1
        with pytest.raises(SandboxAdminError):
            await admin.items("maybe")


class TestMerchants:
    async def test_register_and_list_without_secret(self, admin: SandboxAdmin,
                                                    shard: ThrowawayShard) -> None:
        """A registered merchant is listed with its settings but never its secret."""
        await admin.register_merchant("M2", "K2", "very-secret", sign_sort="ascii",
                                      certificate=shard.certificate)
        listed = {m["merchantNo"]: m for m in await admin.merchants()}
        assert listed["M2"]["signSort"] == "ascii"
        assert listed["M2"]["hasCertificate"] is True
        assert "very-secret" not in str(listed)

    async def test_second_merchant_is_served(self, server: SandboxServer,
                                             admin: SandboxAdmin) -> None:
        """A merchant added at run time can call the API with its own key."""
        await admin.register_merchant("M2", "K2", "s2")
        await admin.add_item(ITEM, merchant_no="M2")
        async with ApiClient(server.url, "M2", "K2", "s2", retries=1) as api:
            assert (await api.pending_page(1, 5)).total == 1
        async with make_client(server.url) as ours:
            assert (await ours.pending_page(1, 5)).total == 0

    async def test_certificate_registration(self, admin: SandboxAdmin, client: ApiClient,
                                            signer: Shard, shard: ThrowawayShard) -> None:
        """A merchant registered without certificate approves once one is registered."""
        await admin.register_merchant(MERCHANT_NO, API_KEY, API_SECRET)
        item = await admin.add_item(ITEM)
        fields, data = approval(signer, item)
        with pytest.raises(ApiResponseError):
            await client.approve(fields, data)
        await admin.register_certificate(MERCHANT_NO, shard.certificate)
        await client.approve(fields, data)

    async def test_bad_certificate_is_400(self, admin: SandboxAdmin) -> None:
        """Text that is not a PEM certificate is refused with 400."""
        with pytest.raises(SandboxAdminError) as caught:
            await admin.register_certificate(MERCHANT_NO, "-----BEGIN NOTHING-----")
        assert caught.value.status == 400

    async def test_unknown_merchant_certificate_is_404(self, admin: SandboxAdmin,
                                                       shard: ThrowawayShard) -> None:
        """Registering a certificate for an unknown merchant is 404."""
        with pytest.raises(SandboxAdminError) as caught:
            await admin.register_certificate("M-NOBODY", shard.certificate)
        assert caught.value.status == 404

    async def test_missing_fields_are_400(self, admin: SandboxAdmin) -> None:
        """A merchant without its secret is refused."""
        with pytest.raises(SandboxAdminError, match="apiSecret"):
            await admin.register_merchant("M3", "K3", "")


class TestReset:
    async def test_reset_forgets_everything_but_merchants(
            self, admin: SandboxAdmin, client: ApiClient, signer: Shard) -> None:
        """After reset: no items, decisions, collections, orders or faults."""
        item = await admin.add_item(ITEM)
        fields, data = approval(signer, item)
        await client.approve(fields, data)
        await admin.set_faults({"latencyMs": 1})
        await admin.reset()
        assert (await admin.items(), await admin.decisions(), await admin.orders()) == (
            [], [], [])
        assert (await admin.faults())["config"]["latencyMs"] == 0
        assert [m["merchantNo"] for m in await admin.merchants()] == [MERCHANT_NO]
        assert (await client.rate("USDT", "CNY")).buy_rate_text == "6.47"

    async def test_reset_merchants(self, admin: SandboxAdmin) -> None:
        """reset(merchants=True) forgets the merchants too."""
        await admin.reset(merchants=True)
        assert await admin.merchants() == []
        with pytest.raises(SandboxAdminError, match="no merchant"):
            await admin.add_item(ITEM)
