"""Benchmarks: a generated policy of 1,000 rules and a 100,000-address list.

Runs once as a plain test under the default ``--benchmark-disable``; measure with
``pytest tests/policy/test_benchmark.py --benchmark-enable``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cosigner.models import Action, PendingItem
from cosigner.policy import Approval, CompiledPolicy, Ledger, evaluate, load_policy
from cosigner.policy.addresses import eip55, tron_from_bytes

RULES = 1_000
LISTED = 100_000
DECISIONS = 10_000
NOW = datetime(2024, 6, 3, 10, 0, tzinfo=UTC)


def _bytes(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()[:20]


def _evm(tag: str) -> str:
    return eip55("0x" + _bytes(tag).hex())


def _tron(tag: str) -> str:
    return tron_from_bytes(_bytes(tag))


def _address(i: int) -> tuple[str, str]:
    """Chain and destination for literal rule *i* (a third of them on tron)."""
    return ("195", _tron(f"dest-{i}")) if i % 3 == 2 else (("56", "1")[i % 3], _evm(f"dest-{i}"))


@pytest.fixture(scope="module")
def big_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the generated policy: a sanctions list, 1,000 rules, three limits."""
    root = tmp_path_factory.mktemp("bench")
    listed = [_evm(f"listed-{i}") if i % 4 else _tron(f"listed-{i}") for i in range(LISTED)]
    (root / "sanctioned.txt").write_text("# generated\n" + "\n".join(listed) + "\n",
                                         encoding="utf-8")
    rules = ["  - {name: block-sanctioned, to: {in: [sanctioned]}, action: reject}"]
    for i in range(RULES - 2):
        chain, dest = _address(i)
        action = ("approve", "approve", "hold", "reject")[i % 4]
        rules.append(f'  - {{name: r{i}, chain: "{chain}", to: {{in: ["{dest}"]}}, '
                     f'amount: {{max: "{1000 + i}"}}, action: {action}}}')
    rules.append('  - {name: small, amount: {max: "100"}, action: approve}')
    (root / "policy.yaml").write_text("""\
version: 1
name: bench
chains:
  "56": {name: bsc, address: evm, decimals: 18}
  "1": {name: ethereum, address: evm, decimals: 18}
  "195": {name: tron, address: tron, decimals: 6}
lists:
  sanctioned: {file: sanctioned.txt}
limits:
  - {name: per-chain, window: 24h, max_amount: "100000000", max_count: 1000000}
  - {name: per-to, window: 1h, max_count: 1000, per: to}
  - {name: tron-daily, chain: "195", window: 24h, max_amount: "50000000"}
rules:
""" + "\n".join(rules) + "\n", encoding="utf-8")
    return root / "policy.yaml"


def _items(n: int) -> list[PendingItem]:
    """A mix: literal-rule destinations, sanctioned ones, unknown ones, invalid ones."""
    items = []
    for i in range(n):
        kind = i % 10
        if kind < 6:
            chain, dest = _address(i % (RULES - 2))
        elif kind < 8:
            chain, dest = "56", _evm(f"listed-{(i * 7) % LISTED | 1}")
        elif kind < 9:
            chain, dest = "56", _evm(f"stranger-{i}")
        else:
            chain, dest = "1", "0xnot-an-address"
        source = _tron("hot") if chain == "195" else _evm("hot")
        items.append(PendingItem({"id": i, "fromAddress": source, "toAddress": dest,
                                  "amount": str(1 + i % 1500), "chainId": chain}))
    return items


def _history(n: int) -> list[Approval]:
    return [Approval("56", _evm("hot"), _evm(f"dest-{i % 50}"), Decimal_(i), NOW -
                     timedelta(minutes=i % 1400)) for i in range(n)]


def Decimal_(i: int) -> Any:
    from decimal import Decimal

    return Decimal(1 + i % 10)


def test_load_time(benchmark: Any, big_policy: Path) -> None:
    """Loading 1,000 rules and 100,000 checked addresses (target: under 2 s)."""
    policy = benchmark.pedantic(load_policy, args=(big_policy,), rounds=3, iterations=1)
    assert len(policy.rules) == RULES
    assert policy.lists["sanctioned"].size == LISTED


def test_decisions_per_second(benchmark: Any, big_policy: Path) -> None:
    """10,000 decisions in a row, each followed by add on approve, over 5,000 past approvals."""
    policy: CompiledPolicy = load_policy(big_policy)
    items = _items(DECISIONS)
    history = _history(5_000)

    def run() -> dict[Action, int]:
        ledger = Ledger(policy, history)
        counts = dict.fromkeys(Action, 0)
        for it in items:
            d = evaluate(policy, it, ledger, NOW)
            counts[d.action] += 1
            if d.action is Action.APPROVE:
                ledger.add(Approval.from_item(it, NOW))
        return counts

    counts = benchmark.pedantic(run, rounds=3, iterations=1)
    assert all(counts.values()), counts
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # enabled: report decisions/s alongside the timing table
        benchmark.extra_info["decisions_per_second"] = round(DECISIONS / stats.stats.mean)
