"""A scripted 1BitPay stand-in: a real Starlette app served by uvicorn on 127.0.0.1.

The server runs in its own thread (so both async tests and the synchronous
``cosigner otc`` commands, which call ``asyncio.run``, can talk to it) on a
random port, once per session; the ``api_server`` fixture (``conftest.py``) clears its script
and its records for every test.  Each test scripts the answers per path:

    api_server.script("/api/otc/rate", Answer(status=500), ok({"buyRate": "6.47", ...}))

Answers are served in order, the last one repeating; an answer may also be a
function of the :class:`Recorded` request (for paging).  Every request that
reaches the server is recorded with its headers and raw body *on arrival*,
before any scripted delay, so a test can count what the server really saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cosigner.models import loads_exact


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names (HTTP/1.1 names are case-insensitive)
    body: bytes

    def json(self) -> Any:
        """The body parsed with exact number literals."""
        return loads_exact(self.body)


@dataclass(frozen=True)
class Answer:
    """What the server does with one request.

    ``body`` is sent as is (bytes or str) or as compact JSON (anything else);
    ``delay`` holds the answer back (released early when the test ends);
    ``drop`` sends the headers and part of the body, then closes the connection.
    """

    body: Any = None
    status: int = 200
    delay: float = 0.0
    drop: bool = False
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


def ok(data: Any = None, *, message: str = "Success") -> Answer:
    """A success envelope carrying ``data``."""
    body: dict[str, Any] = {"code": 200, "message": message}
    if data is not None:
        body["data"] = data
    return Answer(body)


def fail(code: Any, message: str = "error", *, status: int = 200) -> Answer:
    """An envelope with a non-success ``code``."""
    return Answer({"code": code, "message": message}, status=status)


Script = Answer | Callable[[Recorded], Answer]


class _DroppedResponse(Response):
    """Announces a 1000-byte body, sends a few bytes, and returns without finishing.

    uvicorn then closes the connection: the client sees an answer cut off mid-body.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"code":20', "more_body": True})


class ScriptedServer:
    """The 1BitPay stand-in; see the module docstring."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[str, list[Script]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so
        # (otherwise keep-alive answers wait ~40 ms for a delayed ACK).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/{path:path}", self._handle,
                                      methods=["GET", "POST", "PUT", "DELETE"])])
        # log_config=None: leave the process's logging alone; records reach pytest's capture.
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, lifespan="off", http="h11", ws="none", loop="asyncio",
            timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._run, name="scripted-1bitpay", daemon=True)

    # -- scripting (test thread) ----------------------------------------------------

    def script(self, path: str, *answers: Script) -> None:
        """Answer requests to ``path`` with ``answers`` in order, repeating the last."""
        if not answers:
            raise ValueError("script at least one answer")
        with self._lock:
            self._scripts[path] = list(answers)

    def requests_to(self, path: str) -> list[Recorded]:
        """The recorded requests to ``path``, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def reset(self) -> None:
        """Forget the script and the records, and release every delayed answer."""
        with self._lock:
            self._scripts.clear()
            self.requests.clear()
            old, self._release = self._release, None
        if old is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(old.set)

    # -- serving (server thread) ----------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        record = Recorded(request.method, request.url.path, dict(request.headers), body)
        with self._lock:
            self.requests.append(record)
            queue = self._scripts.get(record.path)
            script = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else None
            if self._release is None:
                self._release = asyncio.Event()
            release = self._release
        if script is None:
            return Response(b'{"message":"not scripted"}', status_code=404,
                            media_type="application/json")
        answer = script(record) if callable(script) else script
        if answer.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), answer.delay)
        if answer.drop:
            return _DroppedResponse()
        return Response(answer.encoded(), status_code=answer.status,
                        media_type=answer.content_type)

    def _run(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[self._sock])

        asyncio.run(serve())

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        ready = threading.Event()
        for _ in range(500):
            if self._server.started:
                ready.set()
                break
            ready.wait(0.01)
        if not ready.is_set():  # pragma: no cover - only when the machine is wedged
            raise RuntimeError("scripted server did not start")

    def stop(self) -> None:
        self.reset()
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


class RefusingTransport(httpx.AsyncBaseTransport):
    """Refuses the first ``refusals`` connections (as a server not yet listening
    would), then hands requests to a real HTTP transport."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts: list[httpx.Request] = []
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(request)
        if len(self.attempts) <= self.refusals:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class RecordingObserver:
    """An API observer keeping every ``(endpoint, seconds, error_kind)`` call."""

    calls: list[tuple[str, float, str | None]] = field(default_factory=list)

    def observe(self, endpoint: str, seconds: float, error_kind: str | None) -> None:
        self.calls.append((endpoint, seconds, error_kind))

    @property
    def kinds(self) -> list[tuple[str, str | None]]:
        return [(endpoint, kind) for endpoint, _, kind in self.calls]
