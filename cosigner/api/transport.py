"""A lean keep-alive HTTP/1.1 transport under httpx: :class:`LeanTransport`.

httpx's default transport (httpcore, h11 and anyio) spends more CPU on one small
request than the daemon spends deciding and signing it.  This transport keeps
httpx as the client API (``AsyncClient``, auth flows, ``MockTransport`` in tests)
and speaks only what a JSON API client needs, on asyncio protocols directly:

* HTTP/1.1 requests with a body known up front, written in one ``write``;
* answers framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the
  end of the connection; ``1xx`` interim answers are skipped;
* keep-alive connections per origin, reused most-recent-first, dropped once the
  server closed them (checked on the socket itself before reuse, as httpcore does),
  when they were idle longer than ``keepalive_expiry`` (2 s by default: well under
  the usual server keep-alive timeouts, uvicorn's 5 s included, so a request is
  not written into a connection the server is closing), or when an exchange on
  them did not end cleanly;
* TLS through the ``ssl.SSLContext`` it is given (``https`` origins).

No proxies, no HTTP/2, no upgrades.  Every failure is raised as httpx's own
exception, so the client above maps it as it would httpx's transport's:

* ``ConnectError`` / ``ConnectTimeout``: no connection could be made, nothing sent;
* ``PoolTimeout``: no connection slot within the pool timeout, nothing sent;
* ``ReadTimeout``: no complete answer within the read timeout (the request was sent);
* ``RemoteProtocolError``: the server closed the connection before a complete
  answer, or answered something that is not HTTP/1.1 (the request was sent).
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
from collections.abc import Mapping
from types import TracebackType

import httpx

#: Longest status line plus headers accepted, and longest body.
MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024

Origin = tuple[str, str, int]  # scheme, host, port

#: A chunk size: hex digits only (no sign, no prefix, no underscores), at most 16.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class _ProtocolError(Exception):
    """The answer is not HTTP/1.1 we can read."""


class Answer:
    """A complete answer as read off the wire."""

    __slots__ = ("body", "headers", "keep_alive", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 body: bytes, keep_alive: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time, the answer parsed as it arrives."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._no_body = False
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._keep_alive = True
        self._length: int | None = None     # Content-Length framing
        self._chunked = False
        self._until_close = False
        self._pos = 0                       # parse position in the buffer (chunked)
        self._chunks: list[bytes] = []
        self._chunked_total = 0             # bytes of the chunks read so far

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for: this connection can no longer be trusted.
            self._buffer += data
            self.close()
            return
        try:
            answer = self._parse_new(data) if not self._buffer else self._parse_more(data)
        except _ProtocolError as exc:
            self.close()
            waiter.set_exception(httpx.RemoteProtocolError(str(exc)))
            return
        if answer is not None:
            waiter.set_result(answer)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_done and self._until_close and exc is None:  # a clean close ends it
            waiter.set_result(Answer(self._status, self._reason, self._headers,
                                      bytes(self._buffer), False))
            return
        waiter.set_exception(httpx.RemoteProtocolError(
            "server disconnected without sending a complete response"))

    # -- one exchange ----------------------------------------------------------------

    def usable(self, now: float, expiry: float) -> bool:
        transport = self.transport
        if (self.closed or transport is None or transport.is_closing() or self._buffer
                or now - self.idle_since >= expiry):
            return False
        # Readable while idle means the server's close (or stray bytes) arrived but the
        # loop has not read it yet: never write a request into that connection.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            if poller.poll(0):
                return False
        return True

    async def exchange(self, message: bytes, no_body: bool,
                       read_timeout: float | None) -> Answer:
        """Write ``message`` and wait for the complete answer."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset()
        self._no_body = no_body
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self.transport.write(message)
        timer = None
        if read_timeout is not None:
            timer = loop.call_later(read_timeout, self._time_out, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _time_out(self, waiter: asyncio.Future[Answer]) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout("no complete answer within the read timeout"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing ---------------------------------------------------------------------

    def _parse_more(self, data: bytes) -> Answer | None:
        self._buffer += data
        return self._parse()

    def _parse_new(self, data: bytes) -> Answer | None:
        """:meth:`_parse_more` for ``data`` arriving on an empty buffer, without copying it
        through the buffer when it holds a whole head and exactly the body it announces
        (the usual small answer); any other case goes on as ``_parse_more`` would."""
        if self._head_done or type(data) is not bytes:
            return self._parse_more(data)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return self._parse_more(data)
        self._read_head(data[:end])
        if self._head_done and self._length is not None and len(data) - end - 4 == self._length:
            return self._answer(data[end + 4:])
        return self._parse_more(data[end + 4:])

    def _parse(self) -> Answer | None:
        buffer = self._buffer
        while not self._head_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise _ProtocolError("answer headers too long")
                return None
            self._read_head(bytes(buffer[:end]))
            del buffer[:end + 4]
        if self._length is not None:
            if len(buffer) < self._length:
                return None
            if len(buffer) > self._length:
                raise _ProtocolError("more bytes than Content-Length")
            body = bytes(buffer)
            buffer.clear()
            return self._answer(body)
        if self._chunked:
            return self._parse_chunks()
        if len(buffer) > MAX_BODY:  # until close
            raise _ProtocolError("answer body too long")
        return None

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, status, reason = _status_line(lines[0])
        headers, length, connection, chunked = _header_lines(lines[1:])
        if 100 <= status < 200:
            if status == 101:
                raise _ProtocolError("protocol upgrades are not supported")
            return  # interim answer: the real one follows
        self._status, self._reason, self._headers = status, reason, headers
        self._head_done = True
        self._keep_alive = version == b"HTTP/1.1" and b"close" not in connection
        self._frame(status, length, chunked)

    def _frame(self, status: int, length: bytes | None, chunked: bool) -> None:
        """How the body ends: no body, chunks, a length, or the connection's close."""
        if self._no_body or status in (204, 304):
            self._length = 0
        elif chunked:
            self._chunked = True
        elif length is not None:
            self._length = int(length)
            if self._length > MAX_BODY:
                raise _ProtocolError("answer body too long")
        else:
            self._until_close = True
            self._keep_alive = False

    def _parse_chunks(self) -> Answer | None:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n", self._pos)
            if end < 0:
                return None
            size_text = bytes(buffer[self._pos:end]).split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                # int(..., 16) alone takes "-6", "0x3" and "1_0": a negative size would
                # send the parser back over its own bytes, forever, on the event loop.
                raise _ProtocolError("malformed chunk size")
            size = int(size_text, 16)
            if self._chunked_total + size > MAX_BODY:
                raise _ProtocolError("answer body too long")
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", end)
                if buffer[end:end + 4] != b"\r\n\r\n" and trailer_end < 0:
                    return None
                stop = end + 4 if buffer[end:end + 4] == b"\r\n\r\n" else trailer_end + 4
                if stop != len(buffer):
                    raise _ProtocolError("bytes after the last chunk")
                buffer.clear()
                return self._answer(b"".join(self._chunks))
            start = end + 2
            if len(buffer) < start + size + 2:
                return None
            if buffer[start + size:start + size + 2] != b"\r\n":
                raise _ProtocolError("malformed chunk")
            self._chunks.append(bytes(buffer[start:start + size]))
            self._chunked_total += size
            self._pos = start + size + 2

    def _answer(self, body: bytes) -> Answer:
        return Answer(self._status, self._reason, self._headers, body, self._keep_alive)


class LeanTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 for httpx on plain asyncio; see the module docstring.

    At most ``max_connections`` requests are in flight at once (each on its own
    connection); up to that many idle connections per origin are kept for reuse.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 16, keepalive_expiry: float = 2.0) -> None:
        self._ssl_context = ssl_context
        self._max_connections = max(1, max_connections)
        self._keepalive_expiry = keepalive_expiry
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"LeanTransport(max_connections={self._max_connections})"

    async def __aenter__(self) -> LeanTransport:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None,
                        exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        port = url.port or (443 if scheme == "https" else 80)
        message, close = await _serialize(request)
        answer = await self.exchange((scheme, url.host, port), message,
                                     request.extensions.get("timeout", {}),
                                     no_body=request.method == "HEAD", close=close)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body,
                              extensions={"http_version": b"HTTP/1.1",
                                          "reason_phrase": answer.reason})

    async def exchange(self, origin: Origin, message: bytes,
                       timeouts: Mapping[str, float | None], *, no_body: bool = False,
                       close: bool = False) -> Answer:
        """Send ``message`` (a complete HTTP/1.1 request) to ``origin`` and read the answer.

        What :meth:`handle_async_request` does under httpx, for a caller that formats its
        own requests (the API client's hot path: no ``httpx.Request``/``Response`` built).
        ``close``: the request asked for ``Connection: close``; the connection is not kept.
        """
        if self._closed:
            raise RuntimeError("the transport is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_connections)
        slots = self._slots
        if slots.locked():  # all in use: wait for one, at most the pool timeout
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection available within the pool timeout"
                                        ) from None
        else:
            await slots.acquire()  # free: taken at once, no timer
        connection: _Connection | None = None
        reusable = False
        try:
            connection = self._idle_connection(origin)
            if connection is None:
                connection = await self._connect(origin, timeouts.get("connect"))
            answer = await connection.exchange(message, no_body, timeouts.get("read"))
            reusable = answer.keep_alive and not close
        finally:
            slots.release()
            if connection is not None:
                if reusable and not self._closed and not connection.closed:
                    connection.idle_since = time.monotonic()
                    idle = self._idle.setdefault(origin, [])
                    idle.append(connection)
                    if len(idle) > self._max_connections:
                        idle.pop(0).close()
                else:
                    connection.close()
        return answer

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable(now, self._keepalive_expiry):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, limit: float | None) -> _Connection:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        loop = asyncio.get_running_loop()
        connection = _Connection(origin)
        try:
            async with asyncio.timeout(limit):
                await loop.create_connection(lambda: connection, host, port, ssl=context,
                                             server_hostname=host if context else None)
        except TimeoutError:
            connection.close()
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in time") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            connection.close()
            raise httpx.ConnectError(f"could not connect to {host}:{port}: "
                                     f"{type(exc).__name__}") from exc
        return connection


async def _serialize(request: httpx.Request) -> tuple[bytes, bool]:
    """The request as HTTP/1.1 bytes (a streamed body is read and sent as one chunk), and
    whether it asks for ``Connection: close``."""
    try:
        body = request.content
    except httpx.RequestNotRead:
        body = await request.aread()
    headers = request.headers.raw
    chunked = close = False
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            chunked = True
        elif lower == b"connection" and b"close" in value.lower():
            close = True
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    if chunked:
        if body:
            parts += (b"%x\r\n" % len(body), body, b"\r\n")
        parts.append(b"0\r\n\r\n")
    else:
        parts.append(body)
    return b"".join(parts), close


def _status_line(line: bytes) -> tuple[bytes, int, bytes]:
    """(version, status, reason) of an HTTP/1.x status line."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") \
            or not parts[1].isdigit() or len(parts[1]) != 3:
        raise _ProtocolError("malformed status line")
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else b""


def _header_lines(lines: list[bytes]
                  ) -> tuple[list[tuple[bytes, bytes]], bytes | None, bytes, bool]:
    """(headers, Content-Length, Connection tokens, chunked) of the header lines."""
    headers: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    connection = b""
    chunked = False
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _ProtocolError("malformed header line")
        value = value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit() or (length is not None and length != value):
                raise _ProtocolError("invalid Content-Length")
            length = value
        elif lower == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
            if not chunked:
                raise _ProtocolError("unsupported Transfer-Encoding")
        elif lower == b"connection":
            connection += b"," + value.lower()
    return headers, length, connection, chunked
