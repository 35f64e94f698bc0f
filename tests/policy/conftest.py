"""Shared fixtures for the policy tests: policy files in tmp_path, items, addresses."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cosigner.errors import PolicyError
from cosigner.models import PendingItem
from cosigner.policy import CompiledPolicy, load_policy
from cosigner.policy.addresses import eip55, tron_from_bytes


def evm(tag: str) -> str:
    """A valid EIP-55 address derived from *tag*."""
    return eip55("0x" + hashlib.sha256(tag.encode()).digest()[:20].hex())


def tron(tag: str) -> str:
    """A valid tron address derived from *tag*."""
    return tron_from_bytes(hashlib.sha256(tag.encode()).digest()[:20])


NOW = datetime(2024, 6, 3, 10, 0, tzinfo=UTC)  # a Monday
TREASURY, CUSTOMER, HOT, BAD = evm("treasury"), evm("customer"), evm("hot"), evm("bad")
T_TREASURY, T_CUSTOMER, T_HOT = tron("treasury"), tron("customer"), tron("hot")

HEADER = """\
version: 1
name: t
chains:
  "56": {name: bsc, address: evm, decimals: 18}
  "195": {name: tron, address: tron, decimals: 6}
"""
HEADER_LINES = HEADER.count("\n")


def item(to: str = CUSTOMER, amount: Any = "5", chain: Any = "56", source: str | None = None,
         **extra: Any) -> PendingItem:
    """A pending item, evm by default."""
    if source is None:
        source = T_HOT if chain == "195" else HOT
    raw = {"id": 1, "fromAddress": source, "toAddress": to, "amount": amount, "chainId": chain}
    raw.update(extra)
    return PendingItem(raw)


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write a policy (dedented) and optional extra files; return the policy path."""

    def _write(text: str, name: str = "p.yaml", files: dict[str, str] | None = None) -> Path:
        for rel, content in (files or {}).items():
            target = tmp_path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def compile_(write: Callable[..., Path]) -> Callable[..., CompiledPolicy]:
    """Compile a policy body appended to HEADER."""

    def _compile(body: str = "", files: dict[str, str] | None = None) -> CompiledPolicy:
        return load_policy(write(HEADER + textwrap.dedent(body), files=files))

    return _compile


@pytest.fixture
def problems(write: Callable[..., Path]) -> Callable[..., list[str]]:
    """The problems of a failing policy (HEADER + body), with the file name left in."""

    def _problems(body: str, header: str = HEADER,
                  files: dict[str, str] | None = None) -> list[str]:
        path = write(header + textwrap.dedent(body), files=files)
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        return [p.replace(str(path.parent) + "/", "") for p in info.value.problems]

    return _problems
