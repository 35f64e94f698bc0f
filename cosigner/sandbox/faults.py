"""Faults on purpose: what a real provider and the network in between do on a bad day.

A :class:`FaultConfig` (switched on with ``POST /sandbox/faults``) gives each
fault kind a share of the API requests (``/api/...`` only, never the admin
routes), optionally restricted to some endpoints and to the next ``limit``
faulty answers.  One draw per request picks at most one kind:

=============  ======================================================  =============
kind           what the client sees                                    request acted on?
=============  ======================================================  =============
drop           the connection closes with no answer at all             no
rate_limit     HTTP 429, ``{"code": 4290, ...}``, ``Retry-After``      no
error          HTTP 500/502/503, ``{"code": 5000, ...}`` or an HTML    no
               page (``errorBody: "html"``)
non_json       HTTP 200 with an HTML body                              no
truncate       the answer cut in half: a shorter, well-formed HTTP     **yes**
               body (``truncateMode: "body"``), or the connection
               closed mid-body (``"connection"``)
lost_answer    the server acts (an approve is recorded and the item    **yes**
               decided) and then drops the connection (``"drop"``) or
               never answers until the client gives up (``"hang"``)
=============  ======================================================  =============

``latencyMs`` (+ up to ``latencyJitterMs``) is added to every API request,
faulty or not.  Draws come from a ``random.Random(seed)``, so a seeded fault
configuration misbehaves the same way every run.

Dropping a connection without sending a byte needs the socket, which ASGI does
not expose; :class:`~cosigner.sandbox.server.SandboxServer` puts the transport
in the scope's extensions under :data:`TRANSPORT_EXTENSION`.  Under another
server a drop starts an answer and abandons it, which closes the connection
too (after the status line).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cosigner.models import dumps_exact
from cosigner.sandbox.codes import Code

FaultKind = Literal["drop", "rate_limit", "error", "non_json", "truncate", "lost_answer"]
FAULT_KINDS: tuple[FaultKind, ...] = ("drop", "rate_limit", "error", "non_json", "truncate",
                                      "lost_answer")
TRANSPORT_EXTENSION = "cosigner.sandbox.transport"

#: Short endpoint names accepted in ``endpoints``.
ENDPOINTS: Mapping[str, str] = {
    "rate": "/api/otc/rate",
    "create": "/api/otc/create",
    "pending": "/api/transaction/pending",
    "approve": "/api/transaction/approve",
    "collect": "/api/transaction/assets/collect",
}

_JSON_NAMES: Mapping[str, str] = {
    "latencyMs": "latency_ms", "latencyJitterMs": "latency_jitter_ms",
    "dropRate": "drop_rate", "rateLimitRate": "rate_limit_rate", "retryAfter": "retry_after_s",
    "errorRate": "error_rate", "errorStatuses": "error_statuses", "errorBody": "error_body",
    "nonJsonRate": "non_json_rate", "truncateRate": "truncate_rate",
    "truncateMode": "truncate_mode", "lostAnswerRate": "lost_answer_rate",
    "lostAnswerMode": "lost_answer_mode", "hangMaxS": "hang_max_s", "endpoints": "endpoints",
    "limit": "limit", "seed": "seed",
}
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "error_body": ("json", "html"), "truncate_mode": ("body", "connection"),
    "lost_answer_mode": ("drop", "hang"),
}
_HTML = (b"<html><head><title>502 Bad Gateway</title></head><body><center>"
         b"<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Shares (0..1, summing to at most 1) of API requests answered with each fault."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    drop_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    error_body: Literal["json", "html"] = "json"
    non_json_rate: float = 0.0
    truncate_rate: float = 0.0
    truncate_mode: Literal["body", "connection"] = "body"
    lost_answer_rate: float = 0.0
    lost_answer_mode: Literal["drop", "hang"] = "drop"
    hang_max_s: float = 60.0
    #: Paths (or short names: rate, create, pending, approve, collect); None: every API path.
    endpoints: tuple[str, ...] | None = None
    #: Inject this many faults, then behave (latency stays); None: no limit.
    limit: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "latency_jitter_ms", "hang_max_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        self._check_rates()
        if not self.error_statuses or any(not 500 <= s <= 599 for s in self.error_statuses):
            raise ValueError("error_statuses must be 5xx statuses")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must not be negative")
        if self.endpoints is not None:
            object.__setattr__(self, "endpoints",
                               tuple(ENDPOINTS.get(e, e) for e in self.endpoints))

    def _check_rates(self) -> None:
        rates = [self.rate(kind) for kind in FAULT_KINDS]
        if any(not 0 <= r <= 1 for r in rates):
            raise ValueError("every fault rate must be between 0 and 1")
        if sum(rates) > 1 + 1e-9:
            raise ValueError("the fault rates add up to more than 1")

    def rate(self, kind: FaultKind) -> float:
        """The share of requests answered with ``kind``."""
        return cast(float, getattr(self, f"{kind}_rate"))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FaultConfig:
        """Build from the admin route's camelCase JSON; ValueError names a bad key."""
        kwargs: dict[str, Any] = {}
        for key, value in obj.items():
            name = _JSON_NAMES.get(key)
            if name is None:
                raise ValueError(f"unknown fault setting {key!r} "
                                 f"(known: {', '.join(_JSON_NAMES)})")
            if name in ("error_statuses", "endpoints") and value is not None:
                if not isinstance(value, list):
                    raise ValueError(f"{key} must be a list")
                value = tuple(value)
            elif isinstance(value, str) and name not in _CHOICES:
                value = float(value)   # JsonNumber text, e.g. "0.25"
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, name in _JSON_NAMES.items():
            value = getattr(self, name)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


class FaultInjector:
    """The current fault configuration and its random draws (thread-safe)."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self.released = threading.Event()
        self.set(config or FaultConfig())

    def set(self, config: FaultConfig) -> None:
        """Switch to ``config`` (counters start again from zero)."""
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)  # noqa: S311 - fault draws, not secrets
            self.injected: dict[FaultKind, int] = dict.fromkeys(FAULT_KINDS, 0)
            # A new event: requests hanging under the old configuration keep the old
            # one, which release() may have set and which must stay set for them.
            self.released = threading.Event()

    def clear(self) -> None:
        """No faults, no latency; requests hanging on a fault are let go."""
        self.release()
        self.set(FaultConfig())

    def release(self) -> None:
        """Let every hanging request go (its connection is dropped): for shutdown."""
        self.released.set()

    @property
    def config(self) -> FaultConfig:
        return self._config

    def draw(self, path: str) -> tuple[float, FaultKind | None, int]:
        """``(latency seconds, fault kind or None, a 5xx status)`` for one request."""
        with self._lock:
            cfg = self._config
            latency = cfg.latency_ms + self._rng.random() * cfg.latency_jitter_ms
            if cfg.endpoints is not None and path not in cfg.endpoints:
                return latency / 1000, None, 500
            if cfg.limit is not None and sum(self.injected.values()) >= cfg.limit:
                return latency / 1000, None, 500
            roll = self._rng.random()
            status = self._rng.choice(cfg.error_statuses)
            edge = 0.0
            for kind in FAULT_KINDS:
                edge += cfg.rate(kind)
                if roll < edge:
                    self.injected[kind] += 1
                    return latency / 1000, kind, status
            return latency / 1000, None, status

    def status_json(self) -> dict[str, Any]:
        with self._lock:
            return {"config": self._config.to_json(), "injected": dict(self.injected)}


async def _send_simple(send: Send, status: int, body: bytes, content_type: bytes,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _envelope(code: Code, message: str) -> bytes:
    return dumps_exact({"code": int(code), "message": message, "data": None}).encode()


async def drop_connection(scope: Scope, receive: Receive, send: Send, *,
                          started: bool = False) -> None:
    """Close the client's connection without (the rest of) an answer (see the module doc)."""
    transport = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
    if transport is None:
        # Not under SandboxServer: an answer that never completes makes the server close.
        if not started:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"4096")]})
        return
    transport.abort()
    # Wait until the server has noticed, or it would answer 500 on our behalf.
    async with asyncio.timeout(5):
        while (await receive())["type"] != "http.disconnect":
            pass


async def _hang(scope: Scope, receive: Receive, send: Send, max_s: float,
                released: threading.Event) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    while loop.time() < deadline and not released.is_set():
        try:
            async with asyncio.timeout(0.05):
                message = await receive()
        except TimeoutError:
            continue
        if message["type"] == "http.disconnect":
            return
    await drop_connection(scope, receive, send)


class FaultMiddleware:
    """ASGI middleware applying the :class:`FaultInjector`'s draws to ``/api/`` requests."""

    def __init__(self, app: ASGIApp, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        latency, kind, status = self.injector.draw(scope["path"])
        if latency > 0:
            await asyncio.sleep(latency)
        cfg = self.injector.config
        if kind is None:
            await self.app(scope, receive, send)
        elif kind == "drop":
            await drop_connection(scope, receive, send)
        elif kind == "rate_limit":
            await _send_simple(send, 429, _envelope(Code.RATE_LIMITED, "Too many requests"),
                               b"application/json",
                               [(b"retry-after", str(cfg.retry_after_s).encode())])
        elif kind == "error":
            if cfg.error_body == "html":
                await _send_simple(send, status, _HTML, b"text/html")
            else:
                await _send_simple(send, status,
                                   _envelope(Code.SERVER_ERROR, "Internal server error"),
                                   b"application/json")
        elif kind == "non_json":
            await _send_simple(send, 200, _HTML, b"text/html")
        else:
            await self._after_processing(kind, scope, receive, send)

    async def _after_processing(self, kind: FaultKind, scope: Scope, receive: Receive,
                                send: Send) -> None:
        """Let the app act, then spoil its answer (``truncate``) or never deliver it."""
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        cfg = self.injector.config
        if kind == "lost_answer":
            if cfg.lost_answer_mode == "hang":
                await _hang(scope, receive, send, cfg.hang_max_s, self.injector.released)
            else:
                await drop_connection(scope, receive, send)
            return
        body = b"".join(chunks)
        cut = body[: len(body) // 2]
        if cfg.truncate_mode == "connection":
            await send(start)
            await send({"type": "http.response.body", "body": cut, "more_body": True})
            await drop_connection(scope, receive, send, started=True)
            return
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(cut)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": cut})

