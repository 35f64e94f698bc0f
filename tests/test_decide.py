"""Unit tests of :func:`cosigner.decide.decide`: each step of the per-item decision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cosigner.decide import Step, decide
from cosigner.models import Action, Mode, PendingItem, RecordState, loads_checked
from cosigner.policy import CompiledPolicy, Ledger, load_policy
from tests.policy.conftest import evm

POLICIES = Path(__file__).resolve().parents[1] / "policies"
NOW = datetime(2024, 6, 3, 10, 0, tzinfo=UTC)  # a Monday, inside business hours
TREASURY = "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8"


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return load_policy(POLICIES / "treasury.yaml")


def raw(item_id: object = 1, amount: str = "10", to: str = TREASURY) -> dict[str, object]:
    return {"id": item_id, "fromAddress": evm("hot"), "toAddress": to, "amount": amount,
            "chainId": "56"}


@dataclass(frozen=True)
class Rec:
    action: Action
    rule: str
    reasons: tuple[str, ...]
    state: RecordState


@dataclass(frozen=True)
class View:
    first_content_hash: str
    latest: Rec | None


def run(policy: CompiledPolicy, item: dict[str, object], history: View | None = None,
        **kw: object) -> object:
    return decide(PendingItem(item), history, policy, Ledger(policy), NOW, **kw)  # type: ignore[arg-type]


class TestSteps:
    def test_new_approval_is_recorded_and_posted(self, policy: CompiledPolicy) -> None:
        """An item the policy approves is new, posted in enforce mode, counted by the limits."""
        out = run(policy, raw())
        assert (out.step, out.action, out.post) == (Step.NEW, Action.APPROVE, True)
        assert out.approval is not None

    def test_shadow_records_but_never_posts(self, policy: CompiledPolicy) -> None:
        """In shadow mode a new approval is recorded, not posted."""
        out = run(policy, raw(), mode=Mode.SHADOW)
        assert (out.step, out.action, out.post) == (Step.NEW, Action.APPROVE, False)

    @pytest.mark.parametrize("item_id", [0, -1, 2**63, 2**80])
    def test_bad_ids_are_held_unrecorded(self, policy: CompiledPolicy, item_id: int) -> None:
        """Ids outside 1 .. 2**63-1 are held as invalid and never recorded."""
        out = run(policy, raw(item_id))
        assert (out.step, out.action, out.invalid_reason) == (
            Step.UNRECORDABLE, Action.HOLD, "bad_id")

    def test_no_id(self, policy: CompiledPolicy) -> None:
        """No integer id: held, nothing recorded."""
        out = run(policy, raw("7"))
        assert (out.step, out.invalid_reason) == (Step.UNRECORDABLE, "missing_field")

    def test_conflict_in_the_snapshot_is_a_mutation(self, policy: CompiledPolicy) -> None:
        """Another content under the id in the same snapshot holds the item."""
        out = run(policy, raw(), conflicting=True)
        assert (out.step, out.action, out.rule) == (Step.MUTATION, Action.HOLD, "<mutated>")

    def test_other_recorded_content_is_a_mutation(self, policy: CompiledPolicy) -> None:
        """A recorded content hash that differs holds the item, never re-evaluated."""
        out = run(policy, raw(), View("0" * 64, None))
        assert out.step is Step.MUTATION

    @pytest.mark.parametrize(("state", "mode", "paused", "step"), [
        (RecordState.POSTED, Mode.ENFORCE, False, Step.SKIP),
        (RecordState.SHADOW, Mode.ENFORCE, False, Step.SKIP),
        (RecordState.DECIDED, Mode.SHADOW, False, Step.SKIP),
        (RecordState.FAILED, Mode.SHADOW, False, Step.SKIP),
        (RecordState.DECIDED, Mode.ENFORCE, True, Step.PAUSED),
        (RecordState.DECIDED, Mode.ENFORCE, False, Step.REPOST),
        (RecordState.FAILED, Mode.ENFORCE, False, Step.REPOST),
        (RecordState.GONE, Mode.ENFORCE, False, Step.REPOST),
    ])
    def test_recorded_decisions(self, policy: CompiledPolicy, state: RecordState, mode: Mode,
                                paused: bool, step: Step) -> None:
        """A recorded approve is skipped when settled or in shadow mode, waits while paused,
        else is re-posted as recorded (never re-evaluated)."""
        item = PendingItem(raw())
        recorded = Rec(Action.APPROVE, "treasury-sweeps", ("rule:treasury-sweeps",), state)
        out = decide(item, View(item.content_hash, recorded), policy, Ledger(policy), NOW,
                     paused=paused, mode=mode)
        assert out.step is step
        assert out.post is (step is Step.REPOST)
        assert (out.action, out.rule) == (Action.APPROVE, "treasury-sweeps")

    def test_duplicate_key_is_held_whatever_on_invalid_says(self, policy: CompiledPolicy
                                                            ) -> None:
        """A repeated key is malformed: hold, duplicate_key."""
        text = ('{{"id": 1, "fromAddress": "{}", "toAddress": "{}", "toAddress": "{}", '
                '"amount": "1", "chainId": "56"}}'.format(evm("hot"), TREASURY, evm("x")))
        out = decide(PendingItem(loads_checked(text)), None, policy, Ledger(policy), NOW)
        assert (out.action, out.reasons, out.invalid_reason) == (
            Action.HOLD, ("invalid:duplicate_key",), "duplicate_key")

    def test_paused_turns_a_new_approval_into_a_hold(self, policy: CompiledPolicy) -> None:
        """Decided while paused: recorded as a hold with the reason paused."""
        out = run(policy, raw(), paused=True)
        assert (out.step, out.action, out.post) == (Step.NEW, Action.HOLD, False)
        assert out.reasons[-1] == "paused"
        assert out.approval is None

    def test_an_unchanged_hold_records_nothing(self, policy: CompiledPolicy) -> None:
        """The same hold as recorded is not recorded again."""
        item = PendingItem(raw(amount="999999999"))
        first = decide(item, None, policy, Ledger(policy), NOW)
        assert first.action is Action.HOLD
        recorded = Rec(Action.HOLD, first.rule, first.reasons, RecordState.DECIDED)
        again = decide(item, View(item.content_hash, recorded), policy, Ledger(policy), NOW)
        assert again.step is Step.UNCHANGED

    def test_explain_adds_rules_and_limits_to_the_trace(self, policy: CompiledPolicy) -> None:
        """With explain=True every rule tried and every limit appear; the decision is equal."""
        plain = run(policy, raw())
        explained = run(policy, raw(), explain=True)
        assert (plain.action, plain.rule, plain.reasons) == (
            explained.action, explained.rule, explained.reasons)
        assert any("MATCH" in line for line in explained.trace)
        assert any(line.startswith("limit ") for line in explained.trace)


@pytest.mark.parametrize("text", [
    b'{"a": 1.50, "b": [1, 2]}', '{"a": 1.50}', b'\xef\xbb\xbf{"a": 1}', '\ufeff{"a": 1}',
    '{"a": 1'.encode("utf-16"), b"[1, 2", b"", b"\xff\xfe{", "1e400", bytearray(b'{"x":0.1}'),
    12, None])
def test_the_kept_decoders_read_as_json_loads(text: object) -> None:
    """loads_exact / loads_checked reuse one decoder each: same results, same errors as
    json.loads with the same hooks, for bytes (any encoding), text and wrong types."""
    import json

    from cosigner.models import JsonNumber, _object, loads_checked, loads_exact

    def outcome(parse: Callable[[Any], Any], value: object) -> object:
        try:
            return ("ok", parse(value))
        except Exception as exc:
            return ("error", type(exc), str(exc))

    assert outcome(loads_exact, text) == outcome(
        lambda v: json.loads(v, parse_float=JsonNumber), text)
    assert outcome(loads_checked, text) == outcome(
        lambda v: json.loads(v, parse_float=JsonNumber, object_pairs_hook=_object), text)


class TestTraceHeader:
    def test_the_header_line_follows_the_clock_zone_and_the_pause(
            self, policy: CompiledPolicy) -> None:
        """The trace's first line is kept per chunk, not per item: equal instants in two
        zones, or paused and not, still print their own line."""
        from datetime import timedelta, timezone
        later_zone = NOW.astimezone(timezone(timedelta(hours=2)))
        assert later_zone == NOW
        item = PendingItem(raw())
        first = decide(item, None, policy, Ledger(policy), NOW).trace[0]
        zoned = decide(item, None, policy, Ledger(policy), later_zone).trace[0]
        paused = decide(item, None, policy, Ledger(policy), NOW, paused=True).trace[0]
        assert first.endswith(f"now {NOW.isoformat()}")
        assert "paused" not in first
        assert zoned.endswith(f"now {later_zone.isoformat()}")
        assert ", paused," in paused
