"""Hypothesis properties: total, deterministic, never approves without an explicit rule."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cosigner.errors import PolicyError
from cosigner.models import Action, JsonNumber, PendingItem
from cosigner.policy import (
    INVALID_REASONS,
    Approval,
    CompiledPolicy,
    Ledger,
    evaluate,
    load_policy,
    try_load_policy,
)
from cosigner.policy.engine import first_match, item_facts

from .conftest import evm, tron

POLICIES = Path(__file__).resolve().parents[2] / "policies"
TREASURY = load_policy(POLICIES / "treasury.yaml")
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

EVM_POOL = ["0x268cA167F7014588d08eEda38110721E7b8422Ca",
            "0x61371bed4a6b90951F9f3F5673a2D5C393E2Fb20",
            "0xa065189F56B4a09D29aF0540fDc5321A626C2Ac6", evm("a"), evm("b"), evm("c")]
TRON_POOL = ["TDV39XVLtRkWZzmAg11cc8PLQoREm6vCaz", "TJqEZiKWy1Nq31H1XGKj44zGUUSACJ8o5W",
             tron("a"), tron("b")]


def _spellings(address: str) -> st.SearchStrategy[str]:
    variants = [address, address + " ", address[:-1], "\u200b" + address]
    if address.startswith("0x"):
        variants += [address.lower(), "0x" + address[2:].upper(), address.swapcase()]
    return st.sampled_from(variants)


addresses = st.one_of(st.sampled_from(EVM_POOL + TRON_POOL).flatmap(_spellings), st.text())
amounts = st.one_of(
    st.decimals(min_value=Decimal("-10"), max_value=Decimal("400000"), places=6,
                allow_nan=False).map(str),
    st.sampled_from(["1000", "1000.000001", "0", "NaN", "-Infinity", "1e3", "5_0", "0.1" * 3]),
    st.integers(-5, 10**30), st.text(max_size=12), st.booleans(), st.none(),
    st.floats(allow_nan=True).map(lambda f: JsonNumber(repr(f))))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                         st.floats(allow_nan=False))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)), max_leaves=8)

structured_items = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(), json_values), "fromAddress": addresses,
     "toAddress": addresses, "amount": amounts,
     "chainId": st.one_of(st.sampled_from(["56", "1", "195", "7", ""]), json_values)},
).flatmap(lambda d: st.sets(st.sampled_from(sorted(d))).map(
    lambda drop: {k: v for k, v in d.items() if k not in drop or len(drop) > 2}))
raw_items = st.one_of(structured_items, st.dictionaries(st.text(max_size=12), json_values))
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                     timezones=st.just(UTC))


def _history(now: datetime) -> list[Approval]:
    return [Approval("56", EVM_POOL[3], EVM_POOL[4], Decimal("900"), now - timedelta(hours=1)),
            Approval("195", TRON_POOL[2], TRON_POOL[3], Decimal("4900"), now - timedelta(hours=3))]


class TestTotality:
    @SETTINGS
    @given(raw=raw_items, now=times)
    def test_evaluate_never_raises(self, raw: dict[str, Any], now: datetime) -> None:
        """Any JSON-ish item yields a Decision with a bounded invalid reason."""
        d = evaluate(TREASURY, PendingItem(raw), Ledger(TREASURY, _history(now)), now)
        assert d.invalid_reason is None or d.invalid_reason in INVALID_REASONS
        assert isinstance(d.action, Action)

    @SETTINGS
    @given(raw=raw_items, now=times)
    def test_approval_needs_an_explicit_approve_rule(self, raw: dict[str, Any],
                                                     now: datetime) -> None:
        """An approve names an approve rule that, scanned in plain order, is the first match."""
        d = evaluate(TREASURY, PendingItem(raw), Ledger(TREASURY, _history(now)), now)
        if d.action is not Action.APPROVE:
            return
        facts = item_facts(TREASURY, PendingItem(raw))
        assert not isinstance(facts, str)
        first = next(r for r in TREASURY.rules if r.why_not(facts, now) is None)
        assert (first.name, first.action) == (d.rule, Action.APPROVE)
        assert not any(e.would_exceed for e in d.limit_effects)

    @SETTINGS
    @given(raw=raw_items, now=times)
    def test_deterministic(self, raw: dict[str, Any], now: datetime) -> None:
        """The same inputs give the same decision, with a fresh or a reused ledger."""
        ledger = Ledger(TREASURY, _history(now))
        first = evaluate(TREASURY, PendingItem(raw), ledger, now)
        assert evaluate(TREASURY, PendingItem(dict(raw)), ledger, now) == first
        assert evaluate(TREASURY, PendingItem(raw), Ledger(TREASURY, _history(now)), now) == first

    @SETTINGS
    @given(raw=structured_items, now=times)
    def test_index_agrees_with_linear_scan(self, raw: dict[str, Any], now: datetime) -> None:
        """The indexed candidate search finds exactly the rule a plain scan finds."""
        facts = item_facts(TREASURY, PendingItem(raw))
        if isinstance(facts, str):
            return
        scanned = next((r for r in TREASURY.rules if r.why_not(facts, now) is None), None)
        assert first_match(TREASURY, facts, now) is scanned


def _deny_rule(action: str, chain: str | None, to: str | None, max_amount: str | None) -> str:
    lines = ["  - name: deny-first", f"    action: {action}"]
    if chain is not None:
        lines.append(f'    chain: "{chain}"')
    if to is not None:
        lines.append(f'    to: {{in: ["{to}"]}}')
    if max_amount is not None:
        lines.append(f'    amount: {{max: "{max_amount}"}}')
    return "\n".join(lines) + "\n"


def _with_rule_on_top(rule: str) -> CompiledPolicy | PolicyError:
    text = (POLICIES / "treasury.yaml").read_text(encoding="utf-8")
    head, tail = text.split("rules:\n", 1)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "lists").mkdir()
        (Path(tmp) / "lists" / "sanctioned.txt").write_bytes(
            (POLICIES / "lists" / "sanctioned.txt").read_bytes())
        (Path(tmp) / "p.yaml").write_text(head + "rules:\n" + rule + tail, encoding="utf-8")
        return try_load_policy(Path(tmp) / "p.yaml")


class TestDenyOnTop:
    @settings(max_examples=60, deadline=None)
    @given(action=st.sampled_from(["reject", "hold"]),
           chain=st.sampled_from([None, "56", "1", "195"]),
           to=st.sampled_from([None, *EVM_POOL[3:], *TRON_POOL[2:]]),
           max_amount=st.sampled_from([None, "1", "500", "5000"]),
           raws=st.lists(structured_items, min_size=1, max_size=10), now=times)
    def test_deny_rule_never_creates_an_approval(
            self, action: str, chain: str | None, to: str | None, max_amount: str | None,
            raws: list[dict[str, Any]], now: datetime) -> None:
        """Prepending a reject/hold rule never turns a reject or hold into an approve."""
        denied = _with_rule_on_top(_deny_rule(action, chain, to, max_amount))
        assume(not isinstance(denied, PolicyError))  # an unconditional deny shadows every rule
        assert isinstance(denied, CompiledPolicy)
        for raw in raws:
            before = evaluate(TREASURY, PendingItem(raw), Ledger(TREASURY, _history(now)), now)
            after = evaluate(denied, PendingItem(raw), Ledger(denied, _history(now)), now)
            if before.action is not Action.APPROVE:
                assert after.action is not Action.APPROVE

    @settings(max_examples=100, deadline=None)
    @given(raw=raw_items, now=times)
    def test_policy_without_approve_rules_never_approves(self, raw: dict[str, Any],
                                                         now: datetime) -> None:
        """The minimal policy's rule turned into hold: nothing is ever approved."""
        text = (POLICIES / "minimal.yaml").read_text(encoding="utf-8")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "p.yaml"
            path.write_text(text.replace("action: approve", "action: hold"), encoding="utf-8")
            policy = load_policy(path)
        d = evaluate(policy, PendingItem(raw), Ledger(policy), now)
        assert d.action is not Action.APPROVE
