"""The API client against a real HTTP server on 127.0.0.1 (``tests/api/scripted.py``).

Signing is checked by an independent implementation of DESIGN section 1
(``tests/api/sign_oracle.py``) over the headers and raw bytes the server received.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from cosigner.api.client import ENDPOINTS, ORDER_REQUIRED, ApiClient, error_kind
from cosigner.errors import (
    AlreadyProcessedError,
    ApiConnectError,
    ApiError,
    ApiHTTPError,
    ApiProtocolError,
    ApiResponseError,
    ApiTimeoutError,
    ApiTransportError,
    ConfigError,
)
from cosigner.models import JsonNumber, loads_exact
from tests.api.scripted import (
    Answer,
    Recorded,
    RecordingObserver,
    RefusingTransport,
    ScriptedServer,
    fail,
    ok,
)
from tests.api.sign_oracle import HEX32, PUBLIC, accepts, oracle_sign, sign_header, signed_string

MERCHANT = "mer1c92b0319ef5b794"
API_KEY = "ak-test-0001"
SECRET = "sk-test-secret-0001"

RATE = ENDPOINTS["rate"]
CREATE = ENDPOINTS["create"]
PENDING = ENDPOINTS["pending"]
APPROVE = ENDPOINTS["approve"]
COLLECT = ENDPOINTS["collect"]

RATE_DATA = {"buyRate": "6.47", "sellRate": "6.9"}
APPROVE_FIELDS: dict[str, Any] = {
    "id": 1, "from": "TGGh3cGp9P21Ebvg9JitjHoeJaKqrg3bRg",
    "to": "TFMQrPdFWuPzFRXb42sxB22ABCVL6xSopV", "value": "4.10", "chainId": "56", "status": 1,
}
ORDER: dict[str, Any] = {
    "userName": "Chen", "areaCode": "+86", "phone": "18848820305",
    "syncUrl": "https://example.com", "asyncUrl": "https://example.com",
    "cryptoAmount": "10", "cryptoCurrency": "USDT", "legalCurrency": "CNY",
    "idCardType": 1, "idCard": "412627288918989891", "kyc": 2,
    "merchantOrderNo": "1231222112d8", "orderType": 1, "payWay": 1, "h5": False,
}
CREATED = {"url": "https://sandbox.1bitpay.io/otc.html?o=335793449653514240",
           "isNew": True, "orderNo": "335793449653514240"}

FAST = {"timeout": 0.4}  # for the tests that wait for a client timeout (kept above load jitter)
MakeClient = Callable[..., ApiClient]
_TLS = ssl.create_default_context()


@pytest.fixture
async def make_client(api_server: ScriptedServer) -> AsyncIterator[MakeClient]:
    """Build clients for the scripted server (tiny backoff), closed after the test."""
    made: list[ApiClient] = []

    def make(**kwargs: Any) -> ApiClient:
        kwargs.setdefault("backoff", (0.001, 0.01))
        kwargs.setdefault("timeout", 5.0)
        # httpx's own default transport, but with one TLS context for the module:
        # building a fresh one per client costs ~30 ms, and these tests speak plain HTTP.
        kwargs.setdefault("transport", httpx.AsyncHTTPTransport(verify=_TLS))
        base_url = kwargs.pop("base_url", api_server.url)
        secret = kwargs.pop("secret", SECRET)
        client = ApiClient(base_url, MERCHANT, API_KEY, secret, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


def item(n: int, amount: str = "1.5") -> dict[str, Any]:
    """A well-formed pending item with id ``n``."""
    return {"id": n, "fromAddress": f"0xfrom{n}", "toAddress": f"0xto{n}",
            "amount": amount, "chainId": "56"}


def pager(items: list[Any], total: int | None = None) -> Callable[[Recorded], Answer]:
    """Serve ``items`` page by page, as the pageNum/pageSize of each request ask."""
    def answer(request: Recorded) -> Answer:
        query = request.json()
        start = (query["pageNum"] - 1) * query["pageSize"]
        return ok({"total": len(items) if total is None else total,
                   "list": items[start:start + query["pageSize"]]})
    return answer


async def call(client: ApiClient, endpoint: str) -> Any:
    """Call ``endpoint`` with typical arguments."""
    if endpoint == "rate":
        return await client.rate("USDT", "CNY")
    if endpoint == "create":
        return await client.create_order(ORDER)
    if endpoint == "pending":
        return await client.pending()
    if endpoint == "approve":
        return await client.approve(APPROVE_FIELDS, "c2lnbmF0dXJl")
    if endpoint == "collect":
        return await client.collect(1, "c2lnbmF0dXJl")
    raise AssertionError(endpoint)


def script_success(server: ScriptedServer) -> None:
    """A success answer on every endpoint."""
    server.script(RATE, ok(RATE_DATA))
    server.script(CREATE, ok(CREATED))
    server.script(PENDING, ok({"total": 1, "list": [item(1)]}))
    server.script(APPROVE, ok())
    server.script(COLLECT, ok())


ALL_ENDPOINTS = pytest.mark.parametrize("endpoint", list(ENDPOINTS))
WRITES = pytest.mark.parametrize("endpoint", ["approve", "collect", "create"])
READS = pytest.mark.parametrize("endpoint", ["rate", "pending"])


class TestOracle:
    def test_reproduces_the_api_doc_worked_example(self) -> None:
        """The test's own implementation gives the API doc's vector, so it can judge the client."""
        headers = {"TimeStamp": "1566781991111", "Nonce": "dnasja1N",
                   "MerchantNo": "meraojiasdoa123", "Lang": "en", "SignType": "1",
                   "ApiKey": "asdhuasdaosd"}
        body = json.dumps({"orderNo": "Or12898771811", "name": "John Li"}).encode()
        assert signed_string(headers, body) == (
            "ApiKey=asdhuasdaosd&Lang=en&MerchantNo=meraojiasdoa123&name=John Li"
            "&Nonce=dnasja1N&orderNo=Or12898771811&SignType=1&TimeStamp=1566781991111")
        assert oracle_sign(headers, body, "merasdasd") == "d826a31317bb52a1832cf023bc7b3a07"


class TestSignedRequests:
    @ALL_ENDPOINTS
    async def test_every_request_carries_the_public_headers(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str) -> None:
        """Each endpoint's request has the six public headers with the documented shapes."""
        script_success(api_server)
        await call(make_client(), endpoint)
        (request,) = api_server.requests
        assert request.path == ENDPOINTS[endpoint]
        assert request.method == "POST"
        headers = request.headers
        assert re.fullmatch(r"[A-Za-z0-9]{8}", headers["nonce"])
        assert re.fullmatch(r"\d{13}", headers["timestamp"])
        assert abs(int(headers["timestamp"]) - time.time() * 1000) < 60_000
        assert headers["merchantno"] == MERCHANT
        assert headers["signtype"] == "1"
        assert headers["lang"] == "en"
        assert headers["apikey"] == API_KEY
        assert HEX32.fullmatch(headers["sign"])
        assert headers["content-type"] == "application/json"

    @ALL_ENDPOINTS
    async def test_independent_implementation_accepts_the_sign(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str) -> None:
        """The oracle, fed only the received headers and body bytes, computes the same Sign."""
        script_success(api_server)
        await call(make_client(), endpoint)
        (request,) = api_server.requests
        assert accepts(request.headers, request.body, SECRET)

    async def test_signed_parameters_are_headers_and_body_fields(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """The signed string is the public headers merged with the body's top-level fields."""
        script_success(api_server)
        await make_client().rate("USDT", "CNY")
        (request,) = api_server.requests
        h = request.headers
        assert signed_string(h, request.body) == (
            f"ApiKey={API_KEY}&cryptoCurrency=USDT&Lang=en&legalCurrency=CNY"
            f"&MerchantNo={MERCHANT}&Nonce={h['nonce']}&SignType=1&TimeStamp={h['timestamp']}")

    async def test_wrong_secret_changes_the_sign(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A client holding another secret produces a Sign the right secret does not accept."""
        script_success(api_server)
        await make_client().rate("USDT", "CNY")
        await make_client(secret=SECRET + "x").rate("USDT", "CNY")
        good, bad = api_server.requests
        assert accepts(good.headers, good.body, SECRET)
        assert not accepts(good.headers, good.body, SECRET + "x")
        assert not accepts(bad.headers, bad.body, SECRET)
        assert accepts(bad.headers, bad.body, SECRET + "x")

    @pytest.mark.parametrize(("old", "new"), [(b'"USDT"', b'"USDU"'), (b'"CNY"', b'"CNZ"'),
                                              (b'"cryptoCurrency"', b'"cryptoCurrencz"')])
    async def test_changed_body_byte_changes_the_sign(
            self, api_server: ScriptedServer, make_client: MakeClient, old: bytes,
            new: bytes) -> None:
        """Changing one byte of the sent body makes the received Sign wrong for it."""
        script_success(api_server)
        await make_client().rate("USDT", "CNY")
        (request,) = api_server.requests
        assert old in request.body
        tampered = request.body.replace(old, new)
        assert len(tampered) == len(request.body)
        assert sign_header(request.headers) != oracle_sign(request.headers, tampered, SECRET)

    async def test_changed_amount_digit_changes_the_sign(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """The approve Sign covers the value: 4.10 and 4.11 sign differently."""
        script_success(api_server)
        await make_client().approve(APPROVE_FIELDS, "c2ln")
        (request,) = api_server.requests
        tampered = request.body.replace(b'"4.10"', b'"4.11"')
        assert tampered != request.body
        assert sign_header(request.headers) != oracle_sign(request.headers, tampered, SECRET)

    async def test_body_parameter_order_does_not_change_the_sign(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """The same fields given in another order sign alike (and both are accepted)."""
        script_success(api_server)
        client = make_client()
        await client.approve(APPROVE_FIELDS, "c2ln")
        await client.approve(dict(reversed(APPROVE_FIELDS.items())), "c2ln")
        first, second = api_server.requests
        assert first.body != second.body
        assert first.json() == second.json()
        assert accepts(first.headers, first.body, SECRET)
        assert accepts(second.headers, second.body, SECRET)
        reordered = json.dumps(dict(reversed(first.json().items())),
                               separators=(",", ":")).encode()
        assert reordered != first.body
        assert oracle_sign(first.headers, reordered, SECRET) == sign_header(first.headers)

    async def test_ascii_sort_verifies_with_the_ascii_oracle(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``sort="ascii"`` signs in plain byte order, which the casefold oracle rejects."""
        script_success(api_server)
        await make_client(sort="ascii").rate("USDT", "CNY")
        await make_client().rate("USDT", "CNY")
        ascii_request, casefold_request = api_server.requests
        assert accepts(ascii_request.headers, ascii_request.body, SECRET, "ascii")
        assert not accepts(ascii_request.headers, ascii_request.body, SECRET, "casefold")
        assert not accepts(casefold_request.headers, casefold_request.body, SECRET, "ascii")
        assert signed_string(ascii_request.headers, ascii_request.body, "ascii").startswith(
            "ApiKey=ak-test-0001&Lang=en&MerchantNo=")

    async def test_lang_header_follows_the_setting(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``lang="zh"`` is sent (and signed) as the Lang header."""
        script_success(api_server)
        await make_client(lang="zh").rate("USDT", "CNY")
        (request,) = api_server.requests
        assert request.headers["lang"] == "zh"
        assert accepts(request.headers, request.body, SECRET)

    async def test_value_text_rules(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Booleans, integers, number literals and Decimals sign by DESIGN's text rules;
        None and "" are dropped."""
        script_success(api_server)
        order = {**ORDER, "syncUrl": "", "bankBranch": None,
                 "cryptoAmount": JsonNumber("1e-7"), "h5": True}
        await make_client().create_order(order)
        (request,) = api_server.requests
        assert b'"cryptoAmount":1e-7' in request.body
        assert b'"syncUrl":""' in request.body
        assert accepts(request.headers, request.body, SECRET)
        text = signed_string(request.headers, request.body)
        assert "cryptoAmount=0.0000001&" in text
        assert "&h5=true&" in text
        assert "idCardType=1&" in text
        assert "&syncUrl=" not in text
        assert "bankBranch" not in text

    async def test_decimal_fields_are_sent_in_plain_notation(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A Decimal amount goes out as plain text (never an exponent) and is signed as sent."""
        script_success(api_server)
        await make_client().approve({**APPROVE_FIELDS, "value": Decimal("1E-7")}, "c2ln")
        (request,) = api_server.requests
        assert request.json()["value"] == "0.0000001"
        assert accepts(request.headers, request.body, SECRET)

    async def test_nonces_differ_per_request(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Twenty requests carry twenty different nonces."""
        script_success(api_server)
        client = make_client()
        for _ in range(20):
            await client.rate("USDT", "CNY")
        nonces = [r.headers["nonce"] for r in api_server.requests]
        assert len(nonces) == 20
        assert len(set(nonces)) == 20

    async def test_nonces_differ_per_retry(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Every retry is signed afresh with a new nonce, and each attempt verifies."""
        api_server.script(RATE, Answer(status=500), Answer(status=503), ok(RATE_DATA))
        await make_client(retries=3).rate("USDT", "CNY")
        attempts = api_server.requests
        assert len(attempts) == 3
        assert len({r.headers["nonce"] for r in attempts}) == 3
        assert all(accepts(r.headers, r.body, SECRET) for r in attempts)

    def test_repr_hides_the_secret(self) -> None:
        """Neither the client's repr nor its auth's repr shows the secret."""
        client = ApiClient("http://127.0.0.1:9", MERCHANT, API_KEY, SECRET)
        assert SECRET not in repr(client)
        assert SECRET not in repr(client._auth)


class TestEnvelope:
    async def test_code_200_succeeds(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``code: 200`` returns the data."""
        api_server.script(RATE, ok(RATE_DATA))
        rate = await make_client().rate("USDT", "CNY")
        assert rate.buy_rate == Decimal("6.47")

    async def test_other_code_keeps_code_and_message(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``code: 4013`` raises ApiResponseError carrying the code and the message."""
        api_server.script(RATE, fail(4013, "Sign error"))
        with pytest.raises(ApiResponseError) as caught:
            await make_client().rate("USDT", "CNY")
        assert type(caught.value) is ApiResponseError
        assert caught.value.code == 4013
        assert caught.value.api_message == "Sign error"
        assert caught.value.endpoint == "rate"
        assert "4013" in str(caught.value)
        assert "Sign error" in str(caught.value)

    async def test_already_processed_code_on_approve(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``code: 4091`` on approve raises AlreadyProcessedError, keeping the code."""
        api_server.script(APPROVE, fail(4091, "already processed"))
        with pytest.raises(AlreadyProcessedError) as caught:
            await make_client().approve(APPROVE_FIELDS, "c2ln")
        assert isinstance(caught.value, ApiResponseError)
        assert caught.value.code == 4091
        assert caught.value.api_message == "already processed"

    @pytest.mark.parametrize("code_text", ['"200"', "200.0", "2e2", "201", "0", "true",
                                           "null", "-200", '{"v":200}'])
    async def test_only_the_integer_200_is_success(
            self, api_server: ScriptedServer, make_client: MakeClient, code_text: str) -> None:
        """A string "200", 200.0, true, null or another code is not success."""
        body = '{"code":' + code_text + ',"message":"m","data":{"buyRate":"1","sellRate":"1"}}'
        api_server.script(RATE, Answer(body))
        with pytest.raises(ApiResponseError) as caught:
            await make_client().rate("USDT", "CNY")
        sent = loads_exact(code_text)
        # kept as sent; an object is kept as (masked) text
        assert caught.value.code == (str(sent) if isinstance(sent, dict) else sent)
        assert len(api_server.requests) == 1  # an answered code is not retried

    async def test_provider_text_is_masked_before_it_is_cut(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Regression: a non-2xx message was cut at 200 characters before masking, so a
        secret straddling the cut survived in part; a non-integer code was kept unmasked."""
        echo = "x " * 95 + SECRET  # the cut at 200 fell inside the secret
        api_server.script(RATE, Answer('{"code":5000,"message":"' + echo + '"}', status=503))
        api_server.script(RATE, Answer('{"code":5000,"message":"' + echo + '"}', status=503))
        api_server.script(RATE, Answer('{"code":5000,"message":"' + echo + '"}', status=503))
        with pytest.raises(ApiHTTPError) as caught:
            await make_client().rate("USDT", "CNY")
        assert SECRET[:6] not in str(caught.value)
        api_server.script(RATE, Answer('{"code":"sig ' + SECRET + '"}'))
        with pytest.raises(ApiResponseError) as response:
            await make_client().rate("USDT", "CNY")
        assert SECRET not in str(response.value.code)
        assert SECRET not in str(response.value)

    @pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b"{", b"[1, 2]",
                                      b'"code"', b"\xff\xfe", b"null"])
    async def test_non_json_or_non_object_body_is_a_protocol_error(
            self, api_server: ScriptedServer, make_client: MakeClient, body: bytes) -> None:
        """A 200 answer that is not a JSON object raises ApiProtocolError."""
        api_server.script(RATE, Answer(body, content_type="text/html"))
        with pytest.raises(ApiProtocolError):
            await make_client(retries=1).rate("USDT", "CNY")

    @pytest.mark.parametrize("status", [200, 500])
    async def test_absurdly_nested_body_stays_in_the_error_tree(
            self, api_server: ScriptedServer, make_client: MakeClient, status: int) -> None:
        """A body nested too deep for the JSON parser is a protocol or HTTP error, observed."""
        api_server.script(APPROVE, Answer(b"[" * 100_000, status=status))
        observer = RecordingObserver()
        expected = ApiProtocolError if status == 200 else ApiHTTPError
        with pytest.raises(expected):
            await make_client(observer=observer).approve(APPROVE_FIELDS, "c2ln")
        assert len(observer.calls) == 1

    async def test_missing_code_is_a_protocol_error(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """An object without ``code`` raises ApiProtocolError."""
        api_server.script(RATE, Answer({"message": "Success", "data": RATE_DATA}))
        with pytest.raises(ApiProtocolError, match="code"):
            await make_client(retries=1).rate("USDT", "CNY")

    @pytest.mark.parametrize("status", [500, 502, 503, 429, 404, 400, 301])
    async def test_http_status_errors_keep_the_status(
            self, api_server: ScriptedServer, make_client: MakeClient, status: int) -> None:
        """A non-2xx status raises ApiHTTPError with that status, even with a 200 envelope."""
        api_server.script(RATE, Answer({"code": 200, "message": "busy", "data": RATE_DATA},
                                       status=status))
        with pytest.raises(ApiHTTPError) as caught:
            await make_client(retries=1).rate("USDT", "CNY")
        assert caught.value.status == status
        assert str(status) in str(caught.value)
        assert "busy" in str(caught.value)

    async def test_http_error_keeps_the_envelope_code(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A 429 answer with an envelope keeps its code and message in the error."""
        api_server.script(RATE, fail(4290, "slow down", status=429))
        with pytest.raises(ApiHTTPError) as caught:
            await make_client(retries=1).rate("USDT", "CNY")
        assert caught.value.status == 429
        assert str(caught.value) == "rate: HTTP 429: API code 4290: slow down"

    async def test_http_error_with_non_json_body(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A 500 with an HTML body is still an ApiHTTPError, not a protocol error."""
        api_server.script(APPROVE, Answer(b"<html>oops</html>", status=500,
                                          content_type="text/html"))
        with pytest.raises(ApiHTTPError) as caught:
            await make_client().approve(APPROVE_FIELDS, "c2ln")
        assert caught.value.status == 500

    async def test_timeout(self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """An answer slower than the timeout raises ApiTimeoutError."""
        api_server.script(RATE, Answer(RATE_DATA, delay=10))
        with pytest.raises(ApiTimeoutError):
            await make_client(retries=1, **FAST).rate("USDT", "CNY")

    async def test_connection_refused(self, make_client: MakeClient,
                                      closed_port_url: str) -> None:
        """A closed port raises ApiConnectError (the request never left)."""
        with pytest.raises(ApiConnectError, match="could not connect"):
            await make_client(base_url=closed_port_url, retries=1).rate("USDT", "CNY")

    async def test_dropped_connection_mid_answer(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """An answer cut off mid-body raises ApiTransportError (neither connect nor timeout)."""
        api_server.script(RATE, Answer(drop=True))
        with pytest.raises(ApiTransportError) as caught:
            await make_client(retries=1).rate("USDT", "CNY")
        assert not isinstance(caught.value, ApiConnectError | ApiTimeoutError)

    @pytest.mark.parametrize(("exc", "kind"), [
        (AlreadyProcessedError("approve", 4091, "m"), "already_processed"),
        (ApiResponseError("rate", 4013, "m"), "api_code"),
        (ApiHTTPError("rate", 429), "rate_limited"),
        (ApiHTTPError("rate", 500), "http_status"),
        (ApiProtocolError("rate", "m"), "protocol"),
        (ApiConnectError("rate", "m"), "connect"),
        (ApiTimeoutError("rate", "m"), "timeout"),
        (ApiTransportError("rate", "m"), "transport"),
        (ApiError("rate", "m"), "other"),
        (ValueError("x"), "other"),
    ])
    def test_error_kind_labels(self, exc: BaseException, kind: str) -> None:
        """Each error maps to its bounded metric label, most specific first."""
        assert error_kind(exc) == kind


class TestRetries:
    @READS
    async def test_reads_retry_on_5xx_and_429(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str) -> None:
        """A read answered 500, 429, 503 is retried until it succeeds."""
        script_success(api_server)
        path = ENDPOINTS[endpoint]
        api_server.script(path, Answer(status=500), Answer(status=429), Answer(status=503),
                          ok({"total": 1, "list": [item(1)]}) if endpoint == "pending"
                          else ok(RATE_DATA))
        await call(make_client(retries=4), endpoint)
        assert len(api_server.requests_to(path)) == 4

    @READS
    async def test_reads_retry_on_timeout(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str) -> None:
        """A read that timed out is sent again."""
        path = ENDPOINTS[endpoint]
        good = ok({"total": 0, "list": []}) if endpoint == "pending" else ok(RATE_DATA)
        api_server.script(path, Answer(delay=10), good)
        await call(make_client(retries=3, **FAST), endpoint)
        assert len(api_server.requests_to(path)) == 2

    async def test_reads_retry_on_dropped_connection(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A read whose answer was cut off is sent again."""
        api_server.script(RATE, Answer(drop=True), ok(RATE_DATA))
        rate = await make_client().rate("USDT", "CNY")
        assert rate.sell_rate_text == "6.9"
        assert len(api_server.requests) == 2

    async def test_reads_give_up_after_the_retry_budget(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A read failing every time is tried ``retries`` times, then raises the last error."""
        api_server.script(RATE, Answer(status=502))
        with pytest.raises(ApiHTTPError) as caught:
            await make_client(retries=3).rate("USDT", "CNY")
        assert caught.value.status == 502
        assert len(api_server.requests) == 3

    async def test_reads_retry_on_connection_refused(
            self, make_client: MakeClient, closed_port_url: str) -> None:
        """A read to a closed port is tried ``retries`` times."""
        observer = RecordingObserver()
        client = make_client(base_url=closed_port_url, retries=3, observer=observer)
        with pytest.raises(ApiConnectError):
            await client.rate("USDT", "CNY")
        assert observer.kinds == [("rate", "connect")] * 3

    @pytest.mark.parametrize("answer", [fail(4013), fail("200"), Answer(status=404),
                                        Answer(status=400), Answer(status=401)])
    async def test_reads_are_not_retried_on_answered_refusals(
            self, api_server: ScriptedServer, make_client: MakeClient, answer: Answer) -> None:
        """An API code or a 4xx other than 429 is final: one request."""
        api_server.script(RATE, answer)
        with pytest.raises(ApiError):
            await make_client(retries=3).rate("USDT", "CNY")
        assert len(api_server.requests) == 1

    @WRITES
    @pytest.mark.parametrize("failure", [Answer(status=500), Answer(status=503),
                                         Answer(delay=10), Answer(drop=True)],
                             ids=["500", "503", "timeout", "dropped"])
    async def test_writes_are_not_retried_once_sent(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str,
            failure: Answer) -> None:
        """approve, collect and create reach the server exactly once after 5xx, timeout or a
        dropped answer."""
        script_success(api_server)
        path = ENDPOINTS[endpoint]
        api_server.script(path, failure, ok(CREATED))
        with pytest.raises(ApiError) as caught:
            await call(make_client(retries=5, **FAST), endpoint)
        assert not isinstance(caught.value, ApiConnectError)
        assert len(api_server.requests_to(path)) == 1

    @WRITES
    async def test_writes_are_retried_when_the_connection_was_refused(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str) -> None:
        """A write whose connection was refused is sent again; the server sees it once."""
        script_success(api_server)
        transport = RefusingTransport(refusals=2)
        await call(make_client(retries=3, transport=transport), endpoint)
        assert len(transport.attempts) == 3
        assert len(api_server.requests) == 1
        (request,) = api_server.requests
        assert request.path == ENDPOINTS[endpoint]
        assert accepts(request.headers, request.body, SECRET)
        assert len({a.headers["Nonce"] for a in transport.attempts}) == 3

    @WRITES
    async def test_writes_give_up_on_a_closed_port(
            self, make_client: MakeClient, closed_port_url: str, endpoint: str) -> None:
        """A write to a closed port is tried ``retries`` times, then raises ApiConnectError."""
        observer = RecordingObserver()
        client = make_client(base_url=closed_port_url, retries=3, observer=observer)
        with pytest.raises(ApiConnectError):
            await call(client, endpoint)
        assert observer.kinds == [(endpoint, "connect")] * 3


class TestPendingSnapshot:
    async def test_no_items(self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """An empty list is one request and an empty, complete snapshot."""
        api_server.script(PENDING, ok({"total": 0, "list": []}))
        snapshot = await make_client().pending()
        assert snapshot.items == []
        assert (snapshot.total, snapshot.pages, snapshot.truncated) == (0, 1, False)
        assert len(api_server.requests) == 1

    async def test_missing_list_is_empty(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``list`` absent with ``total: 0`` is an empty snapshot."""
        api_server.script(PENDING, ok({"total": 0}))
        snapshot = await make_client().pending()
        assert snapshot.items == []

    async def test_one_page(self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Fewer items than a page are read with one request."""
        api_server.script(PENDING, pager([item(n) for n in (1, 2, 3)]))
        snapshot = await make_client().pending()
        assert [i.id for i in snapshot.items] == [1, 2, 3]
        assert snapshot.pages == 1
        assert snapshot.ids == frozenset({1, 2, 3})
        (request,) = api_server.requests
        assert request.json() == {"pageNum": 1, "pageSize": 50}

    async def test_many_pages(self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """125 items with page size 50 are read as pages 1, 2 and 3 into one snapshot."""
        api_server.script(PENDING, pager([item(n) for n in range(1, 126)]))
        snapshot = await make_client(page_size=50).pending()
        assert [i.id for i in snapshot.items] == list(range(1, 126))
        assert (snapshot.total, snapshot.pages, snapshot.truncated) == (125, 3, False)
        assert [r.json() for r in api_server.requests] == [
            {"pageNum": 1, "pageSize": 50}, {"pageNum": 2, "pageSize": 50},
            {"pageNum": 3, "pageSize": 50}]
        assert all(accepts(r.headers, r.body, SECRET) for r in api_server.requests)

    async def test_page_size_is_sent(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """The configured page size is what each request asks for."""
        api_server.script(PENDING, pager([item(n) for n in range(1, 46)]))
        snapshot = await make_client(page_size=20).pending()
        assert len(snapshot.items) == 45
        assert [r.json() for r in api_server.requests] == [
            {"pageNum": n, "pageSize": 20} for n in (1, 2, 3)]

    async def test_duplicates_across_pages_are_dropped(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Items seen again on a later page (the list shifted) are counted, not repeated."""
        pages = {1: [item(n) for n in range(1, 51)], 2: [item(n) for n in range(45, 95)],
                 3: [item(n) for n in range(95, 101)]}
        api_server.script(PENDING, lambda r: ok({"total": 106,
                                                 "list": pages[r.json()["pageNum"]]}))
        snapshot = await make_client().pending()
        assert [i.id for i in snapshot.items] == list(range(1, 101))
        assert snapshot.duplicates == 6
        assert snapshot.pages == 3

    async def test_capped_at_max_pending(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """More items than ``max_pending`` give a truncated snapshot of exactly the cap."""
        api_server.script(PENDING, pager([item(n) for n in range(1, 126)]))
        snapshot = await make_client(max_pending=60).pending()
        assert [i.id for i in snapshot.items] == list(range(1, 61))
        assert snapshot.truncated is True
        assert snapshot.total == 125
        assert len(api_server.requests) == 2

    async def test_cap_equal_to_total_is_not_truncated(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Exactly ``max_pending`` items is a complete snapshot."""
        api_server.script(PENDING, pager([item(n) for n in range(1, 101)]))
        snapshot = await make_client(max_pending=100).pending()
        assert len(snapshot.items) == 100
        assert snapshot.truncated is False

    async def test_malformed_entries_are_counted(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """List entries that are not objects are counted as malformed, the rest kept."""
        api_server.script(PENDING, ok({"total": 6,
                                       "list": [item(1), 5, "x", None, [], item(2)]}))
        snapshot = await make_client().pending()
        assert [i.id for i in snapshot.items] == [1, 2]
        assert snapshot.malformed == 4

    async def test_a_page_of_only_malformed_entries_does_not_end_paging(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Paging goes on past a page whose entries are all malformed."""
        pages = {1: [item(1), item(2)], 2: ["x", 7], 3: [item(5)]}
        api_server.script(PENDING, lambda r: ok({"total": 5,
                                                 "list": pages[r.json()["pageNum"]]}))
        snapshot = await make_client(page_size=2).pending()
        assert [i.id for i in snapshot.items] == [1, 2, 5]
        assert snapshot.malformed == 2
        assert snapshot.pages == 3

    async def test_an_empty_page_ends_paging(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A page with no entries ends the snapshot even if ``total`` promised more."""
        pages = {1: [item(1), item(2)], 2: []}
        api_server.script(PENDING, lambda r: ok({"total": 6,
                                                 "list": pages[r.json()["pageNum"]]}))
        snapshot = await make_client(page_size=2).pending()
        assert [i.id for i in snapshot.items] == [1, 2]
        assert len(api_server.requests) == 2

    async def test_items_keep_their_raw_fields(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Items are kept unvalidated, with the fields the API sent."""
        entry = {**item(9), "chainId": 56, "extra": "kept"}
        api_server.script(PENDING, ok({"total": 1, "list": [entry, {"amount": "1"}]}))
        snapshot = await make_client().pending()
        first, second = snapshot.items
        assert first.raw == entry
        assert first.chain_id is None  # a number where a string belongs: validation says why
        assert second.id is None

    async def test_amounts_keep_their_exact_text(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """"4.10", a literal 4.10 and a literal 1e-7 keep their text; Decimal parses them."""
        body = ('{"code":200,"message":"Success","data":{"total":4,"list":['
                '{"id":1,"amount":"4.10"},{"id":2,"amount":4.10},{"id":3,"amount":1e-7},'
                '{"id":4,"amount":25}]}}')
        api_server.script(PENDING, Answer(body))
        snapshot = await make_client().pending()
        texts = [i.amount_text for i in snapshot.items]
        assert texts == ["4.10", "4.10", "1e-7", "25"]
        amounts = [i.amount for i in snapshot.items]
        assert amounts == [Decimal("4.10"), Decimal("4.10"), Decimal("1E-7"), Decimal(25)]
        assert str(amounts[1]) == "4.10"

    @pytest.mark.parametrize("total", ['"25"', "2.5", "25.0", "true", "null", "-1", "[]"])
    async def test_non_integer_total_is_a_protocol_error(
            self, api_server: ScriptedServer, make_client: MakeClient, total: str) -> None:
        """``total`` that is not a non-negative integer raises ApiProtocolError."""
        body = '{"code":200,"data":{"total":' + total + ',"list":[]}}'
        api_server.script(PENDING, Answer(body))
        with pytest.raises(ApiProtocolError, match="total"):
            await make_client(retries=1).pending()

    @pytest.mark.parametrize("data", [None, [], "x", {"total": 1, "list": {"id": 1}}])
    async def test_malformed_data_is_a_protocol_error(
            self, api_server: ScriptedServer, make_client: MakeClient, data: Any) -> None:
        """``data`` that is not an object with a list raises ApiProtocolError."""
        api_server.script(PENDING, Answer({"code": 200, "message": "ok", "data": data}))
        with pytest.raises(ApiProtocolError):
            await make_client(retries=1).pending()

    async def test_a_failing_later_page_fails_the_snapshot(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """No partial snapshot: a page that keeps failing raises."""
        pages = {1: ok({"total": 4, "list": [item(1), item(2)]}), 2: fail(5000, "boom")}
        api_server.script(PENDING, lambda r: pages[r.json()["pageNum"]])
        with pytest.raises(ApiResponseError):
            await make_client(page_size=2).pending()


class TestTypedAnswers:
    async def test_rate_decimals_keep_their_text(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Rates are Decimals with the exact text sent, strings or number literals."""
        api_server.script(RATE, Answer('{"code":200,"message":"Success",'
                                       '"data":{"buyRate":6.470,"sellRate":"6.9"}}'))
        rate = await make_client().rate("USDT", "CNY")
        assert (rate.crypto, rate.legal) == ("USDT", "CNY")
        assert rate.buy_rate == Decimal("6.47")
        assert rate.buy_rate_text == "6.470"
        assert rate.sell_rate == Decimal("6.9")
        assert rate.sell_rate_text == "6.9"
        assert (api_server.requests[0].json()
                == {"cryptoCurrency": "USDT", "legalCurrency": "CNY"})

    async def test_integer_rate(self, api_server: ScriptedServer,
                                make_client: MakeClient) -> None:
        """An integer rate is accepted with its text."""
        api_server.script(RATE, ok({"buyRate": 7, "sellRate": "7"}))
        rate = await make_client().rate("USDT", "CNY")
        assert (rate.buy_rate, rate.buy_rate_text) == (Decimal(7), "7")

    @pytest.mark.parametrize("value", ['"abc"', '"NaN"', '"Infinity"', "true", "null", '""',
                                      '"6_47"', '" 6.47"', '"0x10"', "[6]"])
    async def test_bad_rate_is_a_protocol_error(
            self, api_server: ScriptedServer, make_client: MakeClient, value: str) -> None:
        """A rate that is not a plain finite decimal raises ApiProtocolError naming it."""
        api_server.script(RATE, Answer('{"code":200,"data":{"buyRate":' + value
                                       + ',"sellRate":"6.9"}}'))
        with pytest.raises(ApiProtocolError, match="buyRate"):
            await make_client(retries=1).rate("USDT", "CNY")

    async def test_rate_without_data(self, api_server: ScriptedServer,
                                     make_client: MakeClient) -> None:
        """A success envelope without data raises ApiProtocolError."""
        api_server.script(RATE, ok())
        with pytest.raises(ApiProtocolError):
            await make_client(retries=1).rate("USDT", "CNY")

    async def test_created_order(self, api_server: ScriptedServer,
                                 make_client: MakeClient) -> None:
        """url, isNew and orderNo are parsed, and the order's fields are sent as given."""
        api_server.script(CREATE, ok(CREATED))
        created = await make_client().create_order(ORDER)
        assert created.url == CREATED["url"]
        assert created.is_new is True
        assert created.order_no == "335793449653514240"
        (request,) = api_server.requests
        assert request.json() == ORDER

    async def test_numeric_order_number_becomes_text(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A numeric orderNo keeps all its digits as text; isNew false is kept."""
        api_server.script(CREATE, Answer('{"code":200,"data":{"url":"u","isNew":false,'
                                         '"orderNo":335793449653514240}}'))
        created = await make_client().create_order(ORDER)
        assert created.order_no == "335793449653514240"
        assert created.is_new is False

    @pytest.mark.parametrize("data", [
        {"isNew": True, "orderNo": "1"}, {"url": "u", "isNew": "true", "orderNo": "1"},
        {"url": "u", "isNew": True}, {"url": "u", "isNew": True, "orderNo": None}, None,
    ])
    async def test_incomplete_created_order_is_a_protocol_error(
            self, api_server: ScriptedServer, make_client: MakeClient, data: Any) -> None:
        """A created order lacking url, a boolean isNew or orderNo raises ApiProtocolError."""
        api_server.script(CREATE, Answer({"code": 200, "message": "ok", "data": data}))
        with pytest.raises(ApiProtocolError):
            await make_client().create_order(ORDER)

    async def test_missing_required_fields_are_named(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """An order lacking required fields raises ConfigError naming each, and sends nothing."""
        order = {k: v for k, v in ORDER.items() if k not in ("userName", "kyc")}
        order["phone"] = ""
        with pytest.raises(ConfigError) as caught:
            await make_client().create_order(order)
        for name in ("userName", "phone", "kyc"):
            assert name in str(caught.value)
        assert "idCard," not in str(caught.value)
        assert api_server.requests == []

    def test_required_fields_are_those_of_the_api_doc(self) -> None:
        """ORDER_REQUIRED lists exactly the fields the API doc marks Y."""
        assert set(ORDER_REQUIRED) == {
            "userName", "areaCode", "phone", "cryptoAmount", "cryptoCurrency",
            "legalCurrency", "idCardType", "idCard", "kyc", "merchantOrderNo", "orderType",
            "payWay", "h5"}

    async def test_false_and_zero_are_not_missing(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``h5: false`` is a value, not a missing field."""
        api_server.script(CREATE, ok(CREATED))
        await make_client().create_order({**ORDER, "h5": False})
        assert len(api_server.requests) == 1

    @pytest.mark.parametrize("order_type", [2, "2"])
    async def test_sell_order_needs_bank_details(
            self, api_server: ScriptedServer, make_client: MakeClient,
            order_type: int | str) -> None:
        """A sell order without bank and bankAccount raises ConfigError naming both."""
        with pytest.raises(ConfigError) as caught:
            await make_client().create_order({**ORDER, "orderType": order_type})
        assert "bank" in str(caught.value)
        assert "bankAccount" in str(caught.value)
        assert api_server.requests == []

    async def test_sell_order_with_bank_details(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A sell order with bank details is sent."""
        api_server.script(CREATE, ok(CREATED))
        await make_client().create_order({**ORDER, "orderType": 2, "bank": "建设银行",
                                          "bankAccount": "6217229282829299111"})
        (request,) = api_server.requests
        assert request.json()["bank"] == "建设银行"
        assert accepts(request.headers, request.body, SECRET)

    async def test_approve_and_collect_bodies(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """approve sends the signed fields plus data; collect sends isMain and data."""
        script_success(api_server)
        client = make_client()
        await client.approve(APPROVE_FIELDS, "ZGF0YQ==")
        await client.collect(0, "ZGF0YQ==")
        approve, collect = api_server.requests
        assert approve.json() == {**APPROVE_FIELDS, "data": "ZGF0YQ=="}
        assert list(approve.json())[:6] == list(APPROVE_FIELDS)
        assert collect.json() == {"isMain": 0, "data": "ZGF0YQ=="}


class TestObserver:
    @ALL_ENDPOINTS
    async def test_called_once_per_exchange(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str) -> None:
        """A successful call is observed once with its endpoint, a duration and no error."""
        script_success(api_server)
        observer = RecordingObserver()
        await call(make_client(observer=observer), endpoint)
        assert observer.kinds == [(endpoint, None)]
        assert observer.calls[0][1] >= 0

    async def test_every_attempt_and_page_is_observed(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Retried attempts and every page are separate observations."""
        api_server.script(RATE, Answer(status=500), Answer(status=429), ok(RATE_DATA))
        api_server.script(PENDING, pager([item(n) for n in range(1, 6)]))
        observer = RecordingObserver()
        client = make_client(observer=observer, page_size=2, retries=3)
        await client.rate("USDT", "CNY")
        await client.pending()
        assert observer.kinds == [("rate", "http_status"), ("rate", "rate_limited"),
                                  ("rate", None), ("pending", None), ("pending", None),
                                  ("pending", None)]

    @pytest.mark.parametrize(("endpoint", "answer", "kind"), [
        ("rate", fail(4013), "api_code"),
        ("approve", fail(4091), "already_processed"),
        ("collect", Answer(b"nope"), "protocol"),
        ("approve", Answer(status=503), "http_status"),
        ("approve", Answer(delay=10), "timeout"),
        ("collect", Answer(drop=True), "transport"),
    ])
    async def test_error_kind_is_reported(
            self, api_server: ScriptedServer, make_client: MakeClient, endpoint: str,
            answer: Answer, kind: str) -> None:
        """A failed exchange is observed once with its endpoint and error kind."""
        api_server.script(ENDPOINTS[endpoint], answer)
        observer = RecordingObserver()
        client = make_client(observer=observer, retries=1,
                             timeout=FAST["timeout"] if answer.delay else 5.0)
        with pytest.raises(ApiError):
            await call(client, endpoint)
        assert observer.kinds == [(endpoint, kind)]

    async def test_connect_errors_are_reported(
            self, make_client: MakeClient, closed_port_url: str) -> None:
        """A refused connection is observed with kind ``connect``."""
        observer = RecordingObserver()
        with pytest.raises(ApiConnectError):
            await make_client(base_url=closed_port_url, observer=observer,
                              retries=1).collect(1, "x")
        assert observer.kinds == [("collect", "connect")]

    async def test_duration_comes_from_the_injected_clock(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """The observed seconds are measured with the clock the client was given."""
        script_success(api_server)
        ticks = iter([10.0, 12.5])
        observer = RecordingObserver()
        await make_client(observer=observer, clock=lambda: next(ticks)).collect(1, "x")
        assert observer.calls == [("collect", 2.5, None)]


def test_public_parameter_names() -> None:
    """The oracle and the client agree on the six public parameters."""
    from cosigner.api.auth import PUBLIC_HEADERS

    assert set(PUBLIC) == set(PUBLIC_HEADERS)


class TestHostileSnapshots:
    """Issue 10 defects 2-4 at the client: what the snapshot must not hide."""

    async def test_same_id_with_other_content_is_a_conflict(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """The same id listed again with other content is reported, not silently dropped."""
        api_server.script(PENDING, pager([item(1), item(2), item(1, amount="999")]))
        snapshot = await make_client().pending()
        assert snapshot.conflicts == frozenset({1})
        assert snapshot.duplicates == 1

    async def test_same_id_with_the_same_content_is_no_conflict(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """A plain repeat (paging shifted) is a duplicate, not a conflict."""
        api_server.script(PENDING, pager([item(1), item(1)]))
        snapshot = await make_client().pending()
        assert (snapshot.conflicts, snapshot.duplicates) == (frozenset(), 1)

    async def test_an_item_with_a_duplicate_key_is_kept_and_marked(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """``toAddress`` twice: the item is listed with its duplicate key named (the
        decision holds it), never resolved last-wins without a word."""
        body = ('{"code":200,"message":"Success","data":{"total":1,"list":[{"id":1,'
                '"fromAddress":"0xa","toAddress":"0xb","toAddress":"0xc","amount":"1",'
                '"chainId":"56"}]}}')
        api_server.script(PENDING, Answer(body))
        snapshot = await make_client().pending()
        (listed,) = snapshot.items
        assert listed.duplicate_keys == ("toAddress",)

    @pytest.mark.parametrize("body", [
        '{"code":200,"code":4001,"message":"Success","data":{"total":0,"list":[]}}',
        '{"code":200,"message":"Success","data":{"total":0,"total":1,"list":[]}}',
    ], ids=["code-twice", "total-twice"])
    async def test_a_duplicate_key_in_the_envelope_is_a_protocol_error(
            self, api_server: ScriptedServer, make_client: MakeClient, body: str) -> None:
        """A repeated envelope key is a protocol error naming the key."""
        api_server.script(PENDING, *[Answer(body)] * 3)
        with pytest.raises(ApiProtocolError, match="repeats the key"):
            await make_client().pending()

    async def test_huge_and_negative_ids_are_listed(
            self, api_server: ScriptedServer, make_client: MakeClient) -> None:
        """Ids of 2**63 and more, 0 and negative ones reach the decision (which holds them)
        instead of failing the snapshot."""
        api_server.script(PENDING, pager([item(2**63), item(2**70), item(0), item(-5), item(1)]))
        snapshot = await make_client().pending()
        assert [i.id for i in snapshot.items] == [2**63, 2**70, 0, -5, 1]
