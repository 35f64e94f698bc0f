"""The envelope's fast path for the usual success answer decides exactly as the full reading.

``ApiClient._envelope`` takes ``{"code":200,"message":"<plain ASCII>","data":null}``
without parsing it; every answer, matched or not, must give the same data or the
same error (type, endpoint, code, message) as ``_read_envelope``, the full reading.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cosigner.api.client import _SUCCESS_NO_DATA, ApiClient
from cosigner.errors import ApiError

SECRET = "sk-fast-path-secret"
SUCCESS = b'{"code":200,"message":"Success","data":null}'


@pytest.fixture(scope="module")
def client() -> ApiClient:
    # Never connects: only the envelope is read.
    return ApiClient("http://127.0.0.1:9", "M-01", "ak-01", SECRET,
                     already_processed_codes=(4091,))


def _outcome(call: Any) -> object:
    try:
        return ("data", call())
    except ApiError as exc:
        return (type(exc), str(exc), vars(exc))


def _same(client: ApiClient, status: int, content: bytes) -> bool:
    fast = _outcome(lambda: client._envelope("approve", status, content))
    full = _outcome(lambda: client._read_envelope("approve", status, content))
    assert fast == full, (status, content)
    return _SUCCESS_NO_DATA.fullmatch(content) is not None


NEAR_MISSES = [
    SUCCESS,
    b'{"code":200,"message":"","data":null}',
    b'{"code":200,"message":"ok [1] {x} #~ !","data":null}',
    # a success's message is not kept: one echoing the secret is still a success
    b'{"code":200,"message":"' + SECRET.encode() + b'","data":null}',
    # whitespace anywhere, or a trailing newline
    b'{"code": 200,"message":"Success","data":null}',
    b'{"code":200,"message":"Success","data":null}\n',
    b' {"code":200,"message":"Success","data":null}',
    b'{"code":200 ,"message":"Success","data":null}',
    # duplicate keys: the envelope refuses them
    b'{"code":200,"message":"Success","data":null,"code":200}',
    b'{"code":200,"message":"Success","data":null,"data":null}',
    b'{"code":200,"code":200,"message":"Success","data":null}',
    b'{"code":4091,"message":"Success","data":null,"code":200}',
    # other codes, other spellings of 200
    b'{"code":201,"message":"Success","data":null}',
    b'{"code":2000,"message":"Success","data":null}',
    b'{"code":20,"message":"Success","data":null}',
    b'{"code":4091,"message":"already processed","data":null}',
    b'{"code":500,"message":"Success","data":null}',
    b'{"code":200.0,"message":"Success","data":null}',
    b'{"code":2e2,"message":"Success","data":null}',
    b'{"code":"200","message":"Success","data":null}',
    b'{"code":true,"message":"Success","data":null}',
    b'{"code":-200,"message":"Success","data":null}',
    b'{"code":0200,"message":"Success","data":null}',
    # escapes, quotes, control and non-ASCII characters in the message
    b'{"code":200,"message":"a\\"b","data":null}',
    b'{"code":200,"message":"a\\\\b","data":null}',
    b'{"code":200,"message":"\\u6210\\u529f","data":null}',
    b'{"code":200,"message":"bad \\q escape","data":null}',
    b'{"code":200,"message":"ends in a backslash\\","data":null}',
    # a message that would hide a second key from a looser pattern
    b'{"code":200,"message":"x","data":null,"data":"","data":null}',
    b'{"code":200,"message":"x","code":4091,"message":"y","data":null}',
    b'{"code":200,"message":"x","data":{"a":1},"y":"","data":null}',
    '{"code":200,"message":"成功","data":null}'.encode(),
    b'{"code":200,"message":"\xff","data":null}',
    b'{"code":200,"message":"\xed\xa0\x80","data":null}',
    b'{"code":200,"message":"tab\there","data":null}',
    b'{"code":200,"message":"del\x7f","data":null}',
    # other data, other key order, missing or extra keys, other types of message
    b'{"code":200,"message":"Success","data":{}}',
    b'{"code":200,"message":"Success","data":{"a":1,"a":2}}',
    b'{"code":200,"message":"Success","data":"null"}',
    b'{"code":200,"message":"Success"}',
    b'{"code":200,"data":null,"message":"Success"}',
    b'{"message":"Success","code":200,"data":null}',
    b'{"code":200,"message":null,"data":null}',
    b'{"code":200,"message":"Success","data":null,"extra":1}',
    b'{"code":200,"message":"Success","data":nul}',
    b'{"code":200,"message":"Success","data":null',
    b'{"code":200,"message":"Success","data":null}}',
    b'\xef\xbb\xbf{"code":200,"message":"Success","data":null}',
    SUCCESS.decode().encode("utf-16"),
    b"",
    b"null",
    b"[]",
]


class TestFastPathAgreesWithTheFullReading:
    @pytest.mark.parametrize("content", NEAR_MISSES)
    @pytest.mark.parametrize("status", [200, 201, 299, 199, 300, 400, 429, 500])
    def test_near_misses(self, client: ApiClient, status: int, content: bytes) -> None:
        _same(client, status, content)

    def test_only_the_exact_shape_takes_it(self) -> None:
        taken = [c for c in NEAR_MISSES if _SUCCESS_NO_DATA.fullmatch(c)]
        assert taken == NEAR_MISSES[:4]

    @given(message=st.text(max_size=30), status=st.sampled_from([200, 204, 299, 300, 500]),
           code=st.one_of(st.just(200), st.integers(-5, 5000), st.just("200")),
           ascii_only=st.booleans())
    @example(message="Success", status=200, code=200, ascii_only=False)
    def test_any_message(self, client: ApiClient, message: str, status: int, code: Any,
                         ascii_only: bool) -> None:
        """Any message json.dumps can write, escaped or not, with any code."""
        body = {"code": code, "message": message, "data": None}
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=ascii_only).encode()
        _same(client, status, content)

    @given(data=st.data())
    def test_mutations_of_the_success_bytes(self, client: ApiClient, data: st.DataObject
                                            ) -> None:
        """The success bytes with one byte changed, removed or inserted anywhere."""
        raw = bytearray(SUCCESS)
        at = data.draw(st.integers(0, len(raw)))
        byte = data.draw(st.integers(0, 255))
        how = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        if how == "insert":
            raw.insert(at, byte)
        elif at < len(raw):
            if how == "replace":
                raw[at] = byte
            else:
                del raw[at]
        _same(client, data.draw(st.sampled_from([200, 400])), bytes(raw))

    @given(pairs=st.lists(st.tuples(st.sampled_from(["code", "message", "data", "x"]),
                                    st.sampled_from(["200", "null", '"Success"', "4091",
                                                     "{}", '"200"'])),
                          max_size=5),
           space=st.sampled_from(["", " "]))
    def test_any_keys_in_any_order(self, client: ApiClient, pairs: list[tuple[str, str]],
                                   space: str) -> None:
        """Objects made of the envelope's keys in any order and number (duplicates too)."""
        content = ("{" + ",".join(f'"{k}":{space}{v}' for k, v in pairs) + "}").encode()
        _same(client, 200, content)

    def test_success_returns_no_data(self, client: ApiClient) -> None:
        assert client._envelope("approve", 200, SUCCESS) is None
