"""evaluate: validation, every condition, both sides of every bound, limits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cosigner.models import Action, JsonNumber, PendingItem
from cosigner.policy import (
    DEFAULT_RULE,
    INVALID_REASONS,
    INVALID_RULE,
    Approval,
    CompiledPolicy,
    Ledger,
    evaluate,
    load_policy,
    validate_item,
)

from .conftest import CUSTOMER, HOT, NOW, T_CUSTOMER, T_HOT, TREASURY, evm, item

Compile = Callable[..., CompiledPolicy]


def decide(policy: CompiledPolicy, it: PendingItem, now: datetime = NOW,
           history: tuple[Approval, ...] = ()) -> tuple[Action, str, tuple[str, ...]]:
    d = evaluate(policy, it, Ledger(policy, history), now)
    return d.action, d.rule, d.reasons


@pytest.fixture
def open_policy(compile_: Compile) -> CompiledPolicy:
    """Approves everything on both chains (to exercise validation alone)."""
    return compile_("rules:\n  - name: all\n    action: approve\n")


class TestValidation:
    @pytest.mark.parametrize(("raw", "reason"), [
        ({"amount": ...}, "missing_field"),
        ({"id": True}, "bad_type"),
        ({"id": "1"}, "bad_type"),
        ({"chainId": 56}, "bad_type"),
        ({"toAddress": None}, "bad_type"),
        ({"fromAddress": 5}, "bad_type"),
        ({"amount": True}, "bad_type"),
        ({"amount": 1.5}, "bad_type"),
        ({"chainId": "1"}, "unknown_chain"),
        ({"amount": "NaN"}, "amount_not_finite"),
        ({"amount": "Infinity"}, "amount_not_finite"),
        ({"amount": "sNaN"}, "amount_not_finite"),
        ({"amount": "-5"}, "amount_not_positive"),
        ({"amount": "0"}, "amount_not_positive"),
        ({"amount": "0.000"}, "amount_not_positive"),
        ({"amount": "1e3"}, "amount_syntax"),
        ({"amount": JsonNumber("1E3")}, "amount_syntax"),
        ({"amount": " 5"}, "amount_syntax"),
        ({"amount": "1_000"}, "amount_syntax"),
        ({"amount": "٥"}, "amount_syntax"),
        ({"amount": "007"}, "amount_syntax"),
        ({"amount": "1" * 41}, "amount_out_of_range"),
        ({"amount": "1" * 81}, "amount_out_of_range"),
        ({"amount": "0." + "0" * 18 + "1"}, "amount_precision"),
        ({"toAddress": CUSTOMER + " "}, "address_chars"),
        ({"toAddress": CUSTOMER + "\u200b"}, "address_chars"),
        ({"toAddress": "0x" + "а" * 40}, "address_chars"),
        ({"fromAddress": ""}, "address_chars"),
        ({"toAddress": CUSTOMER[:-1]}, "address_format"),
        ({"toAddress": CUSTOMER.swapcase().replace("0X", "0x")}, "address_format"),
        ({"toAddress": "0x" + "a" * 200}, "address_format"),
        ({"toAddress": T_CUSTOMER}, "address_format"),
    ])
    def test_invalid_item_is_held_with_reason(self, open_policy: CompiledPolicy,
                                              raw: dict[str, object], reason: str) -> None:
        """Each malformation gets on_invalid and its bounded reason code."""
        base = {k: v for k, v in (item().raw | raw).items() if v is not ...}
        d = evaluate(open_policy, PendingItem(base), Ledger(open_policy), NOW)
        assert (d.action, d.rule, d.invalid_reason) == (Action.HOLD, INVALID_RULE, reason)
        assert d.reasons == (f"invalid:{reason}",)
        assert reason in INVALID_REASONS

    def test_tron_checksum(self, open_policy: CompiledPolicy) -> None:
        """A tron address with a broken checksum is address_format."""
        broken = T_CUSTOMER[:-1] + ("2" if T_CUSTOMER[-1] != "2" else "3")
        assert validate_item(open_policy, item(chain="195", to=broken)) == "address_format"

    def test_valid_items(self, open_policy: CompiledPolicy) -> None:
        """Well-formed items in every spelling pass validation."""
        for it in (item(), item(to=CUSTOMER.lower()), item(to="0x" + CUSTOMER[2:].upper()),
                   item(amount=5), item(amount=JsonNumber("4.10")), item(amount="0.5"),
                   item(amount="1." + "0" * 30), item(chain="195", to=T_CUSTOMER,
                                                      amount="0.000001")):
            assert validate_item(open_policy, it) is None, it.raw

    def test_on_invalid_reject(self, compile_: Compile) -> None:
        """on_invalid: reject rejects malformed items."""
        policy = compile_("on_invalid: reject\n")
        assert decide(policy, item(amount="x"))[0] is Action.REJECT

    def test_raw_not_a_mapping(self, open_policy: CompiledPolicy) -> None:
        """An item whose raw is not an object is bad_type."""
        it = PendingItem({})
        object.__setattr__(it, "raw", ["not", "a", "dict"])
        assert validate_item(open_policy, it) == "bad_type"


class TestRules:
    def test_first_match_wins(self, compile_: Compile) -> None:
        """The first matching rule decides, even when it is generic and a later one names to."""
        policy = compile_(f"""\
            rules:
              - name: small
                amount: {{max: "10"}}
                action: reject
              - name: to-customer
                to: {{in: ["{CUSTOMER}"]}}
                action: approve
            """)
        assert decide(policy, item(amount="5")) == (Action.REJECT, "small", ("rule:small",))
        assert decide(policy, item(amount="11"))[:2] == (Action.APPROVE, "to-customer")

    def test_indexed_rule_before_generic(self, compile_: Compile) -> None:
        """A destination-indexed rule listed first beats a later generic rule."""
        policy = compile_(f"""\
            rules:
              - name: to-customer
                to: {{in: ["{CUSTOMER}"]}}
                action: reject
              - name: any
                chain: "56"
                action: approve
            """)
        assert decide(policy, item())[1] == "to-customer"
        assert decide(policy, item(to=TREASURY))[1] == "any"

    def test_default(self, compile_: Compile) -> None:
        """No match gives the default with rule <default>."""
        policy = compile_("default: reject\n")
        assert decide(policy, item()) == (Action.REJECT, DEFAULT_RULE, ("default",))

    def test_chain_condition(self, compile_: Compile) -> None:
        """chain: restricts a rule to the listed chains."""
        policy = compile_("rules:\n  - name: tron\n    chain: \"195\"\n    action: approve\n")
        assert decide(policy, item(chain="195", to=T_CUSTOMER))[0] is Action.APPROVE
        assert decide(policy, item())[0] is Action.HOLD

    def test_to_not_in(self, compile_: Compile) -> None:
        """to: not_in excludes the listed destinations."""
        policy = compile_(f"rules:\n  - name: r\n    to: {{not_in: [\"{TREASURY}\"]}}\n"
                          "    action: approve\n")
        assert decide(policy, item())[0] is Action.APPROVE
        assert decide(policy, item(to=TREASURY.lower()))[0] is Action.HOLD

    def test_from_in_and_not_in(self, compile_: Compile) -> None:
        """from: in / not_in compare the source address."""
        policy = compile_(f"""\
            rules:
              - name: from-hot
                from: {{in: ["{HOT}"], not_in: ["{TREASURY}"]}}
                action: approve
            """)
        assert decide(policy, item(source=HOT.upper().replace("0X", "0x")))[0] is Action.APPROVE
        assert decide(policy, item(source=CUSTOMER))[0] is Action.HOLD

    def test_tron_compares_exactly(self, compile_: Compile) -> None:
        """Tron addresses match by their exact base58 text."""
        policy = compile_(f"rules:\n  - name: r\n    to: {{in: [\"{T_CUSTOMER}\"]}}\n"
                          "    action: approve\n")
        assert decide(policy, item(chain="195", to=T_CUSTOMER))[0] is Action.APPROVE
        assert decide(policy, item(chain="195", to=T_HOT))[0] is Action.HOLD

    def test_other_format_compares_exactly(self, write: Callable[..., object]) -> None:
        """On an ``other`` chain addresses match exactly (case matters)."""
        path = write('version: 1\nname: o\nchains:\n  "7": {name: x, address: other, decimals: 8}'
                     '\nrules:\n  - name: r\n    to: {in: ["bc1qAbc"]}\n    action: approve\n')
        policy = load_policy(path)  # type: ignore[arg-type]
        assert decide(policy, item(chain="7", to="bc1qAbc", source="bc1qsrc"))[0] is Action.APPROVE
        assert decide(policy, item(chain="7", to="bc1qabc", source="bc1qsrc"))[0] is Action.HOLD

    @pytest.mark.parametrize(("amount", "matches"), [
        ("10", True), ("10.000000000000000001", False), ("1", True),
        ("0.999999999999999999", False), ("5.50", True)])
    def test_amount_bounds_inclusive(self, compile_: Compile, amount: str, matches: bool) -> None:
        """min and max are inclusive; one smallest unit outside does not match."""
        policy = compile_("rules:\n  - name: r\n    amount: {min: \"1\", max: \"10\"}\n"
                          "    action: approve\n")
        assert (decide(policy, item(amount=amount))[0] is Action.APPROVE) is matches

    @pytest.mark.parametrize(("now", "matches"), [
        (datetime(2024, 6, 3, 6, 0, tzinfo=UTC), True),     # Mon 08:00 Berlin (start, inclusive)
        (datetime(2024, 6, 3, 5, 59, tzinfo=UTC), False),   # Mon 07:59 Berlin
        (datetime(2024, 6, 3, 17, 59, tzinfo=UTC), True),   # Mon 19:59 Berlin
        (datetime(2024, 6, 3, 18, 0, tzinfo=UTC), False),   # Mon 20:00 Berlin (end, exclusive)
        (datetime(2024, 6, 1, 10, 0, tzinfo=UTC), False),   # Saturday
        (datetime(2024, 6, 2, 22, 30, tzinfo=UTC), False),  # Sunday 22:30 UTC = Mon 00:30 Berlin
    ])
    def test_time_window(self, compile_: Compile, now: datetime, matches: bool) -> None:
        """Days and hours are read in the rule's time zone; start inclusive, end exclusive."""
        policy = compile_("rules:\n  - name: r\n    time: {days: [mon, tue, wed, thu, fri], "
                          "hours: \"08:00-20:00\", tz: Europe/Berlin}\n    action: approve\n")
        assert (decide(policy, item(), now=now)[0] is Action.APPROVE) is matches

    @pytest.mark.parametrize(("hour", "matches"), [(21, True), (3, True), (8, False), (12, False)])
    def test_hours_wrap_past_midnight(self, compile_: Compile, hour: int, matches: bool) -> None:
        """A range like 20:00-08:00 covers the night."""
        policy = compile_("rules:\n  - name: r\n    time: {hours: \"20:00-08:00\"}\n"
                          "    action: approve\n")
        now = NOW.replace(hour=hour)
        assert (decide(policy, item(), now=now)[0] is Action.APPROVE) is matches

    def test_days_only(self, compile_: Compile) -> None:
        """A window of days alone matches all day on those days."""
        policy = compile_("rules:\n  - name: r\n    time: {days: [sat, sun]}\n"
                          "    action: approve\n")
        assert decide(policy, item(), now=NOW + timedelta(days=5))[0] is Action.APPROVE
        assert decide(policy, item())[0] is Action.HOLD

    def test_naive_now_refused(self, open_policy: CompiledPolicy) -> None:
        """A naive now is a caller bug, raised as ValueError."""
        with pytest.raises(ValueError, match="timezone-aware"):
            evaluate(open_policy, item(), Ledger(open_policy), datetime(2024, 1, 1))

    def test_ledger_of_another_policy_refused(self, open_policy: CompiledPolicy) -> None:
        """A ledger built for another policy is refused."""
        other = load_policy("policies/minimal.yaml")
        with pytest.raises(ValueError, match="ledger was built for policy 'minimal'"):
            evaluate(open_policy, item(), Ledger(other), NOW)


LIMITS = f"""\
lists:
  vip: ["{TREASURY}"]
limits:
  - name: amount-chain
    chain: "56"
    window: 24h
    max_amount: "100"
  - name: count-to
    window: 1h
    max_count: 2
    per: to
    to: {{not_in: [vip]}}
  - name: amount-from
    chain: ["195"]
    from: {{in: ["{T_HOT}"]}}
    window: 1h
    max_amount: "10"
    per: from
rules:
  - name: all
    action: approve
"""


def approval(to: str = CUSTOMER, amount: str = "1", ago: timedelta = timedelta(minutes=1),
             chain: str = "56", source: str = HOT) -> Approval:
    return Approval(chain, source, to, Decimal(amount), NOW - ago)


class TestLimits:
    @pytest.fixture
    def policy(self, compile_: Compile) -> CompiledPolicy:
        return compile_(LIMITS)

    def test_max_amount_exactly_reached(self, policy: CompiledPolicy) -> None:
        """Reaching max_amount exactly is allowed."""
        d = evaluate(policy, item(to=TREASURY, amount="40"),
                     Ledger(policy, [approval(TREASURY, "60")]), NOW)
        assert d.action is Action.APPROVE
        effect = next(e for e in d.limit_effects if e.limit == "amount-chain")
        assert (effect.bucket, effect.used_amount, effect.would_exceed) == (
            "56", Decimal(60), False)

    def test_max_amount_smallest_unit_above(self, policy: CompiledPolicy) -> None:
        """One smallest unit above max_amount becomes on_limit with limit:<name>."""
        it = item(to=TREASURY, amount="40.000000000000000001")
        assert decide(policy, it, history=(approval(TREASURY, "60"),)) == (
            Action.HOLD, "all", ("limit:amount-chain",))

    def test_window_edge(self, policy: CompiledPolicy) -> None:
        """An approval exactly one window old no longer counts; one second younger does."""
        old = approval(TREASURY, "100", ago=timedelta(hours=24))
        young = approval(TREASURY, "100", ago=timedelta(hours=24) - timedelta(seconds=1))
        assert decide(policy, item(to=TREASURY), history=(old,))[0] is Action.APPROVE
        assert decide(policy, item(to=TREASURY), history=(young,))[0] is Action.HOLD

    def test_future_approvals_count(self, policy: CompiledPolicy) -> None:
        """Approvals stamped after now still count (clock skew fails closed)."""
        future = approval(TREASURY, "100", ago=-timedelta(minutes=5))
        assert decide(policy, item(to=TREASURY), history=(future,))[0] is Action.HOLD

    def test_max_count_per_destination(self, policy: CompiledPolicy) -> None:
        """max_count counts approvals in the destination's bucket only."""
        two = (approval(CUSTOMER), approval(CUSTOMER.lower()))
        assert decide(policy, item(), history=two)[2] == ("limit:count-to",)
        assert decide(policy, item(to=evm("x")), history=two)[0] is Action.APPROVE

    def test_limit_scope_to(self, policy: CompiledPolicy) -> None:
        """A limit scoped with to: not_in ignores those destinations."""
        many = tuple(approval(TREASURY, "0.1") for _ in range(5))
        assert decide(policy, item(to=TREASURY), history=many)[0] is Action.APPROVE

    def test_per_from_and_scope_from(self, policy: CompiledPolicy) -> None:
        """per: from buckets by source, and from: in scopes the limit."""
        hist = (approval(T_CUSTOMER, "9", chain="195", source=T_HOT),)
        it = item(chain="195", to=T_CUSTOMER, amount="2")
        assert decide(policy, it, history=hist)[2] == ("limit:amount-from",)
        other_source = item(chain="195", to=T_CUSTOMER, amount="2", source=T_CUSTOMER)
        assert decide(policy, other_source, history=hist)[0] is Action.APPROVE

    def test_chains_do_not_share_buckets(self, policy: CompiledPolicy) -> None:
        """Usage on one chain never counts on another."""
        hist = tuple(approval(T_CUSTOMER, chain="195", source=T_HOT) for _ in range(3))
        assert decide(policy, item(), history=hist)[0] is Action.APPROVE

    def test_several_limits_broken(self, policy: CompiledPolicy) -> None:
        """Every broken limit is named."""
        hist = (approval(CUSTOMER, "100"), approval(CUSTOMER))
        assert decide(policy, item(), history=hist)[2] == ("limit:amount-chain", "limit:count-to")

    def test_on_limit_reject(self, compile_: Compile) -> None:
        """on_limit: reject rejects an approval over a limit."""
        policy = compile_("on_limit: reject\n" + LIMITS)
        hist = (approval(TREASURY, "100"),)
        assert decide(policy, item(to=TREASURY), history=hist)[0] is Action.REJECT

    def test_limits_do_not_touch_non_approvals(self, compile_: Compile) -> None:
        """A hold or reject carries no limit effects."""
        policy = compile_(LIMITS.replace("action: approve", "action: reject"))
        d = evaluate(policy, item(), Ledger(policy, [approval(CUSTOMER, "500")]), NOW)
        assert (d.action, d.limit_effects) == (Action.REJECT, ())

    def test_limits_count_approvals_of_any_rule(self, policy: CompiledPolicy) -> None:
        """The daemon loop: each approval added makes the next one count."""
        ledger = Ledger(policy)
        actions = []
        for _ in range(3):
            it = item()
            d = evaluate(policy, it, ledger, NOW)
            actions.append(d.action)
            if d.action is Action.APPROVE:
                ledger.add(Approval.from_item(it, NOW))
        assert actions == [Action.APPROVE, Action.APPROVE, Action.HOLD]
