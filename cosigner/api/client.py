"""The 1BitPay API client: signed requests, the envelope, retries, typed answers.

Network I/O sits behind httpx's transport interface: tests pass a real local
server's URL or ``transport=``.  Foreign exceptions are translated once, here,
into the tree of :mod:`cosigner.errors`:

* ``code == 200`` in the envelope is the only success;
* any other code → :class:`ApiResponseError` (:class:`AlreadyProcessedError` for
  the "already processed" codes), keeping code and message;
* a non-2xx status → :class:`ApiHTTPError`; a body that is not the JSON envelope
  → :class:`ApiProtocolError`;
* connection failures before the request was sent → :class:`ApiConnectError`;
  timeouts and broken exchanges → :class:`ApiTimeoutError` / :class:`ApiTransportError`.

Reads (``rate``, ``pending``) are retried with exponential backoff and jitter.
Writes (``approve``, ``collect``, ``create_order``) are retried only when the
request provably never reached the server; anything else is left to the
daemon's journal, which re-posts the *recorded* decision on the next cycle.
Both policies are built once, with the client.

Each request is an ``httpx.Request`` carrying the headers :class:`SignAuth` signs (the
same signing as its httpx auth flow), handed to an ``httpx`` transport: the one given
(tests pass ``httpx.MockTransport``), else
:class:`~cosigner.api.transport.LeanTransport` (keep-alive HTTP/1.1 at a fraction
of httpcore's CPU per request), or, when the environment names a proxy, an
``httpx.AsyncClient`` that honours it.  The client calls the transport directly:
``AsyncClient.send`` (redirects, cookies, hooks, URL merging) cost three times the
exchange itself, and none of it applies to a signed JSON API.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, Protocol, TypeVar

import httpx

from cosigner import __version__
from cosigner.api.auth import SignAuth, SignSort, encode_body
from cosigner.api.models import CreatedOrder, PendingPage, PendingSnapshot, Rate
from cosigner.api.tls import certificate_failure, tls_context
from cosigner.api.transport import LeanTransport
from cosigner.errors import (
    AlreadyProcessedError,
    ApiCertificateError,
    ApiConnectError,
    ApiError,
    ApiHTTPError,
    ApiProtocolError,
    ApiResponseError,
    ApiTimeoutError,
    ApiTransportError,
    ConfigError,
)
from cosigner.models import JsonNumber, PendingItem, loads_checked
from cosigner.redact import MASK, mask_text, mask_url

ENDPOINTS = {
    "rate": "/api/otc/rate",
    "create": "/api/otc/create",
    "pending": "/api/transaction/pending",
    "approve": "/api/transaction/approve",
    "collect": "/api/transaction/assets/collect",
}

#: Fields the API doc marks required for ``/api/otc/create``.
ORDER_REQUIRED = ("userName", "areaCode", "phone", "cryptoAmount", "cryptoCurrency",
                  "legalCurrency", "idCardType", "idCard", "kyc", "merchantOrderNo",
                  "orderType", "payWay", "h5")


class ApiObserver(Protocol):
    """Receives one call per HTTP exchange (the daemon turns these into metrics)."""

    def observe(self, endpoint: str, seconds: float, error_kind: str | None) -> None: ...


def error_kind(exc: BaseException) -> str:
    """A bounded label for an API error (``api_errors_total{kind}``)."""
    if isinstance(exc, AlreadyProcessedError):
        return "already_processed"
    if isinstance(exc, ApiResponseError):
        return "api_code"
    if isinstance(exc, ApiHTTPError):
        return "rate_limited" if exc.status == 429 else "http_status"
    if isinstance(exc, ApiProtocolError):
        return "protocol"
    if isinstance(exc, ApiCertificateError):
        return "tls"
    if isinstance(exc, ApiConnectError):
        return "connect"
    if isinstance(exc, ApiTimeoutError):
        return "timeout"
    if isinstance(exc, ApiTransportError):
        return "transport"
    return "other"


def _retry_read(exc: BaseException) -> bool:
    if isinstance(exc, ApiHTTPError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, ApiTransportError | ApiProtocolError)


def _retry_write(exc: BaseException) -> bool:
    return isinstance(exc, ApiConnectError)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to ``attempts`` tries while ``retry_on`` says so, with random exponential backoff.

    The wait before try ``n + 1`` is uniform in ``[0, min(cap, base * 2 ** (n - 1))]``
    (full jitter).  Built once per client: a call pays nothing for it unless it fails.
    """

    attempts: int
    retry_on: Callable[[BaseException], bool]
    base: float
    cap: float

    def delay(self, attempt: int) -> float:
        # Jitter spreads retries out; it needs no cryptographic randomness.
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))  # noqa: S311

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, again after a retryable error, until it succeeds or tries run out."""
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                if attempt >= self.attempts or not self.retry_on(exc):
                    raise
            await asyncio.sleep(self.delay(attempt))
            attempt += 1


class _ProxiedTransport(httpx.AsyncBaseTransport):
    """A transport that sends through an ``httpx.AsyncClient`` honouring the proxy settings."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._client.send(request)

    async def aclose(self) -> None:
        await self._client.aclose()


def _env_proxy(base_url: str) -> bool:
    """True when the environment names a proxy for ``base_url``'s scheme: httpx's own
    transport then handles proxying (and ``NO_PROXY``) as it always did."""
    names = {f"{httpx.URL(base_url).scheme}_proxy", "all_proxy"}
    return any(value and name.lower() in names for name, value in os.environ.items())


class _WireEndpoint:
    """An endpoint's request as HTTP/1.1 bytes: the request line and fixed headers made
    once; the length, the signed headers and the body added per request."""

    __slots__ = ("head", "origin")

    def __init__(self, url: httpx.URL, headers: list[tuple[bytes, bytes]]) -> None:
        port = url.port or (443 if url.scheme == "https" else 80)
        self.origin = (url.scheme, url.host, port)
        self.head = b"".join([b"POST ", url.raw_path, b" HTTP/1.1\r\n",
                              *(name + b": " + value + b"\r\n" for name, value in headers)])

    def message(self, body: bytes, signed: list[tuple[bytes, bytes]]) -> bytes:
        """The whole request."""
        return b"".join([self.head, b"Content-Length: %d\r\n" % len(body),
                         *(name + b": " + value + b"\r\n" for name, value in signed),
                         b"\r\n", body])


class ApiClient:
    """Async client for the five endpoints of the API doc.  Use as an async context manager."""

    def __init__(self, base_url: str, merchant_no: str, api_key: str, api_secret: str, *,
                 lang: str = "en", sort: SignSort = "casefold", timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None, page_size: int = 50,
                 max_pending: int = 10000, retries: int = 3,
                 already_processed_codes: tuple[int, ...] = (4091,),
                 observer: ApiObserver | None = None,
                 backoff: tuple[float, float] = (0.2, 5.0),
                 clock: Callable[[], float] = time.perf_counter,
                 max_connections: int = 16, tls: ssl.SSLContext | None = None) -> None:
        self._auth = SignAuth(merchant_no, api_key, api_secret, lang=lang, sort=sort)
        self._secret = api_secret  # masked out of the provider's messages
        self._base_url = base_url

        # One TLS context for the client (building one costs ~25 ms): the system trust
        # store unless the caller passes one (COSIGNER_CA_BUNDLE).
        tls = tls or tls_context()
        count = max(1, max_connections)
        if transport is None:
            if _env_proxy(base_url):
                transport = _ProxiedTransport(httpx.AsyncClient(
                    verify=tls, follow_redirects=False, limits=httpx.Limits(
                        max_connections=count, max_keepalive_connections=count)))
            else:
                transport = LeanTransport(ssl_context=tls, max_connections=count)
        self._transport = transport
        base = httpx.URL(base_url)
        if not base.raw_path.endswith(b"/"):
            base = base.copy_with(raw_path=base.raw_path + b"/")
        self._urls = {name: base.join(path.lstrip("/")) for name, path in ENDPOINTS.items()}
        self._headers = [(b"Host", base.netloc), (b"Accept", b"application/json"),
                         (b"Content-Type", b"application/json"),
                         (b"User-Agent", f"cosigner/{__version__}".encode())]
        # The hot path on our own transport: each request formatted as HTTP/1.1 bytes
        # straight away (its fixed part once per endpoint), no httpx.Request/Response.
        self._lean = transport if isinstance(transport, LeanTransport) else None
        self._wire = {name: _WireEndpoint(url, self._headers) for name, url in self._urls.items()
                      if url.scheme in ("http", "https")}
        self._timeout = httpx.Timeout(timeout).as_dict()
        self.page_size = page_size
        self.max_pending = max_pending
        self._already = already_processed_codes
        self._observer = observer
        self._clock = clock
        attempts = max(1, retries)
        self._read_policy = RetryPolicy(attempts, _retry_read, *backoff)
        self._write_policy = RetryPolicy(attempts, _retry_write, *backoff)

    def __repr__(self) -> str:
        return f"ApiClient(base_url={mask_url(self._base_url)!r})"

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # -- transport and envelope ------------------------------------------------------

    async def _exchange(self, endpoint: str, fields: Mapping[str, Any]) -> Any:
        """One signed POST; returns the envelope's ``data`` or raises an ApiError."""
        started = self._clock()
        try:
            try:
                status, content = await self._send(endpoint, fields)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if (tls_problem := certificate_failure(exc)) is not None:
                    raise ApiCertificateError(endpoint, tls_problem) from exc
                raise ApiConnectError(endpoint, f"could not connect: {type(exc).__name__}"
                                      ) from exc
            except httpx.TimeoutException as exc:
                raise ApiTimeoutError(endpoint, f"timed out ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise ApiTransportError(endpoint, f"exchange failed: {type(exc).__name__}"
                                        ) from exc
            data = self._envelope(endpoint, status, content)
        except ApiError as exc:
            self._observe(endpoint, started, error_kind(exc))
            raise
        self._observe(endpoint, started, None)
        return data

    async def _send(self, endpoint: str, fields: Mapping[str, Any]) -> tuple[int, bytes]:
        """One signed POST of ``fields`` through the transport: the answer's status and body."""
        body = encode_body(fields)
        signed = self._auth.signed_headers(fields)
        wire = self._wire.get(endpoint) if self._lean is not None else None
        if wire is not None and self._lean is not None:
            answer = await self._lean.exchange(wire.origin, wire.message(body, signed),
                                               self._timeout)
            return answer.status, answer.body
        # The auth flow's own signing, with the headers given to the request at once
        # (rebuilding httpx Headers in the flow costs as much as the Sign itself).
        request = httpx.Request(
            "POST", self._urls[endpoint], content=body,
            headers=[*self._headers, (b"Content-Length", str(len(body)).encode()), *signed],
            extensions={"timeout": self._timeout})
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.content

    def _observe(self, endpoint: str, started: float, kind: str | None) -> None:
        if self._observer is not None:
            self._observer.observe(endpoint, self._clock() - started, kind)

    def _envelope(self, endpoint: str, status: int, content: bytes) -> Any:
        if 200 <= status < 300 and _SUCCESS_NO_DATA.fullmatch(content) is not None:
            # Exactly what the full reading below gives for these bytes (ASCII, so UTF-8;
            # three distinct keys; code the integer 200): the data, null.
            return None
        return self._read_envelope(endpoint, status, content)

    def _read_envelope(self, endpoint: str, status: int, content: bytes) -> Any:
        """The envelope read in full: parsed, every check made, its data or the error."""
        try:
            body = loads_checked(content) if content else None
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            body = None
        if not 200 <= status < 300:
            raise ApiHTTPError(endpoint, status,
                               _provider_text(_http_error_message(body), self._secret))
        if not isinstance(body, dict):
            raise ApiProtocolError(endpoint, "answer is not a JSON object")
        if "code" not in body:
            raise ApiProtocolError(endpoint, "answer has no 'code' field")
        repeated = _envelope_duplicates(body)
        if repeated:
            # A provider reading first-wins would see another answer than this one.
            raise ApiProtocolError(endpoint, "answer repeats the key(s) " + _provider_text(
                ", ".join(repeated), self._secret))
        code = body["code"]
        if _is_int(code) and code == 200:
            return body.get("data")
        if isinstance(code, str | dict | list):  # the provider's text: shown masked only
            code = _provider_text(str(code), self._secret)
        raw_message = body.get("message")
        message = (_provider_text(raw_message, self._secret) if isinstance(raw_message, str)
                   else "")
        if _is_int(code) and code in self._already:
            raise AlreadyProcessedError(endpoint, code, message)
        raise ApiResponseError(endpoint, code, message)

    async def _call(self, endpoint: str, fields: Mapping[str, Any], *, read: bool) -> Any:
        policy = self._read_policy if read else self._write_policy
        return await policy.run(lambda: self._exchange(endpoint, fields))

    # -- endpoints -------------------------------------------------------------------

    async def rate(self, crypto: str, legal: str) -> Rate:
        """The latest buy and sell rates for ``crypto`` against ``legal``."""
        data = await self._call("rate", {"cryptoCurrency": crypto, "legalCurrency": legal},
                                read=True)
        if not isinstance(data, dict):
            raise ApiProtocolError("rate", "data is not an object")
        buy, buy_text = _decimal_field("rate", data, "buyRate")
        sell, sell_text = _decimal_field("rate", data, "sellRate")
        return Rate(crypto, legal, buy, sell, buy_text, sell_text)

    async def create_order(self, order: Mapping[str, Any]) -> CreatedOrder:
        """Create a C2C order (never retried once it may have reached the server)."""
        missing = [k for k in ORDER_REQUIRED if order.get(k) in (None, "")]
        if missing:
            raise ConfigError(f"order is missing required field(s): {', '.join(missing)}")
        if str(order.get("orderType")) == "2":
            absent = [k for k in ("bank", "bankAccount") if order.get(k) in (None, "")]
            if absent:
                raise ConfigError(f"a sell order needs {', '.join(absent)}")
        data = await self._call("create", order, read=False)
        if not isinstance(data, dict):
            raise ApiProtocolError("create", "data is not an object")
        url, is_new, order_no = data.get("url"), data.get("isNew"), data.get("orderNo")
        if not isinstance(url, str) or not isinstance(is_new, bool):
            raise ApiProtocolError("create", "data lacks url/isNew")
        if isinstance(order_no, int) and not isinstance(order_no, bool):
            order_no = str(order_no)
        if not isinstance(order_no, str):
            raise ApiProtocolError("create", "data lacks orderNo")
        return CreatedOrder(url=url, is_new=is_new, order_no=order_no)

    async def pending_page(self, page_num: int, page_size: int) -> PendingPage:
        """One page of the pending list."""
        data = await self._call("pending", {"pageNum": page_num, "pageSize": page_size},
                                read=True)
        if not isinstance(data, dict):
            raise ApiProtocolError("pending", "data is not an object")
        total, entries = data.get("total"), data.get("list")
        if entries is None:
            entries = []
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ApiProtocolError("pending", "total is not a non-negative integer")
        if not isinstance(entries, list):
            raise ApiProtocolError("pending", "list is not a list")
        # An item repeating a key is kept: the decision holds it as malformed (duplicate_key).
        items = [PendingItem(e) for e in entries if isinstance(e, dict)]
        return PendingPage(page_num, total, items, malformed=len(entries) - len(items))

    async def pending(self) -> PendingSnapshot:
        """Every page read into one snapshot, deduplicated by id, capped at ``max_pending``.

        Nothing is decided while paging: approving while paging would shift pages.
        """
        size = self.page_size
        first = await self.pending_page(1, size)
        total = first.total
        max_pages = math.ceil(self.max_pending / size) + 1
        pages_needed = min(math.ceil(total / size), max_pages) if total else 1
        items: list[PendingItem] = []
        seen: dict[int, str] = {}
        conflicts: set[int] = set()
        duplicates = malformed = 0
        truncated = False
        page, pages_read = first, 1
        while True:
            malformed += page.malformed
            for item in page.items:
                item_id = item.id
                if item_id is not None:
                    if item_id in seen:
                        duplicates += 1
                        if seen[item_id] != item.content_hash:
                            conflicts.add(item_id)  # another content under the same id
                        continue
                    seen[item_id] = item.content_hash
                if len(items) >= self.max_pending:
                    truncated = True
                    break
                items.append(item)
            # Only an empty page ends paging early: a page whose entries are all
            # malformed still means the list goes on.
            if truncated or pages_read >= pages_needed or not (page.items or page.malformed):
                break
            page = await self.pending_page(pages_read + 1, size)
            pages_read += 1
        if total > self.max_pending:
            truncated = True
        return PendingSnapshot(items=items, total=total, pages=pages_read, truncated=truncated,
                               duplicates=duplicates, malformed=malformed,
                               ids=frozenset(seen), conflicts=frozenset(conflicts))

    async def approve(self, fields: Mapping[str, Any], data: str) -> None:
        """Post one decision: the signed fields plus ``data``.  Never blindly retried."""
        await self._call("approve", {**fields, "data": data}, read=False)

    async def collect(self, is_main: int, data: str) -> None:
        """Trigger fund collection for ``isMain`` with the signed ``{"isMain":..}``."""
        await self._call("collect", {"isMain": is_main, "data": data}, read=False)


#: The usual success answer without data, byte for byte: no whitespace, the three keys
#: once each in this order, a message of printable ASCII without quote or backslash
#: (so no escape).  Anything else, however close, is read in full.
_SUCCESS_NO_DATA = re.compile(rb'\{"code":200,"message":"[ !#-\[\]-~]*","data":null\}')

_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _decimal_field(endpoint: str, data: Mapping[str, Any], name: str) -> tuple[Decimal, str]:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int | JsonNumber):
        raise ApiProtocolError(endpoint, f"{name} is missing or not a number")
    text = str(value)
    # Decimal() alone would also take " 6.47", "6_47" (= 647), "NaN" and "Infinity".
    if not _DECIMAL_TEXT.fullmatch(text):
        raise ApiProtocolError(endpoint, f"{name} is not a decimal number")
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise ApiProtocolError(endpoint, f"{name} is not a decimal number") from None
    return number, text


def _provider_text(message: str, secret: str) -> str:
    """The provider's message as kept in errors, logs and the journal: masked, then cut.

    A hostile or buggy provider may echo the signing string (which ends with the API
    secret) or the signature; masking before cutting means no half secret survives.
    """
    if secret:
        message = message.replace(secret, MASK)
    return mask_text(message)[:200]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _http_error_message(body: Any) -> str:
    """The message of a non-2xx answer, with the envelope's code when it has one."""
    if not isinstance(body, dict):
        return ""
    # Not cut here: _provider_text masks the whole message first, then cuts it.
    message = body["message"] if isinstance(body.get("message"), str) else ""
    code = body.get("code")
    # Keep the envelope's code too (DESIGN section 1): 429 may carry 4290, 5xx 5000.
    if _is_int(code):
        message = f"API code {code}" + (f": {message}" if message else "")
    return message


def _envelope_duplicates(body: dict[str, Any]) -> tuple[str, ...]:
    """Keys repeated in the envelope or its ``data`` (outside the pending items, which the
    decision holds one by one)."""
    found = list(getattr(body, "duplicate_keys", ()))
    data = body.get("data")
    if isinstance(data, dict):
        found += getattr(data, "duplicate_keys", ())
    return tuple(dict.fromkeys(found))
