"""Authentication of the sandbox's API: each failure has its own code."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

from cosigner.api.auth import SignAuth, compute_sign, timestamp_ms
from cosigner.api.client import ApiClient
from cosigner.errors import ApiResponseError
from cosigner.models import loads_exact
from cosigner.sandbox import Merchant, SandboxServer
from tests.sandbox.conftest import API_KEY, API_SECRET, MERCHANT_NO, make_client

RATE_BODY = {"cryptoCurrency": "USDT", "legalCurrency": "CNY"}
RATE = "/api/otc/rate"


def signed_headers(body: dict[str, Any], *, secret: str = API_SECRET,
                   **overrides: str) -> dict[str, str]:
    """The public headers and a correct Sign for ``body``, then ``overrides`` applied."""
    headers = {"Nonce": "abc12345", "TimeStamp": str(timestamp_ms()),
               "MerchantNo": MERCHANT_NO, "SignType": "1", "Lang": "en", "ApiKey": API_KEY}
    headers.update({k: v for k, v in overrides.items() if k != "Sign"})
    headers["Sign"] = compute_sign({**body, **headers}, secret)
    if "Sign" in overrides:
        headers["Sign"] = overrides["Sign"]
    return headers


async def post(url: str, body: dict[str, Any], headers: dict[str, str],
               path: str = RATE) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 200
    answer: dict[str, Any] = loads_exact(response.content)
    return answer


class TestHeaders:
    @pytest.mark.parametrize("name", ["Nonce", "TimeStamp", "MerchantNo", "SignType", "Lang",
                                      "ApiKey", "Sign"])
    async def test_missing_header_is_4001_naming_it(self, server: SandboxServer,
                                                    name: str) -> None:
        """Each of the six public headers and Sign is required: 4001 names the missing one."""
        headers = signed_headers(RATE_BODY)
        del headers[name]
        answer = await post(server.url, RATE_BODY, headers)
        assert answer == {"code": 4001, "message": f"missing public header {name}",
                          "data": None}

    async def test_sign_type_other_than_md5_is_4002(self, server: SandboxServer) -> None:
        """SignType 2 (HASH) is not supported: 4002 naming SignType."""
        answer = await post(server.url, RATE_BODY, signed_headers(RATE_BODY, SignType="2"))
        assert answer["code"] == 4002
        assert "SignType" in answer["message"]

    async def test_body_that_is_not_an_object_is_4002(self, server: SandboxServer) -> None:
        """A JSON array body is refused with 4002."""
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post(RATE, content=b"[1]",
                                       headers=signed_headers({}))
        assert response.json()["code"] == 4002

    async def test_success_envelope(self, server: SandboxServer) -> None:
        """A correctly signed request gets code 200, message Success and the data."""
        answer = await post(server.url, RATE_BODY, signed_headers(RATE_BODY))
        assert answer["code"] == 200
        assert answer["message"] == "Success"
        assert answer["data"] == {"buyRate": "6.47", "sellRate": "6.9"}


class TestCredentials:
    async def test_unknown_api_key_is_4011(self, server: SandboxServer) -> None:
        """An ApiKey the sandbox does not know is 4011."""
        async with ApiClient(server.url, MERCHANT_NO, "ak-unknown", API_SECRET, retries=1) as api:
            with pytest.raises(ApiResponseError) as caught:
                await api.rate("USDT", "CNY")
        assert caught.value.code == 4011

    async def test_other_merchant_no_is_4012(self, server: SandboxServer) -> None:
        """A MerchantNo that is not the ApiKey's merchant is 4012."""
        answer = await post(server.url, RATE_BODY,
                            signed_headers(RATE_BODY, MerchantNo="M-SOMEONE-ELSE"))
        assert answer["code"] == 4012

    async def test_wrong_secret_is_4013(self, server: SandboxServer) -> None:
        """A Sign made with another secret is 4013."""
        async with make_client(server.url, secret="not-the-secret") as api:
            with pytest.raises(ApiResponseError) as caught:
                await api.rate("USDT", "CNY")
        assert caught.value.code == 4013

    async def test_tampered_body_is_4013(self, server: SandboxServer) -> None:
        """A body changed after signing no longer matches its Sign."""
        headers = signed_headers(RATE_BODY)
        answer = await post(server.url, {**RATE_BODY, "legalCurrency": "USD"}, headers)
        assert answer["code"] == 4013

    async def test_ascii_sort_merchant(self, merchant: Merchant) -> None:
        """A merchant registered with ascii sort accepts ascii Signs and refuses casefold ones."""
        ascii_merchant = replace(merchant, sign_sort="ascii")
        async with SandboxServer(merchants=[ascii_merchant]) as server:
            async with make_client(server.url, sort="ascii") as api:
                assert (await api.rate("USDT", "CNY")).buy_rate_text == "6.47"
            async with make_client(server.url) as api:
                with pytest.raises(ApiResponseError) as caught:
                    await api.rate("USDT", "CNY")
        assert caught.value.code == 4013


class TestReplay:
    @pytest.mark.parametrize("skew_ms", [-301_000, 301_000])
    async def test_timestamp_outside_five_minutes_is_4014(self, server: SandboxServer,
                                                          skew_ms: int) -> None:
        """A TimeStamp more than 5 minutes off (either way) is 4014."""
        auth = SignAuth(MERCHANT_NO, API_KEY, API_SECRET,
                        clock=lambda: timestamp_ms() + skew_ms)
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as http:
            answer = (await http.post(RATE, json=RATE_BODY)).json()
        assert answer["code"] == 4014

    async def test_timestamp_inside_window_is_accepted(self, server: SandboxServer) -> None:
        """A TimeStamp 4 minutes off is still accepted."""
        auth = SignAuth(MERCHANT_NO, API_KEY, API_SECRET,
                        clock=lambda: timestamp_ms() - 240_000)
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as http:
            assert (await http.post(RATE, json=RATE_BODY)).json()["code"] == 200

    async def test_reused_nonce_is_4015(self, server: SandboxServer) -> None:
        """The same Nonce twice within the window: the second request is 4015."""
        auth = SignAuth(MERCHANT_NO, API_KEY, API_SECRET, nonce=lambda: "SameNonce1")
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as http:
            first = (await http.post(RATE, json=RATE_BODY)).json()
            second = (await http.post(RATE, json=RATE_BODY)).json()
        assert (first["code"], second["code"]) == (200, 4015)

    async def test_refused_request_does_not_use_its_nonce(self, server: SandboxServer) -> None:
        """A request refused for a bad Sign leaves its Nonce usable."""
        bad = await post(server.url, RATE_BODY,
                         signed_headers(RATE_BODY, Nonce="Reusable1", Sign="0" * 32))
        good = await post(server.url, RATE_BODY, signed_headers(RATE_BODY, Nonce="Reusable1"))
        assert (bad["code"], good["code"]) == (4013, 200)


class TestWhitelist:
    async def test_address_outside_whitelist_is_4016(self, merchant: Merchant) -> None:
        """An ApiKey whitelisting only 10.0.0.0/8 refuses 127.0.0.1 with 4016."""
        fenced = replace(merchant, ip_whitelist=("10.0.0.0/8",))
        async with SandboxServer(merchants=[fenced]) as server, make_client(server.url) as api:
            with pytest.raises(ApiResponseError) as caught:
                await api.rate("USDT", "CNY")
        assert caught.value.code == 4016

    async def test_whitelisted_address_is_served(self, merchant: Merchant) -> None:
        """An ApiKey whitelisting 127.0.0.1 serves the loopback caller."""
        fenced = replace(merchant, ip_whitelist=("192.0.2.7", "127.0.0.1"))
        async with SandboxServer(merchants=[fenced]) as server, make_client(server.url) as api:
            assert (await api.rate("USDT", "CNY")).sell_rate_text == "6.9"
