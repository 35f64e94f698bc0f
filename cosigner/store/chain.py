"""The hash chain every store shares: canonical entry payloads, hashes, verification.

An entry's ``record_hash`` is the sha256 of the canonical JSON of its *payload*
(sorted keys, no whitespace, UTF-8), and the payload holds every field of the
entry including ``seq``, ``kind`` and ``prev_hash``.  So changing any field,
removing an entry or re-ordering entries breaks either a hash or a link.

Pure functions: the stores turn their rows into payloads and call these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from cosigner.journal import DECISION_FIELDS, OUTCOME_FIELDS, plain
from cosigner.store.base import GENESIS_HASH, NewDecision, NewOutcome, VerifyResult

DECISION = "decision"
OUTCOME = "outcome"

#: The payload keys of each kind of entry, in the stores' column order.
DECISION_KEYS = ("seq", "kind", "prev_hash", *DECISION_FIELDS, "created_at")
OUTCOME_KEYS = ("seq", "kind", "prev_hash", *OUTCOME_FIELDS, "created_at")
KEYS = {DECISION: DECISION_KEYS, OUTCOME: OUTCOME_KEYS}


def timestamp_text(at: datetime) -> str:
    """The stored form of a time: UTC, microseconds, fixed width (sorts as text).

    Raises:
        ValueError: ``at`` is naive.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a naive datetime is ambiguous: {at.isoformat()} (give a timezone)")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def parse_timestamp(text: str) -> datetime:
    """The inverse of :func:`timestamp_text`."""
    return datetime.fromisoformat(text).astimezone(UTC)


# Values plain() returns as they are: the usual types of a field skip the call.
_AS_IS = frozenset({str, int, type(None)})
_DECISION_FIELDS_OF = attrgetter(*DECISION_FIELDS)
_OUTCOME_FIELDS_OF = attrgetter(*OUTCOME_FIELDS)


def decision_values(seq: int, prev_hash: str, decision: NewDecision,
                    created_at: str) -> tuple[Any, ...]:
    """The hashed fields of a decision entry, in :data:`DECISION_KEYS` order."""
    return (seq, DECISION, prev_hash,
            *[v if type(v) in _AS_IS else plain(v) for v in _DECISION_FIELDS_OF(decision)],
            created_at)


def outcome_values(seq: int, prev_hash: str, outcome: NewOutcome,
                   created_at: str) -> tuple[Any, ...]:
    """The hashed fields of an outcome entry, in :data:`OUTCOME_KEYS` order."""
    return (seq, OUTCOME, prev_hash,
            *[v if type(v) in _AS_IS else plain(v) for v in _OUTCOME_FIELDS_OF(outcome)],
            created_at)


def decision_payload(seq: int, prev_hash: str, decision: NewDecision,
                     created_at: str) -> dict[str, Any]:
    """The hashed fields of a decision entry."""
    return dict(zip(DECISION_KEYS, decision_values(seq, prev_hash, decision, created_at),
                    strict=True))


def outcome_payload(seq: int, prev_hash: str, outcome: NewOutcome,
                    created_at: str) -> dict[str, Any]:
    """The hashed fields of an outcome entry."""
    return dict(zip(OUTCOME_KEYS, outcome_values(seq, prev_hash, outcome, created_at),
                    strict=True))


def entry_hash(payload: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``payload``.

    Raises:
        ValueError: the payload holds something JSON cannot represent exactly.
    """
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


# JSONEncoder.iterencode's C encoder (None without the C accelerator; not in the type stubs).
_C_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)


def one_shot(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode``: for anything but a str, the path it takes (the C encoder, with a
    fresh circular-reference memo when it checks them), without rebuilding per call what
    ``encode`` and ``iterencode`` rebuild."""
    if _C_MAKE_ENCODER is None or encoder.indent is not None:
        return encoder.encode
    args = (encoder.default, json.encoder.encode_basestring_ascii if encoder.ensure_ascii
            else json.encoder.encode_basestring, encoder.indent, encoder.key_separator,
            encoder.item_separator, encoder.sort_keys, encoder.skipkeys, encoder.allow_nan)
    circular = encoder.check_circular

    def encode(o: Any) -> str:
        if isinstance(o, str):
            return encoder.encode(o)
        return "".join(_C_MAKE_ENCODER({} if circular else None, *args)(o, 0))

    return encode


#: The canonical JSON of a payload: ``json.dumps(payload, sort_keys=True,
#: separators=(",", ":"), ensure_ascii=False, allow_nan=False)``.
_canonical = one_shot(json.JSONEncoder(sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False, allow_nan=False))


def verified_checkpoint(meta: Mapping[str, str], hash_at: Callable[[int], str | None]
                        ) -> tuple[int, str]:
    """Where a start verifies the chain from: the ``(seq, hash)`` a writer recorded after
    its last verification (``verified_seq``/``verified_hash`` in the store's meta), once
    the record at that seq is checked to be the one verified; ``(0, GENESIS_HASH)``
    without one (or at seq 0).

    Raises:
        ValueError: the checkpoint is malformed, or its record is not the one verified (an
            edit, or a chain cut shorter than it): the text says which.
    """
    if "verified_seq" not in meta:
        return 0, GENESIS_HASH
    text, hash_text = meta["verified_seq"], meta.get("verified_hash", "")
    if not text.isascii() or not text.isdigit() or len(hash_text) != 64:
        raise ValueError("a malformed verification checkpoint")
    seq = int(text)
    if seq == 0:
        return 0, GENESIS_HASH
    if hash_at(seq) != hash_text:
        raise ValueError(f"record seq {seq} is not the one last verified")
    return seq, hash_text


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as read back from a store, for verification."""

    seq: int
    item_id: object
    payload: Mapping[str, Any]
    record_hash: str


def verify_entries(entries: Iterable[StoredEntry], head: tuple[int, str] | None = None,
                   start: tuple[int, str] = (0, GENESIS_HASH)) -> VerifyResult:
    """Check hashes, links and contiguous seqs of ``entries`` (in seq order).

    ``head`` is the (seq, record_hash) the store recorded as its last entry, so
    that removing entries from the end is detected too.  ``start`` is the
    (seq, record_hash) of an already verified checkpoint: ``entries`` then begin
    right after it (an incremental verification); ``entries`` in the result
    counts only the ones checked.
    """
    expected = start[0] + 1
    prev = start[1]
    for entry in entries:
        if entry.seq != expected:
            # seq is the primary key and entries come in order, so a jump is a gap.
            return _bad(expected, expected - 1 - start[0], f"record seq {expected} is missing")
        where = f"record seq {entry.seq} (item {entry.item_id})"
        try:
            recomputed = entry_hash(entry.payload)
        except (TypeError, ValueError):
            recomputed = ""
        if recomputed != entry.record_hash:
            return _bad(entry.seq, expected - 1 - start[0], f"{where} was edited: hash mismatch")
        if entry.payload.get("prev_hash") != prev:
            return _bad(entry.seq, expected - 1 - start[0], f"{where} does not follow record seq "
                        f"{entry.seq - 1}: prev_hash mismatch (a record before it was "
                        "replaced)")
        prev = entry.record_hash
        expected += 1
    count = expected - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > count:
            return _bad(count + 1, count - start[0], f"record seq {count + 1} is missing "
                        f"(the journal's head is seq {head_seq})")
        if head_seq < count or (count and head_hash != prev):
            return _bad(count, count - start[0], f"record seq {count} does not match the "
                        f"journal's head (seq {head_seq})")
    return VerifyResult(ok=True, entries=count - start[0])


def _bad(seq: int, checked: int, problem: str) -> VerifyResult:
    return VerifyResult(ok=False, entries=checked, first_bad_seq=seq, problem=problem)
