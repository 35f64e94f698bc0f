"""Realistic pending items for the sandbox, reproducible from a seed.

Chains ``"56"`` (BSC) and ``"1"`` (Ethereum) get EIP-55 checksummed evm
addresses, ``"195"`` (TRON) base58check ``T...`` addresses.  Each chain has a
few merchant hot wallets the transfers come *from*, and destinations that
repeat now and then, like real payouts.  Amounts are decimal strings with the
precision people actually use (``"25"``, ``"1250.5"``, ``"0.034521"``).

The address encoders are here rather than imported from ``cosigner.policy``,
so that the emulator never shares code with what it is used to test.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import base58
import sha3

EVM_CHAINS = frozenset({"1", "56"})
TRON_CHAINS = frozenset({"195"})
DEFAULT_CHAINS: tuple[str, ...] = ("56", "1", "195")
_TRON_VERSION = 0x41


def eip55_address(account: bytes) -> str:
    """The EIP-55 checksummed evm address of a 20-byte account."""
    if len(account) != 20:
        raise ValueError("an evm account is 20 bytes")
    hex_part = account.hex()
    digest: str = sha3.keccak_256(hex_part.encode("ascii")).hexdigest()
    return "0x" + "".join(c.upper() if c.isalpha() and int(digest[i], 16) >= 8 else c
                          for i, c in enumerate(hex_part))


def tron_address(account: bytes) -> str:
    """The base58check TRON address (version byte 0x41) of a 20-byte account."""
    if len(account) != 20:
        raise ValueError("a tron account is 20 bytes")
    return base58.b58encode_check(bytes([_TRON_VERSION]) + account).decode("ascii")


def address_for(chain_id: str, account: bytes) -> str:
    """The address of ``account`` in the format of ``chain_id``."""
    if chain_id in TRON_CHAINS:
        return tron_address(account)
    if chain_id in EVM_CHAINS:
        return eip55_address(account)
    raise ValueError(f"no address format for chain {chain_id!r} (use 56, 1 or 195)")


def _amount(rng: random.Random, chain_id: str) -> str:
    shape = rng.random()
    if shape < 0.35:          # round payouts: 5, 20, 1500
        value = Decimal(rng.choice((1, 2, 5, 10, 20, 25, 50, 100, 250, 500, 1000, 1500, 5000)))
    elif shape < 0.8:         # money with cents: 123.45, 9.9
        value = Decimal(rng.randint(100, 2_500_000)) / 100
    else:                     # dust and token precision: 0.034521
        places = 6 if chain_id in TRON_CHAINS else rng.choice((6, 8))
        value = Decimal(rng.randint(1, 10**places)) / Decimal(10) ** places
    text = format(value.normalize(), "f")
    return text


def generate_items(count: int, *, seed: int | None = None,
                   chains: Sequence[str] = DEFAULT_CHAINS,
                   start_id: int | None = None) -> list[dict[str, Any]]:
    """``count`` pending items as the API lists them.  Same seed, same items.

    Without ``start_id`` the items carry no ``id`` and the state numbers them.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    for chain in chains:
        address_for(chain, bytes(20))  # refuse unknown chains before generating anything
    if not chains:
        raise ValueError("at least one chain is needed")
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    wallets = {c: [rng.randbytes(20) for _ in range(3)] for c in chains}
    regulars = {c: [rng.randbytes(20) for _ in range(8)] for c in chains}
    items: list[dict[str, Any]] = []
    for n in range(count):
        chain = rng.choice(list(chains))
        source = rng.choice(wallets[chain])
        dest = rng.choice(regulars[chain]) if rng.random() < 0.4 else rng.randbytes(20)
        item: dict[str, Any] = {}
        if start_id is not None:
            item["id"] = start_id + n
        item.update({"fromAddress": address_for(chain, source),
                     "toAddress": address_for(chain, dest),
                     "amount": _amount(rng, chain), "chainId": chain})
        items.append(item)
    return items
