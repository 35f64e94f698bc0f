"""The value types' validation and the hash chain's verification, without a store."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosigner.models import Action
from cosigner.store import NewOutcome, VerifyResult
from cosigner.store.base import GENESIS_HASH
from cosigner.store.chain import (
    StoredEntry,
    decision_payload,
    entry_hash,
    outcome_payload,
    timestamp_text,
    verify_entries,
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
