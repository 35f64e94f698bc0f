"""The journal record's fields are declared once (cosigner.journal) and derived elsewhere."""

from __future__ import annotations

from dataclasses import fields

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
