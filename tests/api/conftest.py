"""Fixtures of the API tests: the scripted 1BitPay stand-in and a refusing port.

The server itself lives in :mod:`tests.api.scripted`; see its docstring for scripting.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.api.scripted import ScriptedServer


@pytest.fixture(scope="session")
def _scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api_server(_scripted_server: ScriptedServer) -> Iterator[ScriptedServer]:
    """The scripted server, with an empty script and no records for this test."""
    _scripted_server.reset()
    yield _scripted_server
    _scripted_server.reset()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
