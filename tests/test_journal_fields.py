"""The journal record's fields are declared once (cosigner.journal) and derived elsewhere."""

from __future__ import annotations

from dataclasses import fields

from cosigner.journal import DECISION_FIELDS, OUTCOME_FIELDS, DecisionRecord
from cosigner.store.audit import EXPORT_COLUMNS
from cosigner.store.chain import DECISION_KEYS, OUTCOME_KEYS


class TestFieldsDefinedOnce:
    def test_payload_keys_derive_from_the_value_types(self) -> None:
        """The hashed payload of each entry is the value type's fields plus the chain's."""
        assert ("seq", "kind", "prev_hash", *DECISION_FIELDS, "created_at") == DECISION_KEYS
        assert ("seq", "kind", "prev_hash", *OUTCOME_FIELDS, "created_at") == OUTCOME_KEYS

    def test_a_record_holds_every_decision_field(self) -> None:
        """A DecisionRecord carries every field of the decision it records."""
        assert set(DECISION_FIELDS) <= {f.name for f in fields(DecisionRecord)}

    def test_the_export_has_every_record_field(self) -> None:
        """The export's stable column order names every field of a record, once."""
        assert sorted(EXPORT_COLUMNS) == sorted(f.name for f in fields(DecisionRecord))
