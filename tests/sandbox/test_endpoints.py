"""The five API endpoints of the sandbox, driven with our client over loopback sockets."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from cosigner.api.client import ApiClient
from cosigner.errors import AlreadyProcessedError, ApiResponseError
from cosigner.models import JsonNumber
from cosigner.sandbox import Merchant, SandboxAdmin, SandboxServer
from cosigner.sandbox.state import SqliteState
from cosigner.signing import Shard, collect_sign_object, load_shard
from tests.conftest import ThrowawayShard
from tests.sandbox.conftest import API_KEY, API_SECRET, MERCHANT_NO, approval, make_client

ORDER: dict[str, Any] = {
    "userName": "Chen", "areaCode": "+86", "phone": "18848820305",
    "cryptoAmount": "10", "cryptoCurrency": "USDT", "legalCurrency": "CNY",
    "idCardType": 1, "idCard": "412627288918989891", "kyc": 2,
    "merchantOrderNo": "1231222112d8", "orderType": 1, "payWay": 1, "h5": False,
}

ITEM = {"fromAddress": "TGGh3cGp9P21Ebvg9JitjHoeJaKqrg3bRg",
        "toAddress": "TFMQrPdFWuPzFRXb42sxB22ABCVL6xSopV", "amount": "4.10", "chainId": "195"}


class TestRate:
    async def test_quotes_a_known_pair(self, client: ApiClient) -> None:
        """A known currency pair is quoted with the API doc's rates as exact decimals."""
        rate = await client.rate("USDT", "CNY")
        assert (rate.buy_rate, rate.sell_rate) == (Decimal("6.47"), Decimal("6.9"))

    async def test_admin_rate_is_quoted(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """A rate set through the admin route is what the API quotes."""
        await admin.set_rate("btc", "eur", "58000.10", "58999.90")
        rate = await client.rate("BTC", "EUR")
        assert rate.buy_rate_text == "58000.10"

    async def test_unknown_pair_is_4040(self, client: ApiClient) -> None:
        """An unknown currency pair is answered with code 4040."""
        with pytest.raises(ApiResponseError) as caught:
            await client.rate("USDT", "XXX")
        assert caught.value.code == 4040

    async def test_missing_parameter_is_4002_naming_it(self, client: ApiClient) -> None:
        """A missing business parameter is 4002 and the message names it."""
        with pytest.raises(ApiResponseError) as caught:
            await client.rate("", "CNY")
        assert caught.value.code == 4002
        assert "cryptoCurrency" in caught.value.api_message


class TestCreateOrder:
    async def test_new_order_has_the_doc_shape(self, client: ApiClient,
                                               server: SandboxServer) -> None:
        """A new order answers a cashier url, isNew true and an 18-digit orderNo."""
        created = await client.create_order(ORDER)
        assert created.is_new is True
        assert created.order_no.isdigit()
        assert len(created.order_no) == 18
        assert created.url.startswith(f"{server.url}/1bitpay-open-api-h5/otc.html?t=")
        assert f"o={created.order_no}" in created.url

    async def test_same_merchant_order_no_is_not_new(self, client: ApiClient) -> None:
        """The same merchantOrderNo twice returns the same order with isNew false."""
        first = await client.create_order(ORDER)
        second = await client.create_order(ORDER)
        assert second.is_new is False
        assert (second.order_no, second.url) == (first.order_no, first.url)

    async def test_sell_order_needs_bank_card(self, client: ApiClient) -> None:
        """A sell order paid other than by bank card is refused with 4002 naming payWay."""
        order = {**ORDER, "merchantOrderNo": "sell-1", "orderType": 2, "payWay": 2,
                 "bank": "CCB", "bankAccount": "6217229282829299111"}
        with pytest.raises(ApiResponseError) as caught:
            await client.create_order(order)
        assert (caught.value.code, "payWay" in caught.value.api_message) == (4002, True)

    async def test_bad_amount_is_4002(self, client: ApiClient) -> None:
        """A cryptoAmount that is not a positive decimal is refused with 4002."""
        with pytest.raises(ApiResponseError) as caught:
            await client.create_order({**ORDER, "cryptoAmount": "-1"})
        assert caught.value.code == 4002

    async def test_unknown_pair_is_4040(self, client: ApiClient) -> None:
        """An order in an unknown currency pair is answered 4040."""
        with pytest.raises(ApiResponseError) as caught:
            await client.create_order({**ORDER, "legalCurrency": "XXX"})
        assert caught.value.code == 4040

    async def test_order_is_listed_for_inspection(self, client: ApiClient,
                                                  admin: SandboxAdmin) -> None:
        """The admin route lists the order with the request it came from."""
        created = await client.create_order(ORDER)
        (order,) = await admin.orders()
        assert order["orderNo"] == created.order_no
        assert order["request"]["merchantOrderNo"] == ORDER["merchantOrderNo"]


class TestPending:
    async def test_empty_queue_is_one_empty_page(self, client: ApiClient) -> None:
        """No items: total 0, an empty list, one page read."""
        snapshot = await client.pending()
        assert (snapshot.total, snapshot.items, snapshot.pages) == (0, [], 1)

    async def test_one_page(self, client: ApiClient, admin: SandboxAdmin) -> None:
        """Fewer items than a page are listed on page 1 with the right total."""
        added = await admin.generate_items(7, seed=1)
        page = await client.pending_page(1, 50)
        assert page.total == 7
        assert [dict(i.raw) for i in page.items] == added

    async def test_many_pages(self, server: SandboxServer, admin: SandboxAdmin) -> None:
        """Items over several pages are all read once, in id order, with the pages counted."""
        added = await admin.generate_items(23, seed=2)
        async with make_client(server.url, page_size=5) as api:
            snapshot = await api.pending()
        assert snapshot.pages == 5
        assert [i.id for i in snapshot.items] == [i["id"] for i in added]

    async def test_page_past_the_end_is_empty(self, client: ApiClient,
                                              admin: SandboxAdmin) -> None:
        """A page after the last one is an empty list with the total still given."""
        await admin.generate_items(3, seed=3)
        page = await client.pending_page(2, 3)
        assert (page.total, page.items) == (3, [])

    async def test_decided_items_leave_the_list(self, client: ApiClient, admin: SandboxAdmin,
                                                signer: Shard) -> None:
        """An approved item is no longer listed and the total drops."""
        first, _second = await admin.generate_items(2, seed=4)
        fields, data = approval(signer, first)
        await client.approve(fields, data)
        page = await client.pending_page(1, 10)
        assert page.total == 1
        assert [i.id for i in page.items] == [_second["id"]]

    async def test_number_literal_amount_is_kept_exactly(self, client: ApiClient,
                                                         admin: SandboxAdmin,
                                                         signer: Shard) -> None:
        """An amount added as the number literal 4.10 is listed as 4.10 and approvable."""
        item = await admin.add_item({**ITEM, "amount": JsonNumber("4.10")})
        (listed,) = (await client.pending_page(1, 10)).items
        assert isinstance(listed.raw["amount"], JsonNumber)
        assert listed.amount_text == "4.10"
        fields, data = approval(signer, item)
        await client.approve(fields, data)

    @pytest.mark.parametrize(("page_num", "page_size"), [(0, 10), (1, 0), (1, 1001)])
    async def test_bad_paging_is_4002(self, client: ApiClient, page_num: int,
                                      page_size: int) -> None:
        """pageNum below 1 and pageSize outside 1..1000 are refused with 4002."""
        with pytest.raises(ApiResponseError) as caught:
            await client.pending_page(page_num, page_size)
        assert caught.value.code == 4002


class TestApprove:
    async def test_approve_moves_the_item_and_is_recorded(
            self, client: ApiClient, admin: SandboxAdmin, signer: Shard) -> None:
        """A valid approve decides the item and is recorded as verified with code 200."""
        item = await admin.add_item(ITEM)
        fields, data = approval(signer, item)
        await client.approve(fields, data)
        (stored,) = await admin.items()
        (decision,) = await admin.decisions()
        assert stored["status"] == "approved"
        assert (decision["id"], decision["verified"], decision["code"]) == (item["id"], True, 200)
        assert decision["body"]["data"] == data

    async def test_reject_moves_the_item_to_rejected(
            self, client: ApiClient, admin: SandboxAdmin, signer: Shard) -> None:
        """status 2 rejects the item."""
        item = await admin.add_item(ITEM)
        fields, data = approval(signer, item, status=2)
        await client.approve(fields, data)
        assert (await admin.items("rejected"))[0]["item"]["id"] == item["id"]

    async def test_forged_data_is_4221(self, client: ApiClient, admin: SandboxAdmin,
                                       signer: Shard, shard_factory: Any) -> None:
        """data signed by another key is refused with 4221 and recorded as unverified."""
        item = await admin.add_item(ITEM)
        other = shard_factory("other.pfx", bits=2048)
        fields, data = approval(load_shard(other.path, other.password), item)
        with pytest.raises(ApiResponseError) as caught:
            await client.approve(fields, data)
        assert caught.value.code == 4221
        (decision,) = await admin.decisions()
        assert (decision["verified"], decision["code"]) == (False, 4221)
        assert (await admin.items("pending"))[0]["item"]["id"] == item["id"]

    async def test_data_for_other_status_is_4221(self, client: ApiClient,
                                                 admin: SandboxAdmin, signer: Shard) -> None:
        """data signed for a rejection does not approve (the status is signed)."""
        item = await admin.add_item(ITEM)
        fields, data = approval(signer, item, status=2)
        fields["status"] = 1
        with pytest.raises(ApiResponseError) as caught:
            await client.approve(fields, data)
        assert caught.value.code == 4221

    @pytest.mark.parametrize(("field", "value"), [
        ("from", "TFMQrPdFWuPzFRXb42sxB22ABCVL6xSopV"),
        ("to", "TGGh3cGp9P21Ebvg9JitjHoeJaKqrg3bRg"),
        ("value", "4.1"),
        ("chainId", "56"),
    ])
    async def test_field_differing_from_item_is_4222(
            self, client: ApiClient, admin: SandboxAdmin, signer: Shard, field: str,
            value: str) -> None:
        """A correctly signed approve whose field differs from the stored item is 4222."""
        item = await admin.add_item(ITEM)
        fields, _ = approval(signer, item)
        fields[field] = value
        _, data = approval(signer, {"id": fields["id"], "fromAddress": fields["from"],
                                    "toAddress": fields["to"], "amount": fields["value"],
                                    "chainId": fields["chainId"]})
        with pytest.raises(ApiResponseError) as caught:
            await client.approve(fields, data)
        assert caught.value.code == 4222
        assert field in caught.value.api_message
        (decision,) = await admin.decisions()
        assert (decision["verified"], decision["code"]) == (True, 4222)

    async def test_second_decision_is_already_processed(
            self, client: ApiClient, admin: SandboxAdmin, signer: Shard) -> None:
        """Approving a decided id again raises AlreadyProcessedError (code 4091)."""
        item = await admin.add_item(ITEM)
        fields, data = approval(signer, item)
        await client.approve(fields, data)
        rejection, rejection_data = approval(signer, item, status=2)
        with pytest.raises(AlreadyProcessedError) as caught:
            await client.approve(rejection, rejection_data)
        assert caught.value.code == 4091
        assert (await admin.items())[0]["status"] == "approved"

    async def test_unknown_id_is_4041(self, client: ApiClient, signer: Shard) -> None:
        """A correctly signed approve for an id that does not exist is 4041."""
        fields, data = approval(signer, {**ITEM, "id": 999})
        with pytest.raises(ApiResponseError) as caught:
            await client.approve(fields, data)
        assert caught.value.code == 4041

    async def test_missing_field_is_4002(self, client: ApiClient, admin: SandboxAdmin,
                                         signer: Shard) -> None:
        """An approve without ``to`` is 4002 naming it, recorded with no verification."""
        item = await admin.add_item(ITEM)
        fields, data = approval(signer, item)
        del fields["to"]
        with pytest.raises(ApiResponseError) as caught:
            await client.approve(fields, data)
        assert (caught.value.code, caught.value.api_message) == (4002, "missing parameter to")
        assert (await admin.decisions())[0]["verified"] is None

    async def test_rsa_sha256_merchant(self, shard: ThrowawayShard, merchant: Merchant) -> None:
        """A merchant registered with rsa-sha256 has its data verified with that scheme."""
        from dataclasses import replace
        sha = replace(merchant, sign_scheme="rsa-sha256")
        signer = load_shard(shard.path, shard.password, scheme="rsa-sha256")
        async with SandboxServer(merchants=[sha]) as server, \
                SandboxAdmin(server.url) as admin, make_client(server.url) as api:
            item = await admin.add_item(ITEM)
            fields, data = approval(signer, item)
            await api.approve(fields, data)
            java = load_shard(shard.path, shard.password)  # java-rsa data must not pass
            item2 = await admin.add_item(ITEM)
            fields2, data2 = approval(java, item2)
            with pytest.raises(ApiResponseError) as caught:
                await api.approve(fields2, data2)
        assert caught.value.code == 4221

    async def test_no_certificate_is_4221(self, signer: Shard) -> None:
        """Without a registered certificate every approve is 4221 saying so."""
        bare = Merchant(MERCHANT_NO, API_KEY, API_SECRET)
        async with SandboxServer(merchants=[bare]) as server, \
                SandboxAdmin(server.url) as admin, make_client(server.url) as api:
            item = await admin.add_item(ITEM)
            fields, data = approval(signer, item)
            with pytest.raises(ApiResponseError) as caught:
                await api.approve(fields, data)
        assert caught.value.code == 4221
        assert "no certificate" in caught.value.api_message


class TestCollect:
    @pytest.mark.parametrize("is_main", [1, 0])
    async def test_collect_is_verified_and_recorded(
            self, client: ApiClient, admin: SandboxAdmin, signer: Shard, is_main: int) -> None:
        """A collect signed over {"isMain":n} succeeds and is recorded as verified."""
        await client.collect(is_main, signer.sign(collect_sign_object(is_main)))
        (record,) = await admin.collections()
        assert (record["isMain"], record["verified"], record["code"]) == (is_main, True, 200)

    async def test_bad_data_is_4221(self, client: ApiClient, admin: SandboxAdmin,
                                    signer: Shard) -> None:
        """data signed for the other isMain is refused with 4221 and recorded."""
        with pytest.raises(ApiResponseError) as caught:
            await client.collect(1, signer.sign(collect_sign_object(0)))
        assert caught.value.code == 4221
        (record,) = await admin.collections()
        assert (record["verified"], record["code"]) == (False, 4221)

    async def test_garbage_data_is_4221(self, client: ApiClient) -> None:
        """data that is not even base64 is 4221, not a server error."""
        with pytest.raises(ApiResponseError) as caught:
            await client.collect(1, "not base64 at all!")
        assert caught.value.code == 4221

    async def test_is_main_outside_0_1_is_4002(self, client: ApiClient, signer: Shard) -> None:
        """isMain 2 is refused with 4002."""
        with pytest.raises(ApiResponseError) as caught:
            await client.collect(2, signer.sign(collect_sign_object(1)))
        assert caught.value.code == 4002


class TestState:
    def test_memory_state_is_default(self) -> None:
        """A SandboxServer without a state keeps it in memory."""
        server = SandboxServer()
        assert isinstance(server.state, SqliteState)
        assert server.state.path is None
