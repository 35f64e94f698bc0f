"""A guard kept from batch to batch counts only the history rows it has not seen yet,
and always answers exactly as a guard built afresh for the same history would."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosigner.daemon.guard import PolicyLimitGuard
from cosigner.models import Action, PendingItem
from cosigner.policy import CompiledPolicy, load_policy
from cosigner.policy.ledger import Ledger
from cosigner.store.base import ApprovalRow, NewDecision
from tests.policy.conftest import CUSTOMER, HEADER, HOT, NOW, TREASURY

POLICY = HEADER + """\
limits:
  - {name: amount, chain: "56", window: 1h, max_amount: "100", per: to}
  - {name: count, chain: "56", window: 2h, max_count: 12, per: chain}
rules:
  - {name: small, chain: "56", amount: {max: "100"}, action: approve}
"""
DESTINATIONS = (CUSTOMER, TREASURY)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    path: Path = tmp_path_factory.mktemp("guard") / "p.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return load_policy(path)


def row(to: str, amount: int, minutes_ago: int) -> ApprovalRow:
    return ApprovalRow("56", HOT, to, str(amount), NOW - timedelta(minutes=minutes_ago))


def approval(item_id: int, to: str, amount: int) -> NewDecision:
    raw = {"id": item_id, "fromAddress": HOT, "toAddress": to, "amount": str(amount),
           "chainId": "56"}
    return NewDecision(item_id=item_id, content_hash=PendingItem(raw).content_hash,
                       chain_id="56", from_address=HOT, to_address=to, amount_text=str(amount),
                       action=Action.APPROVE, rule="small", reasons=("rule:small",),
                       policy_name="t", policy_sha256="0" * 64, mode="enforce")


rows = st.builds(row, st.sampled_from(DESTINATIONS), st.integers(1, 40), st.integers(0, 150))
batches = st.lists(st.builds(approval, st.integers(1, 10**6), st.sampled_from(DESTINATIONS),
                             st.integers(1, 40)), min_size=1, max_size=6)
steps = st.one_of(
    st.tuples(st.just("grow"), st.lists(rows, max_size=8)),
    st.tuples(st.just("prune"), st.none()),
    st.tuples(st.just("fresh"), st.none()),  # the window read again: new row objects
    st.tuples(st.just("check"), batches))


@settings(max_examples=150, deadline=None)
@given(script=st.lists(steps, max_size=25))
def test_a_kept_guard_answers_as_a_fresh_one(policy: CompiledPolicy, script: list) -> None:
    """Whatever the journal hands it (rows appended, rows older than the window dropped
    from the front, the whole window read again), the kept guard refuses exactly what a
    new guard refuses, and a batch it checked leaves nothing behind (checking it twice
    gives the same answer)."""
    kept = PolicyLimitGuard(policy)
    history: list[ApprovalRow] = []
    for op, arg in script:
        if op == "grow":
            history.extend(arg)
        elif op == "prune":  # as the journal does: the rows before the window, from the front
            while history and history[0].created_at < NOW - kept.window:
                del history[0]
        elif op == "fresh":
            history = [ApprovalRow(*(getattr(r, f) for f in r.__slots__)) for r in history]
        else:
            expected = PolicyLimitGuard(policy).violations(history, arg, NOW)
            assert kept.violations(history, arg, NOW) == expected
            assert kept.violations(history, arg, NOW) == expected


def test_only_new_rows_are_counted(policy: CompiledPolicy,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 12): the guard rebuilt its ledger from the whole window for every
    batch, so a cycle of N items cost O(N^2).  A kept guard adds only the rows after the
    last one it counted, plus the batch."""
    added: list[object] = []
    original = Ledger.add

    def counting(self: Ledger, item: object) -> None:
        added.append(item)
        original(self, item)  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "add", counting)
    guard = PolicyLimitGuard(policy)
    history = [row(CUSTOMER, 1, 121 + n % 50) for n in range(1000)]  # before the window
    guard.violations(history, [approval(1, CUSTOMER, 1)], NOW)
    assert len(added) == 1001
    added.clear()
    history += [row(TREASURY, 1, 1) for _ in range(10)]
    guard.violations(history, [approval(2, CUSTOMER, 1), approval(3, CUSTOMER, 1)], NOW)
    assert len(added) == 10 + 2


def test_a_refused_batch_is_not_counted_later(policy: CompiledPolicy) -> None:
    """The batch is counted on a ledger of its own: a batch refused (or rolled back) does
    not count against the next one."""
    guard = PolicyLimitGuard(policy)
    history = [row(CUSTOMER, 60, 10)]
    assert guard.violations(history, [approval(1, CUSTOMER, 40)], NOW) == {}
    assert guard.violations(history, [approval(1, CUSTOMER, 40)], NOW) == {}
    assert guard.violations(history, [approval(2, CUSTOMER, 41)], NOW) == {2: "limit:amount"}
