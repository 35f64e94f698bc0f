"""An answer read straight from one ``data_received`` (the lean transport's fast path) is
read exactly as the same bytes fed through the buffer: same answer, same error, same state.

The reference reads the same pieces with the fast path switched off (every byte through
the buffer), so both see the same segmentation: where the pieces are cut can itself change
the outcome (bytes after a complete answer are an error in its own piece, a close in a later
one), which is not the fast path's business.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cosigner.api.transport import Answer, _Connection


class _Waiter:
    """Stands in for the exchange's future: records what the connection settles it with."""

    def __init__(self) -> None:
        self.outcome: Any = None

    def done(self) -> bool:
        return self.outcome is not None

    def set_result(self, answer: Answer) -> None:
        self.outcome = ("answer", answer.status, answer.reason, answer.headers, answer.body,
                        answer.keep_alive)

    def set_exception(self, exc: BaseException) -> None:
        self.outcome = ("error", type(exc), str(exc))


class _BufferedOnly(_Connection):
    """The connection with the fast path switched off: every piece through the buffer."""

    def _parse_new(self, data: bytes) -> Answer | None:
        return self._parse_more(data)


def _read(pieces: list[bytes], *, no_body: bool = False,
          buffered: bool = False) -> tuple[Any, ...]:
    connection = (_BufferedOnly if buffered else _Connection)(("http", "127.0.0.1", 9))
    connection._no_body = no_body
    waiter = _Waiter()
    connection._waiter = waiter  # type: ignore[assignment]
    for piece in pieces:
        if waiter.done():
            break
        connection.data_received(piece)
    state = (connection._head_done, connection._status, connection._headers,
             connection._length, connection._chunked, connection._until_close,
             connection._keep_alive, connection.closed)
    # What is still buffered matters only while the exchange goes on.
    leftover = bytes(connection._buffer) if waiter.outcome is None else None
    return waiter.outcome, state, leftover


def _agree(raw: bytes, *, no_body: bool = False, cut: int | None = None) -> tuple[Any, ...]:
    """``raw`` delivered whole, and in two pieces cut at ``cut``, read alike both ways."""
    fast = _read([raw], no_body=no_body)
    assert fast == _read([raw], no_body=no_body, buffered=True), raw
    if cut is not None:
        pieces = [p for p in (raw[:cut], raw[cut:]) if p]
        assert _read(pieces, no_body=no_body) == \
            _read(pieces, no_body=no_body, buffered=True), (raw, cut)
    return fast


SUCCESS = b'{"code":200,"message":"Success","data":null}'
assert len(SUCCESS) == 0x2c
UVICORN = (b"HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
           b"content-length: 44\r\ncontent-type: application/json\r\n\r\n" + SUCCESS)


def test_the_usual_answer() -> None:
    outcome, _, _ = _agree(UVICORN)
    assert outcome[0] == "answer"
    assert outcome[4] == SUCCESS
    assert outcome[5] is True
    assert isinstance(outcome[4], bytes)
    assert all(type(n) is bytes and type(v) is bytes for n, v in outcome[3])


_STATUS = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content",
                           b"HTTP/1.1 304", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 Up",
                           b"HTTP/1.1 429 Too Many", b"HTTP/2 200 OK", b"HTTP/1.1 2000 X",
                           b"HTTP/1.1 20 X", b"HTTP/1.1 -20 X", b"garbage", b"",
                           b" HTTP/1.1 200 OK", b"\tHTTP/1.1 200 OK", b"HTTP/1.1 200 "])
_HEADER = st.sampled_from([
    b"content-length: 44", b"Content-Length: 44", b"content-length: 43", b"content-length: 45",
    b"content-length: 0", b"content-length: -1", b"content-length: 4_5", b"content-length:",
    b"transfer-encoding: chunked", b"Transfer-Encoding: gzip, chunked",
    b"transfer-encoding: gzip", b"connection: close", b"Connection: keep-alive",
    b"content-type: application/json", b" content-length: 44", b"content-length : 44",
    b"no colon here", b": empty name", b"x-odd: \t spaced \t",
])
_BODY = st.sampled_from([SUCCESS, SUCCESS[:-1], SUCCESS + b"x", b"",
                         b"2c\r\n" + SUCCESS + b"\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n",
                         b"-5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"0\r\nx-t: 1\r\n\r\n",
                         b"5\r\nhello\r\n0\r\n\r\nextra"])


@given(status=_STATUS, headers=st.lists(_HEADER, max_size=4), body=_BODY,
       interim=st.booleans(), no_body=st.booleans(), cut=st.integers(0, 200))
def test_any_answer_reads_alike(status: bytes, headers: list[bytes], body: bytes,
                                interim: bool, no_body: bool, cut: int) -> None:
    head = b"\r\n".join([status, *headers])
    raw = (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + head + b"\r\n\r\n" + body
    _agree(raw, no_body=no_body, cut=cut)


@given(raw=st.binary(max_size=120), cut=st.integers(0, 120))
def test_any_bytes_read_alike(raw: bytes, cut: int) -> None:
    _agree(raw, cut=cut)


@given(data=st.data())
def test_mutations_of_the_usual_answer(data: st.DataObject) -> None:
    raw = bytearray(UVICORN)
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255))
    _agree(bytes(raw), cut=data.draw(st.integers(0, len(raw))))


def test_bytes_nobody_asked_for_close_the_connection() -> None:
    connection = _Connection(("http", "127.0.0.1", 9))
    connection.data_received(UVICORN)
    assert connection.closed
    assert bytes(connection._buffer) == UVICORN
