"""The MD5 ``Sign`` (DESIGN section 1): the API doc's vector, value rules and properties."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cosigner.api.auth import (
    PUBLIC_HEADERS,
    SignAuth,
    SignSort,
    canonical_string,
    compute_sign,
    encode_body,
    format_value,
    new_nonce,
    sign_callback,
    signed_body,
    signs_equal,
    timestamp_ms,
    verify_callback,
    verify_sign,
)
from cosigner.models import JsonNumber, dumps_exact

SECRET = "merasdasd"
# The API doc's "Authentication example": business parameters merged with the public ones.
DOC_PARAMS: dict[str, Any] = {
    "orderNo": "Or12898771811",
    "name": "John Li",
    "TimeStamp": 1566781991111,
    "Nonce": "dnasja1N",
    "MerchantNo": "meraojiasdoa123",
    "Lang": "en",
    "SignType": "1",
    "ApiKey": "asdhuasdaosd",
}
DOC_STRING = ("ApiKey=asdhuasdaosd&Lang=en&MerchantNo=meraojiasdoa123&name=John Li"
              "&Nonce=dnasja1N&orderNo=Or12898771811&SignType=1&TimeStamp=1566781991111")
DOC_SIGN = "d826a31317bb52a1832cf023bc7b3a07"
ASCII_STRING = ("ApiKey=asdhuasdaosd&Lang=en&MerchantNo=meraojiasdoa123&Nonce=dnasja1N"
                "&SignType=1&TimeStamp=1566781991111&name=John Li&orderNo=Or12898771811")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


# -- an independent reading of DESIGN section 1 (deliberately not using canonical_string) --

def _ref_plain(value: Decimal) -> str:
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    if exponent >= 0:
        whole, frac = text + "0" * exponent, ""
    else:
        text = text.rjust(-exponent + 1, "0")
        whole, frac = text[:exponent], text[exponent:]
    whole = whole.lstrip("0") or "0"
    return ("-" if sign else "") + whole + ("." + frac if frac else "")


def _ref_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, JsonNumber):
        return _ref_plain(Decimal(str(value)))
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return "%d" % value  # noqa: UP031 - spelled differently from the implementation on purpose
    if isinstance(value, Decimal):
        return _ref_plain(value)
    raise AssertionError(f"no rule for {type(value).__name__}")


def _reference_sign(params: Mapping[str, Any], secret: str, sort: SignSort) -> str:
    pairs = [(k, _ref_text(v)) for k, v in params.items() if k != "Sign"]
    kept = [(k, t) for k, t in pairs if t is not None]
    if sort == "casefold":
        # Case-insensitive, ties (keys equal but for case) in plain order.
        kept.sort(key=lambda kv: (kv[0].lower(), kv[0]))
    else:
        # UTF-8 byte order is code point order, which is Python's str order.
        kept.sort()
    joined = "&".join(f"{k}={t}" for k, t in kept)
    return hashlib.md5((joined + secret).encode("utf-8"), usedforsecurity=False).hexdigest()


# -- strategies -----------------------------------------------------------------------------

ascii_keys = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)
decimals = st.builds(lambda n, e: Decimal(n).scaleb(e),
                     st.integers(-(10**20), 10**20), st.integers(-30, 30))
# Literal text as a JSON parser would keep it: plain (``4.10``) or with an exponent (``1.5E+3``).
json_numbers = decimals.flatmap(lambda d: st.sampled_from([JsonNumber(format(d, "f")),
                                                           JsonNumber(str(d))]))
values = st.one_of(st.none(), st.just(""), st.text(max_size=20), st.booleans(),
                   st.integers(-(10**30), 10**30), decimals, json_numbers)
param_dicts = st.dictionaries(ascii_keys, values, max_size=10)
nonempty_text = st.text(min_size=1, max_size=20)
secrets_ = st.text(max_size=24)
sorts: st.SearchStrategy[SignSort] = st.sampled_from(["casefold", "ascii"])


class TestWorkedExample:
    """The API doc's authentication example is the test vector."""

    def test_casefold_string(self) -> None:
        """The default sort reproduces the doc's joined string exactly."""
        assert canonical_string(DOC_PARAMS) == DOC_STRING

    def test_casefold_sign(self) -> None:
        """The doc's example gives d826a31317bb52a1832cf023bc7b3a07."""
        assert compute_sign(DOC_PARAMS, SECRET) == DOC_SIGN
        assert _md5(DOC_STRING + SECRET) == DOC_SIGN

    def test_ascii_counterpart(self) -> None:
        """COSIGNER_SIGN_SORT=ascii puts upper-case keys first, as plain byte order does."""
        assert canonical_string(DOC_PARAMS, "ascii") == ASCII_STRING
        assert compute_sign(DOC_PARAMS, SECRET, "ascii") == _md5(ASCII_STRING + SECRET)
        assert compute_sign(DOC_PARAMS, SECRET, "ascii") != DOC_SIGN

    def test_sign_parameter_is_excluded(self) -> None:
        """A Sign already among the parameters does not take part."""
        assert compute_sign({**DOC_PARAMS, "Sign": "whatever"}, SECRET) == DOC_SIGN

    def test_verify_sign_accepts_the_vector(self) -> None:
        """verify_sign accepts the doc's Sign, in either hex case, and nothing else."""
        assert verify_sign(DOC_PARAMS, DOC_SIGN, SECRET)
        assert verify_sign(DOC_PARAMS, DOC_SIGN.upper(), SECRET)
        assert not verify_sign(DOC_PARAMS, DOC_SIGN, SECRET + "x")
        assert not verify_sign(DOC_PARAMS, DOC_SIGN[:-1] + "0", SECRET)

    def test_unknown_sort_is_refused(self) -> None:
        """Only casefold and ascii exist; the error names the setting."""
        with pytest.raises(ValueError, match="COSIGNER_SIGN_SORT"):
            canonical_string(DOC_PARAMS, "natural")  # type: ignore[arg-type]


class TestFormatValue:
    """How each parameter value is written into the signed string."""

    @pytest.mark.parametrize("value", [None, ""])
    def test_empty_values_are_dropped(self, value: object) -> None:
        """None and "" contribute nothing, not even ``key=``."""
        assert format_value(value) is None
        assert canonical_string({"a": "1", "b": value, "c": "3"}) == "a=1&c=3"

    @pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false")])
    def test_booleans(self, value: bool, text: str) -> None:
        """Booleans are lower-case true/false, never 1/0 or True."""
        assert format_value(value) == text

    @pytest.mark.parametrize(("value", "text"), [(0, "0"), (-7, "-7"),
                                                 (10**25, "1" + "0" * 25)])
    def test_integers(self, value: int, text: str) -> None:
        """Integers are plain decimal."""
        assert format_value(value) == text

    @pytest.mark.parametrize(("value", "text"), [
        (Decimal("4.10"), "4.10"), (Decimal("1E+3"), "1000"), (Decimal("1E-8"), "0.00000001"),
        (Decimal("-2.5E+2"), "-250"), (Decimal("0.000"), "0.000"),
    ])
    def test_decimals_never_use_an_exponent(self, value: Decimal, text: str) -> None:
        """Decimals are written in plain notation, trailing zeros kept."""
        assert format_value(value) == text

    @pytest.mark.parametrize("literal", ["4.10", "10.11", "0.000000000000000001", "-3.0"])
    def test_json_numbers_keep_their_literal(self, literal: str) -> None:
        """A JSON number literal is signed as exactly the text the API sent."""
        assert format_value(JsonNumber(literal)) == literal

    def test_json_number_exponent_becomes_plain(self) -> None:
        """An exponent literal is written in plain notation (DESIGN: never an exponent)."""
        assert format_value(JsonNumber("1.5e3")) == "1500"

    def test_strings_are_verbatim(self) -> None:
        """Strings keep spaces, case and non-ASCII characters."""
        assert format_value(" John Li 提现 ") == " John Li 提现 "

    def test_nested_values_are_compact_json(self) -> None:
        """Objects and lists are compact JSON with exact numbers."""
        assert format_value({"a": [1, JsonNumber("2.50")], "b": "é"}) == '{"a":[1,2.50],"b":"é"}'

    def test_floats_are_refused(self) -> None:
        """A binary float never becomes part of a signature."""
        with pytest.raises(TypeError, match="float"):
            format_value(4.1)
        with pytest.raises(TypeError):
            compute_sign({"amount": 4.1}, SECRET)
        assert not verify_sign({"amount": 4.1}, DOC_SIGN, SECRET)

    @pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"),
                                       JsonNumber("-Infinity")])
    def test_non_finite_numbers_are_refused(self, value: object) -> None:
        """NaN and infinities cannot be signed."""
        with pytest.raises(ValueError, match="non-finite"):
            format_value(value)

    @pytest.mark.parametrize("value", [b"bytes", object(), {1, 2}])
    def test_other_types_are_refused(self, value: object) -> None:
        """Anything without a rule is a TypeError naming the type."""
        with pytest.raises(TypeError, match=type(value).__name__):
            format_value(value)


class TestSignProperties:
    """Invariants of compute_sign over generated parameters."""

    @given(params=param_dicts, secret=secrets_, sort=sorts, data=st.data())
    def test_parameter_order_never_matters(self, params: dict[str, Any], secret: str,
                                           sort: SignSort, data: st.DataObject) -> None:
        """Any insertion order of the same parameters gives the same Sign."""
        shuffled = dict(data.draw(st.permutations(list(params.items()))))
        assert compute_sign(shuffled, secret, sort) == compute_sign(params, secret, sort)

    @given(params=st.dictionaries(ascii_keys, nonempty_text, min_size=1, max_size=8),
           secret=secrets_, sort=sorts, data=st.data())
    def test_changing_any_value_changes_the_sign(self, params: dict[str, str], secret: str,
                                                 sort: SignSort, data: st.DataObject) -> None:
        """Replacing one character of one value changes the Sign."""
        key = data.draw(st.sampled_from(sorted(params)))
        if key == "Sign":
            return
        value = params[key]
        index = data.draw(st.integers(0, len(value) - 1))
        char = data.draw(st.characters(exclude_categories=("Cs",))  # text, not lone surrogates
                         .filter(lambda c: c != value[index]))
        changed = {**params, key: value[:index] + char + value[index + 1:]}
        assert compute_sign(changed, secret, sort) != compute_sign(params, secret, sort)

    @given(params=param_dicts, secret=secrets_, other=secrets_, sort=sorts)
    def test_changing_the_secret_changes_the_sign(self, params: dict[str, Any], secret: str,
                                                  other: str, sort: SignSort) -> None:
        """Two different secrets never give the same Sign."""
        if other == secret:
            return
        assert compute_sign(params, secret, sort) != compute_sign(params, other, sort)

    @given(params=param_dicts, sign=st.one_of(st.text(), st.integers(), st.none()), sort=sorts)
    def test_sign_is_excluded(self, params: dict[str, Any], sign: object, sort: SignSort) -> None:
        """Whatever Sign value is present, the result is the same as without it."""
        params.pop("Sign", None)
        assert (compute_sign({**params, "Sign": sign}, SECRET, sort)
                == compute_sign(params, SECRET, sort))

    @given(keys=st.lists(st.text(min_size=1, max_size=6).filter(lambda k: "=" not in k
                                                                 and "&" not in k),
                         min_size=1, max_size=12, unique=True), data=st.data())
    def test_case_insensitive_sort_is_a_total_order(self, keys: list[str],
                                                    data: st.DataObject) -> None:
        """Keys differing only in case still get one deterministic, casefold-ascending order."""
        keys = [*keys, *(k.swapcase() for k in keys if k.swapcase() not in keys)]
        keys = [k for k in keys if k != "Sign"]  # the one key that is never signed
        assume(keys)
        order = data.draw(st.permutations(keys))
        first = canonical_string({k: "v" for k in order})
        again = canonical_string({k: "v" for k in reversed(order)})
        assert first == again
        written = [pair.removesuffix("=v") for pair in first.split("&")]
        assert sorted(written) == sorted(keys)
        folded = [k.casefold() for k in written]
        assert folded == sorted(folded)

    @given(params=st.dictionaries(ascii_keys, values, max_size=12), secret=secrets_, sort=sorts)
    def test_agrees_with_an_independent_implementation(self, params: dict[str, Any],
                                                       secret: str, sort: SignSort) -> None:
        """compute_sign equals a separate reading of DESIGN section 1 on generated input."""
        assert compute_sign(params, secret, sort) == _reference_sign(params, secret, sort)

    def test_reference_implementation_reproduces_the_vector(self) -> None:
        """The independent implementation itself passes the doc's worked example."""
        assert _reference_sign(DOC_PARAMS, SECRET, "casefold") == DOC_SIGN
        assert _ref_plain(Decimal("-0E-5")) == "-0.00000"
        assert _ref_plain(Decimal("0E+3")) == "0"


class TestCallbacks:
    """verify_callback checks the ``signature`` of C2C order callbacks."""

    @given(fields=st.dictionaries(ascii_keys.filter(lambda k: k != "signature"),
                                  st.one_of(nonempty_text, st.integers(), json_numbers),
                                  min_size=1, max_size=8),
           secret=secrets_, sort=sorts)
    def test_round_trip(self, fields: dict[str, Any], secret: str, sort: SignSort) -> None:
        """A body signed with sign_callback verifies, as raw bytes, text or mapping."""
        body = {**fields, "signature": sign_callback(fields, secret, sort)}
        raw = dumps_exact(body)
        assert verify_callback(raw, secret, sort)
        assert verify_callback(raw.encode(), secret, sort)
        assert verify_callback(body, secret, sort)
        assert not verify_callback(raw, secret + "x", sort)

    @given(fields=st.dictionaries(ascii_keys.filter(lambda k: k != "signature"), nonempty_text,
                                  min_size=1, max_size=8), data=st.data())
    def test_tampered_body_is_refused(self, fields: dict[str, str], data: st.DataObject) -> None:
        """Changing any one field value after signing makes the callback fail."""
        body = {**fields, "signature": sign_callback(fields, SECRET)}
        key = data.draw(st.sampled_from(sorted(fields)))
        body[key] = body[key] + data.draw(st.characters())
        assert not verify_callback(dumps_exact(body), SECRET)

    def test_a_field_named_sign_is_signed_too(self) -> None:
        """A callback field called ``Sign`` is covered: changing it fails the check
        (hypothesis found ``{"Sign": "0"}`` tampered undetected)."""
        body = {"Sign": "0", "signature": sign_callback({"Sign": "0"}, SECRET)}
        assert verify_callback(dumps_exact(body), SECRET)
        body["Sign"] = "1"
        assert not verify_callback(dumps_exact(body), SECRET)

    def test_number_literal_is_signed_as_sent(self) -> None:
        """``"dealAmount": 10.10`` is signed as 10.10, so a float parse would break it."""
        fields = {"orderNo": "O1", "dealAmount": JsonNumber("10.10"), "status": 2}
        raw = dumps_exact({**fields, "signature": sign_callback(fields, SECRET)})
        assert '"dealAmount":10.10' in raw
        assert verify_callback(raw, SECRET)
        assert not verify_callback(raw.replace("10.10", "10.1"), SECRET)

    @pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'{"a":"1"}', b'{"signature":""}',
                                      b'{"a":"1","signature":5}', b'{"a":1.5,"signature":"x"}'])
    def test_malformed_bodies_are_refused(self, body: bytes) -> None:
        """Bodies that are not a signed JSON object verify as False, never raise."""
        assert not verify_callback(body, SECRET)


class TestSignAuth:
    """SignAuth puts the six public headers and the Sign on each request."""

    def _signed(self, body: Mapping[str, Any], **kwargs: Any) -> httpx.Request:
        auth = SignAuth("meraojiasdoa123", "asdhuasdaosd", SECRET, clock=lambda: 1566781991111,
                        nonce=lambda: "dnasja1N", **kwargs)
        request = httpx.Request("POST", "https://sandbox.1bitpay.io/api/x",
                                content=encode_body(body))
        return next(auth.auth_flow(request))

    def test_reproduces_the_doc_example(self) -> None:
        """With the doc's clock, nonce and body, the Sign header is the doc's vector."""
        request = self._signed({"orderNo": "Or12898771811", "name": "John Li"})
        for name in PUBLIC_HEADERS:
            assert request.headers[name]
        assert request.headers["SignType"] == "1"
        assert request.headers["Sign"] == DOC_SIGN

    def test_signs_the_exact_body(self) -> None:
        """The Sign covers the body as sent, so an independent check accepts it."""
        request = self._signed({"value": Decimal("4.10"), "id": 3, "memo": "é"}, sort="ascii")
        fields = {**json.loads(request.content), **{h: request.headers[h] for h in PUBLIC_HEADERS}}
        assert fields["value"] == "4.10"
        assert request.headers["Sign"] == _reference_sign(fields, SECRET, "ascii")

    @given(st.dictionaries(
        st.text(string.ascii_letters, min_size=1, max_size=8),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12),
                  st.decimals(allow_nan=False, allow_infinity=False, places=4),
                  st.decimals(allow_nan=False, allow_infinity=False, places=2).map(
                      lambda d: JsonNumber(format(d, "f"))),
                  st.lists(st.integers(), max_size=3)),
        max_size=6))
    def test_fields_sign_like_their_body(self, fields: dict[str, Any]) -> None:
        """Signing the fields a body came from gives the Sign of the body parsed back."""
        auth = SignAuth("M1", "key", SECRET, clock=lambda: 1566781991111, nonce=lambda: "abcd1234")
        kwargs = signed_body(fields)
        from_fields = next(auth.auth_flow(httpx.Request("POST", "https://x.invalid/", **kwargs)))
        from_body = next(auth.auth_flow(httpx.Request("POST", "https://x.invalid/",
                                                      content=kwargs["content"])))
        assert from_fields.headers["Sign"] == from_body.headers["Sign"]

    def test_fields_are_not_parsed_back(self) -> None:
        """Issue 12: with the fields on the request, the body is not parsed again."""
        auth = SignAuth("meraojiasdoa123", "asdhuasdaosd", SECRET, clock=lambda: 1566781991111,
                        nonce=lambda: "dnasja1N")
        fields = {"orderNo": "Or12898771811", "name": "John Li"}
        request = httpx.Request("POST", "https://x.invalid/", content=b"not json",
                                extensions={"cosigner.sign_fields": fields})
        assert next(auth.auth_flow(request)).headers["Sign"] == DOC_SIGN

    def test_repr_hides_the_secret(self) -> None:
        """The auth object's repr never shows the secret."""
        auth = SignAuth("M1", "key", "s3cr3t-value")
        assert "s3cr3t-value" not in repr(auth)

    def test_bodies_must_be_objects(self) -> None:
        """A JSON array body cannot be signed."""
        auth = SignAuth("M1", "key", SECRET)
        request = httpx.Request("POST", "https://example.invalid/", content=b"[1]")
        with pytest.raises(TypeError):
            next(auth.auth_flow(request))

    def test_nonce_and_timestamp_shapes(self) -> None:
        """Nonce is 8 letters/digits; TimeStamp has 13 digits; signs compare case-blind."""
        nonce = new_nonce()
        assert len(nonce) == 8
        assert nonce.isalnum()
        assert nonce.isascii()
        assert len(str(timestamp_ms())) == 13
        assert signs_equal("ABCDEF", "abcdef")
        assert not signs_equal("abc", "abd")
