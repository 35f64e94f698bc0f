"""The canonical objects the shard signs, byte for byte (DESIGN section 1)."""

from __future__ import annotations

import json

import pytest

from cosigner.signing import approval_sign_object, collect_sign_object
from cosigner.signing.objects import approval_fields

FROM = "TGGh3cGp9P21Ebvg9JitjHoeJaKqrg3bRg"
TO = "TFMQrPdFWuPzFRXb42sxB22ABCVL6xSopV"


class TestApprovalSignObject:
    """approval_sign_object writes the doc's key order as compact UTF-8 JSON."""

    def test_is_byte_exact(self) -> None:
        """The doc's example object, with the amount text kept as "4.10"."""
        assert approval_sign_object(1, FROM, TO, "4.10", "56", 1) == (
            b'{"id":1,"from":"TGGh3cGp9P21Ebvg9JitjHoeJaKqrg3bRg",'
            b'"to":"TFMQrPdFWuPzFRXb42sxB22ABCVL6xSopV","value":"4.10","chainId":"56","status":1}')

    def test_reject_has_status_2(self) -> None:
        """A rejection signs status 2."""
        assert approval_sign_object(7, FROM, TO, "1", "195", 2).endswith(b',"status":2}')

    def test_value_text_is_kept_verbatim(self) -> None:
        """Amounts are never normalised: trailing zeros and long fractions stay."""
        for value in ("4.10", "0.000000000000000001", "100", "1.0"):
            obj = json.loads(approval_sign_object(1, FROM, TO, value, "56", 1))
            assert obj["value"] == value

    def test_non_ascii_is_raw_utf8(self) -> None:
        """ensure_ascii is off: non-ASCII text is UTF-8, never \\u escapes."""
        blob = approval_sign_object(2, "发送方", "Empfänger", "1", "56", 1)
        assert "发送方".encode() in blob
        assert "Empfänger".encode() in blob
        assert b"\\u" not in blob

    def test_json_special_characters_are_escaped(self) -> None:
        """Quotes and backslashes in a field keep the JSON well-formed."""
        blob = approval_sign_object(3, 'a"b', "c\\d", "1", "56", 1)
        assert json.loads(blob)["from"] == 'a"b'
        assert b'"from":"a\\"b","to":"c\\\\d"' in blob

    def test_fields_keep_the_signing_order(self) -> None:
        """approval_fields gives the approve body's fields in the signed order."""
        assert list(approval_fields(1, FROM, TO, "1", "56", 1)) == [
            "id", "from", "to", "value", "chainId", "status"]

    @pytest.mark.parametrize("status", [0, 3, -1, "1"])
    def test_status_must_be_1_or_2(self, status: object) -> None:
        """Any status other than 1 or 2 is a ValueError."""
        with pytest.raises(ValueError, match="status"):
            approval_sign_object(1, FROM, TO, "1", "56", status)  # type: ignore[arg-type]

    @pytest.mark.parametrize("item_id", [True, "1", 1.0, None])
    def test_id_must_be_an_integer(self, item_id: object) -> None:
        """The id is a JSON integer, never a bool, string or float."""
        with pytest.raises(TypeError, match="id"):
            approval_sign_object(item_id, FROM, TO, "1", "56", 1)  # type: ignore[arg-type]

    @pytest.mark.parametrize("position", range(4))
    def test_text_fields_must_be_strings(self, position: int) -> None:
        """from, to, value and chainId must be str (a number would lose its text)."""
        args: list[object] = [FROM, TO, "1", "56"]
        args[position] = 56
        with pytest.raises(TypeError, match="must be a string"):
            approval_sign_object(1, *args, 1)  # type: ignore[arg-type]


class TestCollectSignObject:
    """collect_sign_object signs {"isMain":1} or {"isMain":0}."""

    @pytest.mark.parametrize(("is_main", "expected"), [(1, b'{"isMain":1}'),
                                                       (0, b'{"isMain":0}')])
    def test_is_byte_exact(self, is_main: int, expected: bytes) -> None:
        """The doc's fund-collection object, compact."""
        assert collect_sign_object(is_main) == expected

    @pytest.mark.parametrize("is_main", [True, False, 2, -1, "1"])
    def test_refuses_other_values(self, is_main: object) -> None:
        """Booleans and anything but 0/1 are refused."""
        with pytest.raises(ValueError, match="isMain"):
            collect_sign_object(is_main)  # type: ignore[arg-type]
