"""The journal's value types (DESIGN section 4: never decide twice); its interface,
:class:`cosigner.abc.Journal`, is with every other interface in :mod:`cosigner.abc`.

The journal is an append-only, hash-chained log of *entries* plus a derived
per-item index.  There are two kinds of entry:

* a **decision** (:class:`NewDecision`): what the policy decided for one pending
  item, written durably *before* anything is posted;
* an **outcome** (:class:`NewOutcome`): what the API answered when that decision
  was posted (``posted`` or ``failed``).

Every entry has a ``seq`` (1, 2, ...), the ``prev_hash`` of the entry before it
(64 zeros for the first) and its own ``record_hash``, a sha256 over all its
fields (see :mod:`cosigner.store.chain`), so an edited or deleted entry is found
by ``Journal.verify``.

A decision's **state** is derived from the entries: ``shadow`` for a decision
recorded in shadow mode (never posted), else the state of its latest outcome
(``posted`` or ``failed``), else ``decided``.  A hold stays ``decided``: holds
are never posted.

Implementations: :class:`~cosigner.store.memory.MemoryJournal` (tests) and
:class:`~cosigner.store.sqlite.SqliteJournal` (the default store).  Every one
passes ``tests/store/test_contract.py``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields
from datetime import datetime

from cosigner.models import Action, Mode, RecordState
from cosigner.redact import mask_text

#: Decision modes (:class:`~cosigner.models.Mode`): ``enforce`` decisions are posted,
#: ``shadow`` ones never are.
ENFORCE = Mode.ENFORCE
SHADOW = Mode.SHADOW
MODES = tuple(Mode)

#: Decision states (:class:`~cosigner.models.RecordState`; see the module docstring).
DECIDED = RecordState.DECIDED
POSTED = RecordState.POSTED
FAILED = RecordState.FAILED
GONE = RecordState.GONE
SHADOW_STATE = RecordState.SHADOW
STATES = tuple(RecordState)

#: The states an outcome entry can record (``gone``: the item left the pending list
#: before the post's outcome was known).
OUTCOME_STATES = (POSTED, FAILED, GONE)

#: ``prev_hash`` of the first entry.
GENESIS_HASH = "0" * 64

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_INT64 = (-(2**63), 2**63 - 1)


def _check_int(name: str, value: object, minimum: int = _INT64[0]) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not minimum <= value <= _INT64[1]:
        raise ValueError(f"{name} {value} is out of range")


def _check_text(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, not {type(value).__name__}")
    if value.isascii():  # O(1) in CPython: ASCII text holds no surrogate
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate would fail half-way through a write
        raise ValueError(f"{name} is not valid Unicode text") from None


@dataclass(frozen=True, slots=True)
class NewDecision:
    """A decision to append to the journal.

    ``chain_id``, ``from_address``, ``to_address`` and ``amount_text`` are the
    item's fields exactly as the API sent them, or None where a malformed item
    lacks one (such an item can be held or rejected, never approved).

    Raises:
        ValueError: a field has the wrong type, ``content_hash`` is not a sha256
            hex digest, ``mode`` is not ``enforce``/``shadow``, or an approve
            lacks one of the item's fields.
    """

    item_id: int
    content_hash: str
    chain_id: str | None
    from_address: str | None
    to_address: str | None
    amount_text: str | None
    action: Action
    rule: str
    reasons: tuple[str, ...]
    policy_name: str
    policy_sha256: str
    mode: Mode

    def __post_init__(self) -> None:
        _check_int("item_id", self.item_id)
        if not isinstance(self.content_hash, str) or not _SHA256_HEX.fullmatch(self.content_hash):
            raise ValueError(f"item {self.item_id}: content_hash must be 64 lowercase hex digits")
        for name in ("chain_id", "from_address", "to_address", "amount_text"):
            _check_text(name, getattr(self, name), optional=True)
        # Accept the action's text ("approve") as well as the enum member.
        if type(self.action) is not Action:
            object.__setattr__(self, "action", Action(self.action))
        for name in ("rule", "policy_name", "policy_sha256", "mode"):
            _check_text(name, getattr(self, name))
        if isinstance(self.reasons, str):
            raise ValueError("reasons must be a sequence of str, not a str")
        if type(self.reasons) is not tuple:
            object.__setattr__(self, "reasons", tuple(self.reasons))
        for reason in self.reasons:
            _check_text("reasons[]", reason)
        if type(self.mode) is not Mode:
            if self.mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
            object.__setattr__(self, "mode", Mode(self.mode))
        if self.action is Action.APPROVE and None in (
                self.chain_id, self.from_address, self.to_address, self.amount_text):
            raise ValueError(f"item {self.item_id}: an approve needs chain, from, to and amount")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A decision as stored, with its current state and the API's last answer.

    ``outcome_code``, ``outcome_message`` and ``outcome_at`` come from the
    decision's latest outcome entry (all None while it is ``decided`` or
    ``shadow``).
    """

    seq: int
    item_id: int
    content_hash: str
    chain_id: str | None
    from_address: str | None
    to_address: str | None
    amount_text: str | None
    action: Action
    rule: str
    reasons: tuple[str, ...]
    policy_name: str
    policy_sha256: str
    mode: Mode
    created_at: datetime
    state: RecordState
    outcome_code: int | None
    outcome_message: str | None
    prev_hash: str
    record_hash: str
    outcome_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewOutcome:
    """The API's answer to posting the decision at ``decision_seq``.

    ``state`` is ``posted`` (the API accepted it, or said it was already
    processed) or ``failed`` (the API answered with a definitive error).

    Raises:
        ValueError: a field has the wrong type or ``state`` is not an outcome state.
    """

    decision_seq: int
    item_id: int
    state: RecordState
    api_code: int | None
    api_message: str

    def __post_init__(self) -> None:
        _check_int("decision_seq", self.decision_seq, minimum=1)
        _check_int("item_id", self.item_id)
        if self.state not in OUTCOME_STATES:
            raise ValueError(f"outcome state must be posted, failed or gone, "
                             f"not {self.state!r}")
        object.__setattr__(self, "state", RecordState(self.state))
        if self.api_code is not None:
            _check_int("api_code", self.api_code)
        _check_text("api_message", self.api_message)
        # The provider's untrusted text: stored masked (cosigner.redact), so a message
        # echoing the signing string, a signature or a key never reaches the journal.
        object.__setattr__(self, "api_message", mask_text(self.api_message))
        _check_text("api_message", self.api_message)


@dataclass(frozen=True, slots=True)
class ItemView:
    """What the journal knows about one item id.

    ``first_content_hash`` is the content hash of the first decision ever
    recorded for the id, in any mode: a different hash now means the item
    mutated.  ``latest`` is the latest decision in the modes asked for, or None
    when the id was only decided in other modes.
    """

    item_id: int
    first_content_hash: str
    latest: DecisionRecord | None


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """An enforced approval, as the limits need it (any state: posted or not)."""

    chain_id: str
    from_address: str
    to_address: str
    amount_text: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The result of walking the hash chain.

    ``first_bad_seq`` and ``problem`` (one sentence naming the record) are None
    when ``ok``.  ``entries`` counts the entries checked (decisions and outcomes).
    """

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Head:
    """The end of the hash chain: the last entry's ``seq`` and ``record_hash``.

    An empty journal's head is ``(0, GENESIS_HASH)``.
    """

    seq: int
    hash: str


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


#: The fields of a decision as recorded, in the stores' order: declared once, by
#: :class:`NewDecision`; the hashed payload, the stores' columns and the records
#: derive from it.
DECISION_FIELDS: tuple[str, ...] = _names(NewDecision)
#: The fields of an outcome as recorded, declared by :class:`NewOutcome`.
OUTCOME_FIELDS: tuple[str, ...] = _names(NewOutcome)


def plain(value: object) -> object:
    """A field's value as stored and hashed: enums as their text, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value
