"""``/metrics``, ``/healthz`` and ``/readyz`` on ``COSIGNER_HTTP_ADDR`` (DESIGN section 7)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cosigner.errors import ConfigError

from .metrics import Metrics


def create_app(metrics: Metrics, readiness: Callable[[], dict[str, bool]],
               role: Callable[[], str] = lambda: "leader") -> Starlette:
    """The observability app: nothing secret is ever rendered here.

    ``/readyz`` also says the replica's ``role`` (``leader`` or ``standby``)."""

    async def metrics_route(_request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_request: Request) -> Response:
        checks = readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "role": role(), "checks": checks},
                            status_code=200 if ready else 503)

    return Starlette(routes=[Route("/metrics", metrics_route), Route("/healthz", healthz),
                             Route("/readyz", readyz)])


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """uvicorn serving an app inside the running event loop (no signal handlers of its own).

    The socket is bound here rather than by uvicorn: uvicorn answers a bind failure
    with ``sys.exit``, which would end the whole process (or a test run) with a
    traceback instead of the one clear line of a configuration error.
    """

    def __init__(self, app: Starlette, host: str, port: int, *,
                 setting: str = "COSIGNER_HTTP_ADDR") -> None:
        # proxy_headers=False: the peer address is the socket's (the callback listener
        # decides itself which proxy's X-Forwarded-For to believe).
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                lifespan="off", proxy_headers=False, server_header=False)
        self._setting = setting
        self._host = host
        self._port = port
        self._server = _QuietServer(config)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen on ``host:port``.

        Raises:
            ConfigError: the address cannot be bound (in use, not local, ...).
        """
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only when
        # the listening socket says TCP; without it every answer after the first on a
        # kept-alive connection (a Prometheus scrape, a probe, a provider's callback)
        # waits ~40 ms for the peer's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"{self._setting} {self._host}:{self._port}: cannot listen "
                              f"({exc.strerror or exc})") from None
        self._sock = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._close_socket()
                self._task.result()  # raises what stopped it
                raise OSError("HTTP server stopped during start")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("HTTP server is not listening")
        return int(self._sock.getsockname()[1])

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=5)
        self._task = None
        self._close_socket()
