"""While a bundle is pending the journal re-checks the limits of both policies (BothLimits)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cosigner.daemon.guard import BothLimits, PolicyLimitGuard
from cosigner.models import Action, PendingItem
from cosigner.policy import load_policy
from cosigner.store.base import NewDecision
from tests.policy.conftest import CUSTOMER, HEADER, HOT, NOW

RULES = """\
rules:
  - {name: small, chain: "56", amount: {max: "100"}, action: approve}
"""


def limits(window: str, max_count: int) -> str:
    return (f"limits:\n  - {{name: n{max_count}, chain: \"56\", window: {window}, "
            f"max_count: {max_count}, per: chain}}\n")


def approval(item_id: int) -> NewDecision:
    raw = {"id": item_id, "fromAddress": HOT, "toAddress": CUSTOMER, "amount": "5",
           "chainId": "56"}
    return NewDecision(item_id=item_id, content_hash=PendingItem(raw).content_hash,
                       chain_id="56", from_address=HOT, to_address=CUSTOMER, amount_text="5",
                       action=Action.APPROVE, rule="small", reasons=("rule:small",),
                       policy_name="p", policy_sha256="0" * 64, mode="enforce")


def policy(tmp_path: Path, name: str, text: str) -> PolicyLimitGuard:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return PolicyLimitGuard(load_policy(path))


def test_either_policys_limit_refuses(tmp_path: Path) -> None:
    """In force: 3 a day; pending: 1 an hour.  The second approval breaks the pending limit,
    the fourth the one in force; the window is the longer of the two."""
    in_force = policy(tmp_path, "a.yaml", HEADER + limits("24h", 3) + RULES)
    pending = policy(tmp_path, "b.yaml", HEADER + limits("1h", 1) + RULES)
    both = BothLimits(in_force, pending)
    assert both.window == timedelta(hours=24)
    batch = [approval(n) for n in (1, 2, 3, 4)]
    refused = both.violations([], batch, NOW)
    assert refused[2] == "limit:n1"
    assert refused[4] == "limit:n3"
    assert 1 not in refused
    assert "BothLimits" in repr(both)
