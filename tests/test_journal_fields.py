"""The journal record's fields are declared once (cosigner.journal) and derived elsewhere."""

from __future__ import annotations

from dataclasses import fields

import pytest

from cosigner.journal import DECISION_FIELDS, OUTCOME_FIELDS, DecisionRecord
from cosigner.store.audit import EXPORT_COLUMNS
from cosigner.store.chain import DECISION_KEYS, OUTCOME_KEYS
from cosigner.store.records import RECORD_FIELDS


class TestFieldsDefinedOnce:
    def test_payload_keys_derive_from_the_value_types(self) -> None:
        """The hashed payload of each entry is the value type's fields plus the chain's."""
        assert ("seq", "kind", "prev_hash", *DECISION_FIELDS, "created_at") == DECISION_KEYS
        assert ("seq", "kind", "prev_hash", *OUTCOME_FIELDS, "created_at") == OUTCOME_KEYS

    def test_a_record_holds_every_decision_field(self) -> None:
        """A DecisionRecord carries every field of the decision it records."""
        assert set(DECISION_FIELDS) <= {f.name for f in fields(DecisionRecord)}

    def test_a_new_record_takes_its_fields_in_their_order(self) -> None:
        """The write path builds a record positionally: its first fields, in their order."""
        names = tuple(f.name for f in fields(DecisionRecord))
        assert names[:len(RECORD_FIELDS)] == RECORD_FIELDS
        assert all(f.default is None for f in fields(DecisionRecord)[len(RECORD_FIELDS):])

    def test_the_export_has_every_record_field(self) -> None:
        """The export's stable column order names every field of a record, once."""
        assert sorted(EXPORT_COLUMNS) == sorted(f.name for f in fields(DecisionRecord))


def test_new_decision_coerces_and_still_refuses_after_its_fast_paths() -> None:
    """Text action and mode become members, a list of reasons a tuple; non-ASCII text is
    kept, a lone surrogate anywhere is still refused."""
    from cosigner.journal import NewDecision
    from cosigner.models import Action, Mode

    base = dict(item_id=1, content_hash="a" * 64, chain_id="56", from_address="0xa",
                to_address="0xb", amount_text="1", action="approve", rule="r",
                reasons=["ok", "é"], policy_name="pé", policy_sha256="b" * 64, mode="enforce")
    made = NewDecision(**base)  # type: ignore[arg-type]
    assert made.action is Action.APPROVE
    assert made.mode is Mode.ENFORCE
    assert made.reasons == ("ok", "é")
    assert type(made.reasons) is tuple
    for name, bad, why in (("rule", "x\ud800", "not valid Unicode"),
                           ("reasons", ["\udfff"], "not valid Unicode"),
                           ("mode", "other", "mode must be one of"),
                           ("policy_name", 5, "must be a str")):
        with pytest.raises(ValueError, match=why):
            NewDecision(**{**base, name: bad})  # type: ignore[arg-type]
