"""Serving the sandbox with uvicorn on a real socket, in-process.

:class:`SandboxServer` binds ``127.0.0.1`` on a random free port by default,
knows its :attr:`~UvicornServer.url` before it starts, and runs either in the
current event loop (``async with SandboxServer(...) as server``) or in a
background thread with its own loop for synchronous callers
(``with SandboxServer(...) as server``).  :class:`UvicornServer` does the same
for any ASGI app (a test's callback receiver, for example).

uvicorn is driven through ``startup``/``main_loop``/``shutdown`` rather than
``serve`` so that it installs no signal handlers in the caller's process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self, cast

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from cosigner.api.auth import timestamp_ms
from cosigner.sandbox.app import create_app
from cosigner.sandbox.faults import TRANSPORT_EXTENSION
from cosigner.sandbox.runtime import Sandbox, SandboxConfig
from cosigner.sandbox.state import Merchant, SandboxState, SqliteState


class TransportH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that also hands the app its connection's transport.

    The fault middleware needs it to drop a connection without a byte of answer
    (ASGI itself has no way to).  The scope of a request is built in
    ``handle_events`` and the app only runs in a task started there, so adding
    the extension right after is in time.
    """

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None:
            scope = cast(dict[str, Any], cycle.scope)
            scope.setdefault("extensions", {})[TRANSPORT_EXTENSION] = self.transport


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (port 0: a free one chosen by the system)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it every kept-alive answer waits ~40 ms for
    # the peer's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class UvicornServer:
    """An ASGI app served by uvicorn on ``host:port``, started and stopped on demand."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", graceful_timeout: float = 2.0) -> None:
        self.app = app
        self.host = host
        self._port = port
        self.log_level = log_level
        self.graceful_timeout = graceful_timeout
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The bound port (the chosen one once started with port 0)."""
        if self._sock is not None:
            return int(self._sock.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._sock is None:
            raise RuntimeError("the server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- in the current loop ------------------------------------------------------------

    async def start(self) -> None:
        """Bind, run the app's lifespan startup and accept connections."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        sock = bind_socket(self.host, self._port)
        config = uvicorn.Config(self.app, host=self.host, port=self.port, lifespan="on",
                                http=TransportH11Protocol, log_config=None,
                                log_level=self.log_level, access_log=False,
                                proxy_headers=False, server_header=False,
                                timeout_graceful_shutdown=self.graceful_timeout)  # type: ignore[arg-type]  # a float works: it goes to asyncio.wait_for
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except SystemExit:  # uvicorn's way of saying the lifespan startup failed
            sock.close()
            raise RuntimeError("the app's lifespan startup failed") from None
        self._sock = sock
        self._server = server
        # uvicorn's main_loop only refreshes the Date header each second and polls
        # should_exit every 0.1 s; one tick sets the headers and stop() needs no polling.
        await server.on_tick(0)

    async def stop(self) -> None:
        """Stop accepting, finish (or after ``graceful_timeout`` cancel) requests, shut down."""
        server, sock = self._server, self._sock
        if server is None or sock is None:
            return
        server.should_exit = True
        await server.shutdown(sockets=[sock])
        self._server = None
        self._sock = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- in a background thread ---------------------------------------------------------

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Run the server in a new thread with its own event loop; return once it serves."""
        if self._thread is not None:
            raise RuntimeError("the server is already running in a thread")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def run() -> None:
            self._thread_loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await self._thread_stop.wait()
            await self.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(run(),),
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the server did not start within {timeout} s")
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError("the server did not start") from failure[0]

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and wait for its thread."""
        thread, loop, stop = self._thread, self._thread_loop, self._thread_stop
        if thread is None or loop is None or stop is None:
            return
        self._before_stop()
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = None

    def _before_stop(self) -> None:
        """Hook run (in the caller's thread) before a threaded server is stopped."""

    def __enter__(self) -> Self:
        self.start_in_thread()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_thread()


class SandboxServer(UvicornServer):
    """The sandbox on a loopback socket: ``state`` (in memory by default) behind :func:`create_app`.

    ``merchants`` are registered (added or replaced) in the state before serving.
    The caller owns ``state`` (closing it is theirs to do).
    """

    def __init__(self, state: SandboxState | None = None, *,
                 merchants: Iterable[Merchant] = (), config: SandboxConfig | None = None,
                 clock: Callable[[], int] = timestamp_ms, host: str = "127.0.0.1",
                 port: int = 0, log_level: str = "warning",
                 graceful_timeout: float = 2.0) -> None:
        self.state: SandboxState = state if state is not None else SqliteState()
        for merchant in merchants:
            self.state.put_merchant(merchant)
        app = create_app(self.state, clock=clock, config=config)
        self.sandbox: Sandbox = app.state.sandbox
        super().__init__(app, host=host, port=port, log_level=log_level,
                         graceful_timeout=graceful_timeout)

    async def stop(self) -> None:
        self.sandbox.faults.release()   # requests hanging on a fault end now
        await super().stop()

    def _before_stop(self) -> None:
        self.sandbox.faults.release()
