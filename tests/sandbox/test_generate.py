"""Generated pending items: realistic, valid addresses, reproducible."""

from __future__ import annotations

from decimal import Decimal

import base58
import pytest
from Crypto.Hash import keccak

from cosigner.sandbox.generate import eip55_address, generate_items, tron_address


def is_eip55(address: str) -> bool:
    """An independent EIP-55 check (keccak-256 of the lowercase hex)."""
    hex_part = address[2:]
    digest = keccak.new(data=hex_part.lower().encode(), digest_bits=256).hexdigest()
    return all((c.isupper() if int(digest[i], 16) >= 8 else c.islower()) if c.isalpha() else True
               for i, c in enumerate(hex_part))


class TestAddresses:
    def test_eip55_known_vector(self) -> None:
        """The EIP-55 reference vector is spelled as the EIP spells it."""
        account = bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
        assert eip55_address(account) == "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

    def test_tron_round_trip(self) -> None:
        """A tron address decodes (checksum verified) to 0x41 and the account."""
        account = bytes(range(20))
        address = tron_address(account)
        assert address.startswith("T")
        assert base58.b58decode_check(address) == b"\x41" + account

    def test_wrong_length_refused(self) -> None:
        """Accounts are 20 bytes."""
        with pytest.raises(ValueError, match="20 bytes"):
            eip55_address(b"\x00" * 19)


class TestGenerateItems:
    def test_same_seed_same_items(self) -> None:
        """A seed reproduces the batch; another seed does not."""
        assert generate_items(20, seed=5) == generate_items(20, seed=5)
        assert generate_items(20, seed=5) != generate_items(20, seed=6)

    def test_items_are_well_formed(self) -> None:
        """Every item has valid addresses for its chain and a positive decimal string amount."""
        items = generate_items(300, seed=1)
        assert {i["chainId"] for i in items} == {"1", "56", "195"}
        for item in items:
            assert isinstance(item["amount"], str)
            amount = Decimal(item["amount"])
            assert amount > 0
            assert "E" not in item["amount"]
            for key in ("fromAddress", "toAddress"):
                address = item[key]
                if item["chainId"] == "195":
                    assert base58.b58decode_check(address)[0] == 0x41
                else:
                    assert address.startswith("0x")
                    assert len(address) == 42
                    assert is_eip55(address)

    def test_sources_repeat_like_hot_wallets(self) -> None:
        """Transfers of a chain come from a handful of wallets."""
        items = generate_items(200, seed=3, chains=["56"])
        assert len({i["fromAddress"] for i in items}) <= 3

    def test_start_id(self) -> None:
        """start_id numbers the items; without it they carry no id."""
        assert [i["id"] for i in generate_items(3, seed=1, start_id=40)] == [40, 41, 42]
        assert "id" not in generate_items(1, seed=1)[0]

    @pytest.mark.parametrize("chains", [["999"], []])
    def test_unknown_or_no_chain(self, chains: list[str]) -> None:
        """Chains without an address format, or none at all, are refused."""
        with pytest.raises(ValueError, match="chain"):
            generate_items(1, chains=chains)
