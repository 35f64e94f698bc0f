"""The daemon's HTTP server (``/metrics``, ``/healthz``, ``/readyz``; the callback
listener uses the same server)."""

from __future__ import annotations

import asyncio
import socket

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cosigner.daemon.http import HttpServer


async def _hello(_request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def test_accepted_connections_do_not_wait_for_delayed_acks() -> None:
    """Every accepted connection has TCP_NODELAY: a kept-alive client's second request is
    not held ~40 ms by Nagle's algorithm waiting for its delayed ACK (a scrape or probe
    on a kept-alive connection, a provider's callbacks)."""
    server = HttpServer(Starlette(routes=[Route("/", _hello)]), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(2):
                response = await client.get(f"http://127.0.0.1:{server.port}/")
                assert response.text == "hello"
            connections = server._server.server_state.connections
            assert connections
            for protocol in connections:
                sock = protocol.transport.get_extra_info("socket")  # type: ignore[attr-defined]
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await asyncio.wait_for(server.stop(), 10)
