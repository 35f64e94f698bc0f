"""Verification of callback requests and the order-state transition, without I/O."""

from __future__ import annotations

import json

import pytest

from cosigner.api.auth import sign_callback
from cosigner.callbacks.verify import (
    MAX_BODY,
    OrderCallback,
    Outcome,
    Rejection,
    SourcePolicy,
    Transition,
    parse_networks,
    transition,
    verify,
)
from cosigner.models import JsonNumber, dumps_exact, loads_exact
from cosigner.sandbox.callbacks import callback_body
from cosigner.sandbox.state import Order
from tests.callbacks.conftest import SECRET, fields, signed


def rejected(result: OrderCallback | Rejection) -> Rejection:
    assert isinstance(result, Rejection), result
    return result


def accepted(result: OrderCallback | Rejection) -> OrderCallback:
    assert isinstance(result, OrderCallback), result
    return result


class TestSignature:
    @pytest.mark.parametrize("sort", ["casefold", "ascii"])
    def test_signed_callback_verifies_in_both_sort_modes(self, sort: str) -> None:
        """A callback signed under either sort mode verifies under that mode."""
        callback = accepted(verify(signed(sort=sort), SECRET, sort))  # type: ignore[arg-type]
        assert (callback.order_no, callback.status, callback.deal_amount) == (
            "335793449653514240", 1, "10.50")

    def test_sandbox_callback_verifies(self) -> None:
        """What the sandbox sends (the provider's emulator) verifies."""
        order = Order(order_no="42", merchant_no="M", merchant_order_no="m-1", order_type=2,
                      crypto_amount="7.000", crypto_currency="USDT", legal_currency="CNY",
                      async_url="http://x", status=0, created_ms=0, updated_ms=0, request={})
        callback = accepted(verify(callback_body(order, 9, SECRET), SECRET, "casefold"))
        assert (callback.status, callback.deal_amount, callback.order_type) == (9, "7.000", 2)

    def test_wrong_secret_is_bad_signature(self) -> None:
        """Signed with another secret: bad_signature, 401."""
        result = rejected(verify(signed(secret="not-the-secret"), SECRET, "casefold"))
        assert (result.outcome, result.http_status) == (Outcome.BAD_SIGNATURE, 401)

    def test_changed_field_is_bad_signature(self) -> None:
        """A field changed after signing (the amount) fails the signature."""
        body = signed().replace(b"10.50", b"99.50")
        assert rejected(verify(body, SECRET, "casefold")).outcome == Outcome.BAD_SIGNATURE

    def test_amount_text_is_signed_exactly(self) -> None:
        """10.5 and 10.50 are different texts: the signature over one rejects the other."""
        body = signed(amount="10.5").replace(b"10.5,", b"10.50,")
        assert rejected(verify(body, SECRET, "casefold")).outcome == Outcome.BAD_SIGNATURE

    def test_extra_signed_field_is_accepted(self) -> None:
        """Fields beyond the doc's are covered by the signature, so they may come."""
        assert accepted(verify(signed(extra="x"), SECRET, "casefold")).status == 1

    def test_a_field_named_sign_is_signed_too(self) -> None:
        """Regression: the callback check left a body field named ``Sign`` out of the
        signature (the request rule), so one added to a captured callback still passed
        and one the provider signed failed.  Every field but ``signature`` is signed."""
        assert accepted(verify(signed(Sign="provider"), SECRET, "casefold")).status == 1
        data = loads_exact(signed())
        data["Sign"] = "added-after-signing"
        body = dumps_exact(data).encode("utf-8")
        assert rejected(verify(body, SECRET, "casefold")).outcome == Outcome.BAD_SIGNATURE

    def test_uppercase_signature_verifies(self) -> None:
        """The hex comparison ignores case, as for request signs."""
        data = loads_exact(signed())
        data["signature"] = data["signature"].upper()
        body = dumps_exact(data).encode()
        assert accepted(verify(body, SECRET, "casefold")).status == 1


class TestShape:
    @pytest.mark.parametrize(("body", "why"), [
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"status": 1', "not JSON"),
        (b'"status"', "not a JSON object"),
    ])
    def test_not_an_object(self, body: bytes, why: str) -> None:
        """Anything but one JSON object is malformed (400)."""
        result = rejected(verify(body, SECRET, "casefold"))
        assert (result.outcome, result.http_status) == (Outcome.MALFORMED, 400)
        assert why in result.reason

    def test_duplicate_key_is_malformed(self) -> None:
        """A duplicate key, even one whose both values are equal, is malformed."""
        body = signed().replace(b'"status":1,', b'"status":1,"status":1,')
        result = rejected(verify(body, SECRET, "casefold"))
        assert result.outcome == Outcome.MALFORMED
        assert "duplicate key 'status'" in result.reason

    def test_nested_duplicate_key_is_malformed(self) -> None:
        """Duplicate keys inside a nested object are refused too."""
        body = signed().replace(b"{", b'{"x":{"a":1,"a":2},', 1)
        assert "duplicate key" in rejected(verify(body, SECRET, "casefold")).reason

    @pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
    def test_non_finite_constants_are_malformed(self, constant: bytes) -> None:
        """NaN and Infinity are not JSON numbers."""
        body = signed().replace(b"10.50", constant)
        assert rejected(verify(body, SECRET, "casefold")).outcome == Outcome.MALFORMED

    @pytest.mark.parametrize(("name", "value"), [
        ("status", 10), ("status", -3), ("status", True), ("status", "1"), ("status", None),
        ("orderType", 3), ("orderType", "1"), ("orderType", False),
        ("dealAmount", "-1"), ("dealAmount", "abc"), ("dealAmount", True),
        ("dealAmount", None), ("dealAmount", " 1"), ("dealAmount", [1]),
        ("orderNo", ""), ("orderNo", 5), ("orderNo", "  "), ("orderNo", "a\nb"),
        ("orderNo", "x" * 129), ("merchantOrderNo", None), ("signature", ""),
        ("signature", 1),
    ])
    def test_wrong_field(self, name: str, value: object) -> None:
        """Each of the doc's fields with a wrong type or value is malformed."""
        data = fields()
        data["signature"] = "0" * 32
        data[name] = value
        result = rejected(verify(json.dumps(data).encode(), SECRET, "casefold"))
        assert result.outcome == Outcome.MALFORMED
        assert name in result.reason

    @pytest.mark.parametrize("name", ["status", "dealAmount", "orderNo", "merchantOrderNo",
                                      "orderType", "signature"])
    def test_missing_field(self, name: str) -> None:
        """Each of the doc's fields is required."""
        data = loads_exact(signed())
        del data[name]
        assert rejected(verify(dumps_exact(data).encode(), SECRET, "casefold")).outcome == \
            Outcome.MALFORMED

    @pytest.mark.parametrize(("value", "text"), [
        ("10.500", "10.500"), (10, "10"), (JsonNumber("1E+2"), "1E+2"),
        (JsonNumber("0.000001"), "0.000001")])
    def test_amount_as_string_or_integer_keeps_its_text(self, value: object,
                                                         text: str) -> None:
        """dealAmount may come as a number literal, a string or an integer; its exact text
        is kept."""
        data = {**fields(), "dealAmount": value}
        data["signature"] = sign_callback(data, SECRET)
        assert accepted(verify(dumps_exact(data).encode(), SECRET, "casefold")).deal_amount \
            == text

    def test_body_over_64_kib_is_too_large(self) -> None:
        """A body over 64 KiB is refused with 413 before it is parsed."""
        body = signed(padding="x" * MAX_BODY)
        result = rejected(verify(body, SECRET, "casefold"))
        assert (result.outcome, result.http_status) == (Outcome.MALFORMED, 413)

    def test_content_hash_ignores_whitespace_and_key_order(self) -> None:
        """The same callback re-serialised has the same content hash."""
        body = signed()
        items = reversed(list(loads_exact(body).items()))
        again = "{\n" + ",\n".join(f"  {dumps_exact(k)}: {dumps_exact(v)}" for k, v in items) + "}"
        one = accepted(verify(body, SECRET, "casefold"))
        two = accepted(verify(again.encode(), SECRET, "casefold"))
        assert one.content_hash == two.content_hash
        assert one.body != two.body


class TestSource:
    def test_no_allow_list_admits_anyone(self) -> None:
        """Without COSIGNER_CALLBACK_ALLOW_IPS every source may post (the signature decides)."""
        assert SourcePolicy().check("198.51.100.7", None) is None
        assert SourcePolicy().check(None, None) is None

    def test_allow_list(self) -> None:
        """Inside a listed network: allowed; outside or unknown: forbidden (403)."""
        policy = SourcePolicy(allow=parse_networks("10.1.0.0/16, 2001:db8::/32", "X"))
        assert policy.check("10.1.2.3", None) is None
        assert policy.check("2001:db8::5", None) is None
        assert policy.check("::ffff:10.1.2.3", None) is None
        denied = policy.check("10.2.0.1", None)
        assert denied is not None
        assert (denied.outcome, denied.http_status) == (Outcome.FORBIDDEN, 403)
        assert policy.check(None, None) is not None

    def test_forwarded_for_is_ignored_from_an_untrusted_peer(self) -> None:
        """A client cannot claim an allowed address through X-Forwarded-For."""
        policy = SourcePolicy(allow=parse_networks("10.1.0.0/16", "X"))
        assert policy.check("203.0.113.9", "10.1.2.3") is not None

    def test_trusted_proxy_forwarded_for(self) -> None:
        """Behind a trusted proxy the right-most untrusted X-Forwarded-For hop decides."""
        policy = SourcePolicy(allow=parse_networks("10.1.0.0/16", "X"),
                              trusted_proxies=parse_networks("192.168.0.0/24", "Y"))
        assert policy.check("192.168.0.2", "10.1.2.3") is None
        assert policy.check("192.168.0.2", "10.1.2.3, 192.168.0.3") is None
        # a forged left-most entry does not help: the proxy appended the real client
        assert policy.check("192.168.0.2", "10.1.2.3, 203.0.113.9") is not None
        assert policy.check("192.168.0.2", "garbage") is not None
        assert policy.check("192.168.0.2", None) is not None  # the proxy itself

    def test_bad_network_names_the_setting(self) -> None:
        """An entry that is no address or CIDR is a settings error naming the setting."""
        with pytest.raises(ValueError, match="COSIGNER_CALLBACK_ALLOW_IPS: 'nope'"):
            parse_networks("10.0.0.0/8, nope", "COSIGNER_CALLBACK_ALLOW_IPS")


class TestTransition:
    @pytest.mark.parametrize(("current", "new", "expected"), [
        (None, 2, Transition.APPLIED),
        (None, 1, Transition.APPLIED),
        (0, 2, Transition.APPLIED),
        (2, 3, Transition.APPLIED),
        (3, 8, Transition.APPLIED),
        (2, 1, Transition.APPLIED),
        (5, -1, Transition.APPLIED),
        (2, 2, Transition.LATE),
        (5, 3, Transition.LATE),
        (3, 2, Transition.LATE),
        (2, 0, Transition.LATE),
        (1, 2, Transition.LATE),
        (9, 5, Transition.LATE),
        (-2, 0, Transition.LATE),
        (-1, 1, Transition.LATE),
        (1, 9, Transition.LATE),
        (1, 1, Transition.LATE),
    ])
    def test_order_state_only_moves_forward(self, current: int | None, new: int,
                                            expected: Transition) -> None:
        """Finals are never overwritten; a non-final no further than the current is late."""
        assert transition(current, new) == expected
