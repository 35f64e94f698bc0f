"""LeanTransport: keep-alive HTTP/1.1 under httpx, against a raw server on 127.0.0.1.

The server answers each request with the next scripted byte string (or an action),
so framing, reuse and every failure path are exercised on a real socket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cosigner.api.transport import LeanTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"code\":200"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Answers requests from a script of raw answers; counts connections and requests."""

    def __init__(self) -> None:
        self.script: list[bytes | str] = []
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
                if answer == "close":        # close without a byte of answer
                    break
                if answer == "hang":         # never answer
                    await asyncio.sleep(3600)
                assert isinstance(answer, bytes)
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer or (b"Content-Length" not in answer \
                        and b"chunked" not in answer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    yield server
    for writer in server.writers:
        writer.close()
    server.server.close()
    await server.server.wait_closed()


async def _client(url: str, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=LeanTransport(**kwargs),  # type: ignore[arg-type]
                             timeout=2.0)


class TestFraming:
    async def test_content_length_and_keep_alive(self, raw: RawServer) -> None:
        """Three requests in a row travel on one kept-alive connection."""
        raw.script = [OK]
        async with await _client(raw.url) as http:
            for _ in range(3):
                response = await http.post("/x", content=b'{"a":1}')
                assert (response.status_code, response.content) == (200, b'{"code":200')
        assert raw.connections == 1
        assert len(raw.requests) == 3
        assert raw.requests[0].startswith(b"POST /x HTTP/1.1\r\n")
        assert raw.requests[0].endswith(b'\r\n\r\n{"a":1}')

    async def test_chunked_answer(self, raw: RawServer) -> None:
        """A chunked answer is joined, and the connection is reused."""
        raw.script = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n"]
        async with await _client(raw.url) as http:
            assert (await http.get("/")).content == b"abcdefg"
            assert (await http.get("/")).content == b"abcdefg"
        assert raw.connections == 1

    async def test_interim_answer_is_skipped(self, raw: RawServer) -> None:
        """A 100 Continue before the answer is not the answer."""
        raw.script = [b"HTTP/1.1 100 Continue\r\n\r\n" + OK]
        async with await _client(raw.url) as http:
            assert (await http.get("/")).status_code == 200

    async def test_body_until_close(self, raw: RawServer) -> None:
        """An answer without length ends with the connection, which is not reused."""
        raw.script = [b"HTTP/1.1 200 OK\r\n\r\nall of it"]
        async with await _client(raw.url) as http:
            assert (await http.get("/")).content == b"all of it"
            assert (await http.get("/")).content == b"all of it"
        assert raw.connections == 2

    async def test_connection_close_is_honoured(self, raw: RawServer) -> None:
        """``Connection: close`` from the server means a new connection next time."""
        raw.script = [b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"]
        async with await _client(raw.url) as http:
            assert (await http.get("/")).status_code == 404
            assert (await http.get("/")).status_code == 404
        assert raw.connections == 2

    async def test_gzip_is_decoded_by_httpx(self, raw: RawServer) -> None:
        """The raw body is handed to httpx, which decodes Content-Encoding as usual."""
        import gzip
        body = gzip.compress(b"hello")
        raw.script = [b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body]
        async with await _client(raw.url) as http:
            assert (await http.get("/")).content == b"hello"


class TestFailures:
    async def test_server_closed_idle_connection_is_replaced(self, raw: RawServer) -> None:
        """A kept-alive connection the server has since closed is not used again."""
        raw.script = [OK]
        async with await _client(raw.url) as http:
            await http.get("/")
            for writer in raw.writers:
                writer.close()
            await asyncio.sleep(0.05)
            assert (await http.get("/")).status_code == 200
        assert raw.connections == 2

    async def test_expired_idle_connection_is_replaced(self, raw: RawServer) -> None:
        """An idle connection older than keepalive_expiry is closed, not reused."""
        raw.script = [OK]
        async with await _client(raw.url, keepalive_expiry=0.0) as http:
            await http.get("/")
            await http.get("/")
        assert raw.connections == 2

    async def test_closed_without_answer(self, raw: RawServer) -> None:
        """The server closing before answering is a RemoteProtocolError (the request was sent)."""
        raw.script = ["close"]
        async with await _client(raw.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post("/", content=b"{}")
        assert len(raw.requests) == 1

    async def test_truncated_answer(self, raw: RawServer) -> None:
        """Fewer bytes than Content-Length, then close: RemoteProtocolError."""
        raw.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort"]
        async with await _client(raw.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/")

    @pytest.mark.parametrize("answer", [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nno colon\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # a negative size sent the parser back over its own bytes forever (the loop hung)
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n-6\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ])
    async def test_malformed_answers(self, raw: RawServer, answer: bytes) -> None:
        """Anything that is not HTTP/1.1 we can frame is a RemoteProtocolError."""
        raw.script = [answer]
        async with await _client(raw.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/")

    async def test_read_timeout(self, raw: RawServer) -> None:
        """No answer within the read timeout: ReadTimeout, and the connection is dropped."""
        raw.script = ["hang"]
        transport = LeanTransport()
        async with httpx.AsyncClient(base_url=raw.url, transport=transport,
                                     timeout=httpx.Timeout(2.0, read=0.05)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/")
            assert transport._idle.get(("http", "127.0.0.1", raw.server.sockets[0]
                                        .getsockname()[1]), []) == []  # type: ignore[union-attr]

    async def test_refused_connection(self, closed_port_url: str) -> None:
        """Nothing listening: ConnectError, nothing sent."""
        async with await _client(closed_port_url) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/")

    async def test_pool_timeout(self, raw: RawServer) -> None:
        """With every connection busy, a request waits at most the pool timeout."""
        raw.script = ["hang"]
        async with httpx.AsyncClient(base_url=raw.url,
                                     transport=LeanTransport(max_connections=1),
                                     timeout=httpx.Timeout(5.0, pool=0.05)) as http:
            first = asyncio.create_task(http.get("/"))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await http.get("/")
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first

    async def test_concurrency_is_bounded(self, raw: RawServer) -> None:
        """Sixteen requests over a pool of four use at most four connections."""
        raw.script = [OK]
        async with await _client(raw.url, max_connections=4) as http:
            answers = await asyncio.gather(*(http.get("/") for _ in range(16)))
        assert all(a.status_code == 200 for a in answers)
        assert raw.connections <= 4


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    return server, client


class TestTls:
    async def test_https_with_the_given_context(self, raw: RawServer, tmp_path: Path) -> None:
        """An https origin is reached through the SSLContext given, and kept alive."""
        server_ctx, client_ctx = _self_signed(tmp_path)
        tls = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=server_ctx)
        port = tls.sockets[0].getsockname()[1]
        raw.script = [OK]
        try:
            async with await _client(f"https://localhost:{port}", ssl_context=client_ctx) as http:
                assert (await http.get("/")).status_code == 200
                assert (await http.get("/")).status_code == 200
            assert raw.connections == 1
        finally:
            tls.close()

    async def test_untrusted_certificate_is_a_connect_error(self, raw: RawServer,
                                                            tmp_path: Path) -> None:
        """A certificate the context does not trust fails the connection, nothing sent."""
        server_ctx, _ = _self_signed(tmp_path)
        tls = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=server_ctx)
        port = tls.sockets[0].getsockname()[1]
        try:
            async with await _client(f"https://localhost:{port}",
                                     ssl_context=ssl.create_default_context()) as http:
                with pytest.raises(httpx.ConnectError):
                    await http.get("/")
            assert raw.requests == []
        finally:
            tls.close()


class TestApiClientTransport:
    async def test_proxy_from_the_environment_is_honoured(
            self, raw: RawServer, monkeypatch: pytest.MonkeyPatch) -> None:
        """With HTTP_PROXY set, requests go to the proxy (httpx's own transport), not direct."""
        from cosigner.api.client import ApiClient
        monkeypatch.setenv("HTTP_PROXY", raw.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        body = b'{"code":200,"message":"ok","data":null}'
        raw.script = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)]
        async with ApiClient("http://api.example.invalid", "M1", "K1", "s", retries=1) as api:
            await api.collect(1, "data")
        assert raw.requests[0].startswith(
            b"POST http://api.example.invalid/api/transaction/assets/collect HTTP/1.1")

    async def test_base_url_path_is_kept(self, raw: RawServer) -> None:
        """A base URL with a path prefix keeps it, like httpx's base_url merging."""
        from cosigner.api.client import ApiClient
        body = b'{"code":200,"message":"ok","data":null}'
        raw.script = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)]
        async with ApiClient(raw.url + "/prefix", "M1", "K1", "s", retries=1) as api:
            await api.collect(0, "data")
        head = raw.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
        assert head[0] == b"POST /prefix/api/transaction/assets/collect HTTP/1.1"
        names = [line.split(b":")[0].lower() for line in head[1:]]
        assert names.count(b"host") == 1
        assert {b"nonce", b"timestamp", b"merchantno", b"signtype", b"lang", b"apikey",
                b"sign", b"content-length"} <= set(names)


class _Delegating(httpx.AsyncBaseTransport):
    """Another transport in front of a LeanTransport: the client's httpx path."""

    def __init__(self) -> None:
        self.inner = LeanTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class TestWirePath:
    """On a LeanTransport the client formats its requests itself (no httpx.Request or
    Response): the bytes on the wire are the ones the httpx path sends."""

    BODY = b'{"code":200,"message":"ok","data":null}'

    async def _sent(self, raw: RawServer, transport: httpx.AsyncBaseTransport | None,
                    monkeypatch: pytest.MonkeyPatch) -> bytes:
        from cosigner.api.client import ApiClient
        raw.requests.clear()
        raw.script = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(self.BODY), self.BODY)]
        async with ApiClient(raw.url + "/v1", "M1", "K1", "s", retries=1,
                             transport=transport) as api:
            monkeypatch.setattr(api._auth, "_clock", lambda: 1700000000000)
            monkeypatch.setattr(api._auth, "_nonce", lambda: "abcdEFGH")
            await api.approve({"id": 7, "from": "a", "to": "b", "value": "1.5",
                               "chainId": "56", "status": 1}, "sig")
        return raw.requests[0]

    async def test_same_bytes_as_the_httpx_path(self, raw: RawServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        wire = await self._sent(raw, None, monkeypatch)  # LeanTransport: the wire path
        via_httpx = await self._sent(raw, _Delegating(), monkeypatch)
        assert wire == via_httpx
        assert wire.startswith(b"POST /v1/api/transaction/approve HTTP/1.1\r\n")
        assert b"\r\nSign: " in wire
        assert b"\r\nNonce: abcdEFGH\r\n" in wire

    async def test_no_httpx_objects_on_the_wire_path(self, raw: RawServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(*_: object, **__: object) -> None:
            raise AssertionError("built an httpx object on the wire path")

        monkeypatch.setattr(httpx, "Request", refuse)
        monkeypatch.setattr(httpx, "Response", refuse)
        assert b"approve" in await self._sent(raw, None, monkeypatch)

    async def test_answers_and_errors_are_the_same(self, raw: RawServer) -> None:
        """A non-2xx answer and a closed connection map to the same errors on both paths."""
        from cosigner.api.client import ApiClient
        from cosigner.errors import ApiHTTPError, ApiTransportError
        for transport in (None, _Delegating()):
            raw.script = [b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\n{}"]
            async with ApiClient(raw.url, "M1", "K1", "s", retries=1,
                                 transport=transport) as api:
                with pytest.raises(ApiHTTPError, match="503"):
                    await api.collect(1, "d")
                raw.script = ["close"]
                with pytest.raises(ApiTransportError):
                    await api.collect(1, "d")

    @pytest.mark.parametrize("field", ["merchant_no", "api_key"])
    async def test_a_line_break_in_a_header_value_is_refused(self, field: str) -> None:
        from cosigner.api.client import ApiClient
        from cosigner.errors import ConfigError
        values = {"merchant_no": "M1", "api_key": "K1", field: "X\r\nInjected: 1"}
        with pytest.raises(ConfigError, match="control or non-ASCII") as caught:
            ApiClient("http://127.0.0.1:1", values["merchant_no"], values["api_key"], "s")
        assert "Injected" not in str(caught.value)


class TestStaleConnection:
    async def test_close_not_yet_seen_by_the_loop(self) -> None:
        """A connection the server closed while idle is not reused even before the loop
        has read the close: the request goes out on a new connection, no error."""
        import socket
        import threading
        import time

        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        close_first = threading.Event()
        accepted: list[socket.socket] = []

        def serve() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                accepted.append(conn)
                conn.recv(65536)
                conn.sendall(OK)
                if len(accepted) == 1:
                    close_first.wait(5)
                    conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            async with await _client(f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/")).status_code == 200
                close_first.set()
                # Block the loop: the close reaches the socket, not the protocol.
                time.sleep(0.2)  # noqa: ASYNC251 - on purpose, see above
                assert (await http.get("/")).status_code == 200
            assert len(accepted) == 2
        finally:
            thread.join(5)
            for conn in accepted:
                conn.close()
            listener.close()
