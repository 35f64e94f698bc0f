"""Address formats: EIP-55, tron base58check, character hygiene."""

from __future__ import annotations

import pytest

from cosigner.policy import addresses

from .conftest import evm, tron


class TestEvm:
    def test_eip55_reference_vectors(self) -> None:
        """The EIP-55 specification's examples pass."""
        for a in ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                  "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
                  "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB"):
            assert addresses.is_evm(a)
            assert addresses.eip55(a.lower()) == a

    def test_bad_checksum(self) -> None:
        """One flipped letter case breaks the checksum."""
        assert not addresses.is_evm("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD")

    def test_single_case_needs_no_checksum(self) -> None:
        """All-lowercase and all-uppercase hex are accepted."""
        a = evm("x")
        assert addresses.is_evm(a.lower())
        assert addresses.is_evm("0x" + a[2:].upper())

    @pytest.mark.parametrize("bad", ["0x123", "0X" + "a" * 40, "0x" + "g" * 40, "a" * 42])
    def test_shape(self, bad: str) -> None:
        """Wrong shapes are refused."""
        assert not addresses.is_valid(bad, "evm")


class TestTron:
    def test_valid(self) -> None:
        """A generated tron address validates."""
        assert addresses.is_valid(tron("x"), "tron")

    def test_wrong_version_byte(self) -> None:
        """A base58check payload without the 0x41 version byte is refused."""
        import base58

        other = base58.b58encode_check(b"\x42" + bytes(20)).decode()
        assert not addresses.is_tron(other)

    def test_bad_checksum(self) -> None:
        """A changed character breaks the checksum."""
        a = tron("x")
        assert not addresses.is_tron(a[:-1] + ("1" if a[-1] != "1" else "2"))


class TestChars:
    @pytest.mark.parametrize("text", ["", "a b", "a\tb", "a\u200bb", "аbc", "x" * 129])
    def test_unclean(self, text: str) -> None:
        """Empty, whitespace, zero-width, non-ASCII and over-long text is refused."""
        assert not addresses.is_valid(text, "other")

    def test_other_accepts_clean_text(self) -> None:
        """The other format accepts any printable ASCII."""
        assert addresses.is_valid("bc1q-anything_123", "other")
        assert addresses.key("AbC", "other") == "AbC"
