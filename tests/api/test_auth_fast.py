"""The cheaper signing paths give exactly what the plain ones gave, for every input.

Each ``_before_*`` function is the implementation the fast path replaced, kept here
verbatim as the oracle: same text, same Sign, same header bytes, same exception type.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosigner.api import auth as auth_module
from cosigner.api.auth import (
    SignAuth,
    SignSort,
    canonical_string,
    compute_sign,
    encode_body,
    format_value,
    new_nonce,
)
from cosigner.models import JsonNumber, dumps_exact


def _before_sort_key(sort: SignSort) -> Callable[[str], Any]:
    if sort == "casefold":
        return lambda k: (k.casefold(), k)
    if sort == "ascii":
        return lambda k: k.encode("utf-8")
    raise ValueError(f"COSIGNER_SIGN_SORT must be casefold or ascii, not {sort!r}")


def _before_canonical(params: Mapping[str, Any], sort: SignSort = "casefold", *,
                      skip: str | None = "Sign") -> str:
    pairs = []
    for key in sorted(params, key=_before_sort_key(sort)):
        if key == skip:
            continue
        text = format_value(params[key])
        if text is not None:
            pairs.append(f"{key}={text}")
    return "&".join(pairs)


def _before_nonce(n: int) -> str:
    chars = []
    for _ in range(8):
        n, digit = divmod(n, 62)
        chars.append((string.ascii_letters + string.digits)[digit])
    return "".join(chars)


def _before_signed_headers(auth: SignAuth, fields: Mapping[str, Any],
                           merchant_no: str, api_key: str, lang: str,
                           nonce: str, stamp: int, secret: str,
                           sort: SignSort) -> list[tuple[bytes, bytes]]:
    headers = {"Nonce": nonce, "TimeStamp": str(stamp), "MerchantNo": merchant_no,
               "SignType": "1", "Lang": lang, "ApiKey": api_key}
    headers["Sign"] = hashlib.md5(
        (_before_canonical({**fields, **headers}, sort) + secret).encode("utf-8"),
        usedforsecurity=False).hexdigest()
    return [(k.encode("ascii"), v.encode("utf-8")) for k, v in headers.items()]


def _outcome(call: Callable[[], object]) -> object:
    """The result, or the exception's type (what a caller can tell apart)."""
    try:
        return call()
    except Exception as exc:  # the type is the outcome compared
        return type(exc)


class _Folded(str):
    """A str subclass with its own casefold: must sort as its method says."""

    __slots__ = ()

    def casefold(self) -> str:
        return self[::-1]


# Keys that casefold alike or oddly (ß/ss, the Kelvin sign, dotted I, final sigma),
# keys equal but for case, and any text at all.
_TRICKY = ["a", "A", "b", "B", "ss", "SS", "ß", "ẞ", "k", "K", "\u212a", "İ", "i", "ı",
           "σ", "ς", "Σ", "Sign", "sign", "SIGN", "Nonce", "nonce", "_", "1", "é", "É",
           "\ud800", "\U0001f600"]
keys = st.one_of(st.sampled_from(_TRICKY), st.text(max_size=6))
values = st.one_of(
    st.none(), st.just(""), st.text(max_size=8), st.booleans(),
    st.integers(-(10**20), 10**20),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.sampled_from([JsonNumber("4.10"), JsonNumber("1e3"), JsonNumber("-0.0")]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                         max_size=2),
    st.sampled_from([1.5, Decimal("NaN"), object(), _Folded("x"), True]),
)
sorts: st.SearchStrategy[SignSort] = st.sampled_from(["casefold", "ascii"])
skips = st.sampled_from(["Sign", None, "a", "ß"])


class TestCanonicalString:
    @given(params=st.dictionaries(keys, values, max_size=12), sort=sorts, skip=skips)
    def test_same_text_or_same_error(self, params: dict[str, Any], sort: SignSort,
                                     skip: str | None) -> None:
        """Any str keys, any values: the same text, or the same exception type."""
        assert _outcome(lambda: canonical_string(params, sort, skip=skip)) == \
            _outcome(lambda: _before_canonical(params, sort, skip=skip))

    @given(params=st.dictionaries(st.one_of(keys, st.integers(), st.none(), st.booleans(),
                                            keys.map(_Folded)), values, max_size=8),
           sort=sorts)
    def test_keys_that_are_not_plain_str(self, params: dict[Any, Any], sort: SignSort) -> None:
        """Non-str keys and str subclasses take the key function: same text or error."""
        assert _outcome(lambda: canonical_string(params, sort)) == \
            _outcome(lambda: _before_canonical(params, sort))

    def test_str_subclass_keys_sort_by_their_own_casefold(self) -> None:
        """A key's own casefold decides its place, as it did."""
        params = {_Folded("ab"): "1", _Folded("ba"): "2", "aa": "3"}
        assert canonical_string(params) == _before_canonical(params) == "aa=3&ba=2&ab=1"

    @given(params=st.dictionaries(keys, values, max_size=12), secret=st.text(max_size=8),
           sort=sorts)
    def test_same_sign(self, params: dict[str, Any], secret: str, sort: SignSort) -> None:
        expected = _outcome(lambda: hashlib.md5(
            (_before_canonical(params, sort) + secret).encode("utf-8"),
            usedforsecurity=False).hexdigest())
        assert _outcome(lambda: compute_sign(params, secret, sort)) == expected

    def test_unknown_sort_still_refused(self) -> None:
        with pytest.raises(ValueError, match="casefold or ascii"):
            canonical_string({"a": "1"}, "natural")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="casefold or ascii"):
            canonical_string({}, "natural")  # type: ignore[arg-type]


class TestNonce:
    @pytest.mark.parametrize("draw", [0, 1, 61, 62, 3843, 3844, 62**4 - 1, 62**4,
                                      62**6 + 12345, 62**8 - 1])
    def test_same_characters_for_the_same_draw(self, draw: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(auth_module.secrets, "randbelow", lambda bound: draw)
        assert new_nonce() == _before_nonce(draw)

    @given(draw=st.integers(0, 62**8 - 1))
    def test_any_draw(self, draw: int) -> None:
        original = secrets.randbelow
        auth_module.secrets.randbelow = lambda bound: draw  # type: ignore[assignment]
        try:
            assert new_nonce() == _before_nonce(draw)
        finally:
            auth_module.secrets.randbelow = original

    def test_one_draw_over_the_whole_space(self, monkeypatch: pytest.MonkeyPatch) -> None:
        bounds: list[int] = []
        monkeypatch.setattr(auth_module.secrets, "randbelow",
                            lambda bound: bounds.append(bound) or 0)
        new_nonce()
        assert bounds == [62**8]


class TestSignedHeaders:
    @given(fields=st.dictionaries(st.one_of(st.sampled_from(_TRICKY), st.text(max_size=6)),
                                  st.one_of(st.none(), st.text(max_size=8), st.integers(),
                                            st.booleans(), st.decimals(
                                                allow_nan=False, allow_infinity=False,
                                                places=2)), max_size=8),
           nonce=st.text(max_size=10), stamp=st.integers(0, 10**14), sort=sorts)
    def test_same_headers_in_the_same_order(self, fields: dict[str, Any], nonce: str,
                                            stamp: int, sort: SignSort) -> None:
        """The seven headers, names, values and order, byte for byte (fields may even
        name a public parameter: the header's value wins, as it did)."""
        auth = SignAuth("M-01", "ak-01", "sec", lang="zh", sort=sort, clock=lambda: stamp,
                        nonce=lambda: nonce)
        expected = _outcome(lambda: _before_signed_headers(
            auth, fields, "M-01", "ak-01", "zh", nonce, stamp, "sec", sort))
        assert _outcome(lambda: auth.signed_headers(fields)) == expected

    def test_public_params_unchanged(self) -> None:
        auth = SignAuth("M-01", "ak-01", "sec", clock=lambda: 7, nonce=lambda: "n")
        assert list(auth.public_params().items()) == [
            ("Nonce", "n"), ("TimeStamp", "7"), ("MerchantNo", "M-01"), ("SignType", "1"),
            ("Lang", "en"), ("ApiKey", "ak-01")]


class TestEncodeBody:
    @given(fields=st.dictionaries(
        st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none()),
        st.one_of(st.none(), st.text(max_size=8), st.integers(), st.booleans(),
                  st.decimals(allow_nan=False, allow_infinity=False, places=2),
                  st.sampled_from([JsonNumber("4.10"), 1.5, float("nan")])),
        max_size=8))
    def test_same_bytes_or_same_error(self, fields: dict[Any, Any]) -> None:
        """The same bytes as the per-call json.dumps (or dumps_exact) gave."""
        def before() -> bytes:
            if all(type(v) in (str, int, bool, type(None)) for v in fields.values()):
                return json.dumps(fields, separators=(",", ":"),
                                  ensure_ascii=False).encode("utf-8")
            return dumps_exact(fields).encode("utf-8")
        assert _outcome(lambda: encode_body(fields)) == _outcome(before)
