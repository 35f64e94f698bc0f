"""The value types' validation and the hash chain's verification, without a store."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosigner.models import Action, Mode, RecordState
from cosigner.store import NewOutcome, VerifyResult
from cosigner.store.base import GENESIS_HASH, DecisionRecord, NewDecision
from cosigner.store.chain import (
    DECISION,
    KEYS,
    OUTCOME,
    StoredEntry,
    decision_payload,
    entry_hash,
    one_shot,
    outcome_payload,
    timestamp_text,
    verify_entries,
)
from cosigner.store.records import (
    COLUMNS,
    build_record,
    decision_entries,
    entry_row,
    outcome_entry,
)
from tests.store.conftest import T0, decision


def chain(n: int) -> list[StoredEntry]:
    """A valid chain of n entries, decisions and outcomes alternating."""
    entries: list[StoredEntry] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        if seq % 2:
            payload = decision_payload(seq, prev, decision(seq), timestamp_text(T0))
        else:
            payload = outcome_payload(seq, prev, NewOutcome(seq - 1, seq - 1, "posted", 200, "ok"),
                                      timestamp_text(T0))
        prev = entry_hash(payload)
        entries.append(StoredEntry(seq, payload["item_id"], payload, prev))
    return entries


def edited(entry: StoredEntry, **changes: Any) -> StoredEntry:
    return StoredEntry(entry.seq, entry.item_id, {**entry.payload, **changes}, entry.record_hash)


class TestNewDecision:
    @pytest.mark.parametrize(("changes", "problem"), [
        ({"item_id": True}, "item_id must be an int"),
        ({"item_id": 2**63}, "out of range"),
        ({"content_hash": "ABC"}, "content_hash must be 64 lowercase hex"),
        ({"mode": "dry-run"}, "mode must be one of enforce, shadow"),
        ({"rule": None}, "rule must be a str"),
        ({"reasons": "one reason"}, "reasons must be a sequence of str"),
        ({"reasons": ("ok", 3)}, r"reasons\[\] must be a str"),
        ({"amount_text": "\ud800"}, "amount_text is not valid Unicode"),
        ({"to_address": None}, "an approve needs chain, from, to and amount"),
        ({"action": "sign"}, "'sign' is not a valid Action"),
    ])
    def test_invalid_fields_are_refused(self, changes: dict[str, Any], problem: str) -> None:
        """A decision with a wrong field cannot even be built."""
        item_id = changes.pop("item_id", 1)
        with pytest.raises(ValueError, match=problem):
            decision(item_id, **changes)

    def test_text_action_and_list_reasons_are_normalised(self) -> None:
        """An action given as text becomes the enum, reasons a tuple."""
        made = decision(1, "reject", reasons=["a", "b"])
        assert (made.action, made.reasons) == (Action.REJECT, ("a", "b"))

    def test_malformed_items_can_be_held(self) -> None:
        """A hold or reject may lack the item's fields."""
        made = decision(1, "hold", chain_id=None, from_address=None, to_address=None,
                        amount_text=None)
        assert made.chain_id is None


class TestNewOutcome:
    @pytest.mark.parametrize(("args", "problem"), [
        ((0, 1, "posted", 200, ""), "decision_seq 0 is out of range"),
        ((1, 1, "decided", 200, ""), "outcome state must be posted, failed or gone"),
        ((1, 1, "posted", "200", ""), "api_code must be an int"),
        ((1, 1, "posted", None, None), "api_message must be a str"),
    ])
    def test_invalid_fields_are_refused(self, args: tuple[Any, ...], problem: str) -> None:
        """An outcome with a wrong field cannot be built."""
        with pytest.raises(ValueError, match=problem):
            NewOutcome(*args)


class TestTimestamps:
    def test_naive_is_refused(self) -> None:
        """A naive datetime is ambiguous."""
        with pytest.raises(ValueError, match="naive"):
            timestamp_text(T0.replace(tzinfo=None))

    def test_fixed_width_utc(self) -> None:
        """Stored times are UTC with microseconds, so they sort as text."""
        assert timestamp_text(T0) == "2025-03-03T12:00:00.000000+00:00"


class TestVerifyEntries:
    def test_valid_chain(self) -> None:
        """A chain built by the rules verifies, with its head."""
        entries = chain(6)
        assert verify_entries(entries, (6, entries[-1].record_hash)) == VerifyResult(True, 6)

    def test_head_beyond_the_chain(self) -> None:
        """A head past the last entry means entries were cut off the end."""
        entries = chain(4)
        assert verify_entries(entries[:3], (4, entries[-1].record_hash)).first_bad_seq == 4

    def test_head_not_matching(self) -> None:
        """A head that does not match the last entry is reported at that entry."""
        result = verify_entries(chain(4), (4, "f" * 64))
        assert (result.first_bad_seq, result.entries) == (4, 4)
        result = verify_entries(chain(4), (3, "f" * 64))
        assert result.problem == "record seq 4 does not match the journal's head (seq 3)"

    def test_unhashable_payload_is_an_edit(self) -> None:
        """A payload JSON cannot encode counts as edited, not as a crash."""
        entries = chain(2)
        entries[1] = edited(entries[1], api_code=float("nan"))
        assert verify_entries(entries).first_bad_seq == 2

    @given(n=st.integers(1, 12), data=st.data())
    def test_any_single_edit_is_found_at_its_seq(self, n: int, data: st.DataObject) -> None:
        """Changing any one field of any entry is reported at exactly that entry."""
        entries = chain(n)
        index = data.draw(st.integers(0, n - 1))
        key = data.draw(st.sampled_from(sorted(entries[index].payload)))
        value = data.draw(st.one_of(st.none(), st.integers(), st.text(max_size=5)))
        if entries[index].payload[key] == value:
            return
        entries[index] = edited(entries[index], **{key: value})
        result = verify_entries(entries)
        assert (result.ok, result.first_bad_seq) == (False, index + 1)

    @given(n=st.integers(2, 12), data=st.data())
    def test_any_deletion_is_found(self, n: int, data: st.DataObject) -> None:
        """Removing any entry but the last is reported at the missing seq."""
        entries = chain(n)
        index = data.draw(st.integers(0, n - 2))
        del entries[index]
        result = verify_entries(entries)
        assert (result.first_bad_seq, result.problem) == (
            index + 1, f"record seq {index + 1} is missing")


# -- the write path builds what the one-entry-at-a-time rules give ---------------------

class _Code(enum.StrEnum):
    BSC = "56"


class _Id(enum.IntEnum):
    ONE = 77


def _reference_row(payload: dict[str, Any], record_hash: str) -> tuple[Any, ...]:
    """entry_row as first written: every column from the payload, None where it has none."""
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(payload)
    if payload["kind"] == DECISION:
        values["reasons"] = json.dumps(payload["reasons"], ensure_ascii=False)
    values["record_hash"] = record_hash
    return tuple(values[c] for c in COLUMNS)


def _reference_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_texts = st.text(max_size=6)
_decisions = st.builds(
    decision, st.one_of(st.integers(-(2**63), 2**63 - 1), st.just(_Id.ONE)),
    st.sampled_from(["approve", Action.REJECT, Action.HOLD]),
    mode=st.sampled_from(["enforce", Mode.SHADOW]),
    content=_texts,
    chain_id=st.one_of(_texts, st.just(_Code.BSC)), amount_text=_texts,
    rule=_texts, reasons=st.lists(st.one_of(_texts, st.just(_Code.BSC)), max_size=3))
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _texts,
              st.just(_Code.BSC), st.just(_Id.ONE), st.just(b"x")),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_texts, inner, max_size=3)), max_leaves=8)


def _outcome(seq: int, item: int, state: str, code: int | None, message: str) -> NewOutcome:
    return NewOutcome(seq, item, state, code, message)


_outcomes = st.builds(_outcome, st.integers(1, 2**63 - 1), st.one_of(st.integers(0, 9),
                                                                       st.just(_Id.ONE)),
                      st.sampled_from(["posted", RecordState.FAILED, "gone"]),
                      st.one_of(st.none(), st.integers(-5, 5)), _texts)


class TestWritePath:
    @given(payload=st.dictionaries(_texts, _json, max_size=5))
    def test_entry_hash_is_the_canonical_json_sha256(self, payload: dict[str, Any]) -> None:
        """entry_hash hashes json.dumps(sorted keys, no spaces, UTF-8, no NaN), and fails
        the same way where that fails."""
        try:
            expected: str | type[BaseException] = _reference_hash(payload)
        except (TypeError, ValueError) as exc:
            expected = type(exc)
        try:
            got: str | type[BaseException] = entry_hash(payload)
        except (TypeError, ValueError) as exc:
            got = type(exc)
        assert got == expected

    @given(value=_json, ascii_=st.booleans(), circular=st.booleans(), sort=st.booleans())
    def test_one_shot_is_the_encoders_encode(self, value: Any, ascii_: bool, circular: bool,
                                             sort: bool) -> None:
        """one_shot(encoder) writes what encoder.encode writes, or fails as it does."""
        encoder = json.JSONEncoder(ensure_ascii=ascii_, check_circular=circular,
                                   sort_keys=sort, allow_nan=ascii_)
        outcomes = []
        for encode in (encoder.encode, one_shot(encoder)):
            try:
                outcomes.append(encode(value))
            except (TypeError, ValueError) as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[0] == outcomes[1]

    def test_entry_hash_of_a_circular_payload_fails_as_json_does(self) -> None:
        """A circular payload is a ValueError, as with json.dumps (and the next hash works)."""
        payload: dict[str, Any] = {"a": []}
        payload["a"].append(payload)
        with pytest.raises(ValueError, match="Circular reference"):
            entry_hash(payload)
        assert entry_hash({"a": [1]}) == _reference_hash({"a": [1]})

    @given(decisions=st.lists(_decisions, min_size=1, max_size=4), seq=st.integers(0, 99))
    def test_decision_entries_are_the_rules_one_at_a_time(
            self, decisions: list[NewDecision], seq: int) -> None:
        """decision_entries gives the rows and records of decision_payload, entry_hash,
        entry_row and build_record applied one decision at a time."""
        created_at = timestamp_text(T0)
        rows, records = decision_entries(decisions, (seq, GENESIS_HASH), created_at)
        prev = GENESIS_HASH
        for decision_, row, record in zip(decisions, rows, records, strict=True):
            seq += 1
            payload = decision_payload(seq, prev, decision_, created_at)
            prev = _reference_hash(payload)
            assert row == _reference_row(payload, prev) == entry_row(payload, prev)
            assert [type(v) for v in row] == [type(v) for v in _reference_row(payload, prev)]
            expected = build_record(payload, prev, None)
            assert record == expected
            assert [type(getattr(record, f.name)) for f in fields(DecisionRecord)] == [
                type(getattr(expected, f.name)) for f in fields(DecisionRecord)]

    @given(outcome=_outcomes, seq=st.integers(1, 99))
    def test_outcome_entry_is_the_rules(self, outcome: NewOutcome, seq: int) -> None:
        """outcome_entry gives the hash and row of outcome_payload, entry_hash and entry_row."""
        payload = outcome_payload(seq, GENESIS_HASH, outcome, timestamp_text(T0))
        record_hash = _reference_hash(payload)
        row = _reference_row(payload, record_hash)
        assert outcome_entry(seq, GENESIS_HASH, outcome, timestamp_text(T0)) == (
            record_hash, row)
        assert [type(v) for v in outcome_entry(seq, GENESIS_HASH, outcome,
                                               timestamp_text(T0))[1]] == [type(v) for v in row]

    @given(payload=st.dictionaries(st.sampled_from([*COLUMNS, "other"]), _json),
           kind=st.sampled_from([DECISION, OUTCOME, "other", _Code.BSC]),
           data=st.data())
    def test_entry_row_of_any_payload(self, payload: dict[str, Any], kind: str,
                                      data: st.DataObject) -> None:
        """entry_row of any payload (an entry of either kind, missing or extra keys, another
        kind) is the first definition's row, or fails as it did."""
        payload["kind"] = kind
        if data.draw(st.booleans()):  # all the keys of its kind, and maybe one more
            keys = KEYS.get(kind, ())
            payload = {k: payload.get(k, data.draw(_json)) for k in keys} | {"kind": kind}
            extra = data.draw(st.sampled_from([None, "state", "reasons", "other"]))
            if extra is not None and extra not in payload:
                payload[extra] = data.draw(_json)
        try:
            expected: Any = _reference_row(payload, "h")
        except (KeyError, TypeError, ValueError) as exc:
            expected = type(exc)
        try:
            got: Any = entry_row(payload, "h")
        except (KeyError, TypeError, ValueError) as exc:
            got = type(exc)
        assert got == expected
