"""The journal's interface and value types (DESIGN section 4: never decide twice).

The journal is an append-only, hash-chained log of *entries* plus a derived
per-item index.  There are two kinds of entry:

* a **decision** (:class:`NewDecision`): what the policy decided for one pending
  item, written durably *before* anything is posted;
* an **outcome** (:class:`NewOutcome`): what the API answered when that decision
  was posted (``posted`` or ``failed``).

Every entry has a ``seq`` (1, 2, ...), the ``prev_hash`` of the entry before it
(64 zeros for the first) and its own ``record_hash``, a sha256 over all its
fields (see :mod:`cosigner.store.chain`), so an edited or deleted entry is found
by :meth:`Journal.verify`.

A decision's **state** is derived from the entries: ``shadow`` for a decision
recorded in shadow mode (never posted), else the state of its latest outcome
(``posted`` or ``failed``), else ``decided``.  A hold stays ``decided``: holds
are never posted.

Implementations: :class:`~cosigner.store.memory.MemoryJournal` (tests) and
:class:`~cosigner.store.sqlite.SqliteJournal` (the default store).  Every one
passes ``tests/store/test_contract.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from cosigner.models import Action
from cosigner.redact import mask_text

#: Decision modes: ``enforce`` decisions are posted, ``shadow`` ones never are.
ENFORCE = "enforce"
SHADOW = "shadow"
MODES = (ENFORCE, SHADOW)

#: Decision states (see the module docstring).
DECIDED = "decided"
POSTED = "posted"
FAILED = "failed"
SHADOW_STATE = SHADOW
STATES = (DECIDED, POSTED, FAILED, SHADOW_STATE)

#: The states an outcome entry can record.
OUTCOME_STATES = (POSTED, FAILED)

#: ``prev_hash`` of the first entry.
GENESIS_HASH = "0" * 64

#: A clock: returns the current time, timezone-aware.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


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
    mode: str

    def __post_init__(self) -> None:
        _check_int("item_id", self.item_id)
        if not isinstance(self.content_hash, str) or not _SHA256_HEX.fullmatch(self.content_hash):
            raise ValueError(f"item {self.item_id}: content_hash must be 64 lowercase hex digits")
        for name in ("chain_id", "from_address", "to_address", "amount_text"):
            _check_text(name, getattr(self, name), optional=True)
        # Accept the action's text ("approve") as well as the enum member.
        object.__setattr__(self, "action", Action(self.action))
        for name in ("rule", "policy_name", "policy_sha256", "mode"):
            _check_text(name, getattr(self, name))
        if isinstance(self.reasons, str):
            raise ValueError("reasons must be a sequence of str, not a str")
        object.__setattr__(self, "reasons", tuple(self.reasons))
        for reason in self.reasons:
            _check_text("reasons[]", reason)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
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
    mode: str
    created_at: datetime
    state: str
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
    ``api_message`` is the provider's untrusted text: it is stored masked
    (:func:`cosigner.redact.mask_text`), so a message echoing the signing string,
    a signature or a key never reaches the journal or an export.

    Raises:
        ValueError: a field has the wrong type or ``state`` is not an outcome state.
    """

    decision_seq: int
    item_id: int
    state: str
    api_code: int | None
    api_message: str

    def __post_init__(self) -> None:
        _check_int("decision_seq", self.decision_seq, minimum=1)
        _check_int("item_id", self.item_id)
        if self.state not in OUTCOME_STATES:
            raise ValueError(f"outcome state must be posted or failed, not {self.state!r}")
        if self.api_code is not None:
            _check_int("api_code", self.api_code)
        _check_text("api_message", self.api_message)
        object.__setattr__(self, "api_message", mask_text(self.api_message))


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


class LimitGuard(Protocol):
    """The policy's limits, as the journal re-checks them inside its write transaction.

    The journal, not an in-memory ledger, is the authority: :meth:`Journal.record_decisions`
    reads the enforced approvals of the last :attr:`window` *inside* the transaction that
    records a batch, and asks :meth:`violations` which of the batch's approvals would break a
    limit on top of them.  Implementations are pure (no I/O).
    """

    @property
    def window(self) -> timedelta:
        """How far back the history must go (the longest limit window; 0 = no limits)."""
        ...

    def violations(self, history: Sequence[ApprovalRow], approvals: Sequence[NewDecision],
                   now: datetime) -> dict[int, str]:
        """Item id -> ``limit:<name>`` for each approval (in order, each counting the ones
        before it) that would push a limit over its maximum; empty when all fit."""
        ...


@runtime_checkable
class Journal(Protocol):
    """The decision journal.  Calls are serialised: the daemon calls it from a
    worker thread (``asyncio.to_thread``), one call at a time, and every
    implementation also guards itself with a lock.

    Every method but :meth:`open` and :meth:`close` raises
    :class:`~cosigner.errors.StoreError` when the journal is not open or its
    storage fails; a failed write leaves nothing written.
    """

    def init(self) -> str:
        """Create the journal, or migrate an existing one to the current schema; return its id.

        Creating a journal is an explicit act (``cosigner journal init``): :meth:`open`
        never creates one.  Safe to run again (and concurrently: migrations run under a
        lock).  Leaves the journal closed.  With a witness configured, writes the head of a
        new journal to it.

        Raises:
            JournalUnavailableError: it cannot be created, is not a journal, or is from a
                newer schema; JournalLockedError: another process is its writer.
        """
        ...

    def open(self) -> None:
        """Open an existing journal and validate it; never creates one.

        A *writer* journal (constructed with ``writer=True``) also takes the
        single-writer lock for the life of the process, verifies its hash chain
        (incrementally, from the last verified checkpoint) and checks that its head is
        not behind, nor off the line of, the witness.  Opening an open journal does
        nothing.

        Raises:
            JournalLockedError: another process is the journal's writer.
            JournalUnavailableError: it is missing, unreadable, not a journal, from a
                newer or older schema (run ``cosigner journal init``), its chain does not
                verify, or it is behind its witness.
        """

    def close(self) -> None:
        """Close the journal and release the writer lock (idempotent)."""

    @property
    def journal_id(self) -> str:
        """The journal's creation id (random, fixed when it was created)."""
        ...

    def head(self) -> Head:
        """The last entry's seq and hash.

        Raises:
            StoreError: the journal cannot be read.
        """
        ...

    def lock_held(self) -> bool:
        """Whether this (writer) journal still holds its writer lock; False when read-only
        or closed.  Cheap: the readiness probe calls it."""
        ...

    def remember_policy(self, sha256: str, seen_at: datetime) -> datetime:
        """When the policy bundle with this digest was first seen (recording ``seen_at`` if
        it never was).  Persisted, so a restart neither resets nor skips a loosening delay.

        Raises:
            StoreError: the journal cannot be read or written.
        """
        ...

    def lookup(self, item_ids: Iterable[int], modes: Collection[str]) -> dict[int, ItemView]:
        """What the journal knows about each id; ids never decided are absent.

        ``latest`` in each view is the latest decision among ``modes``.  Fast for
        10,000 ids.

        Raises:
            StoreError: the journal cannot be read.
        """
        ...

    def record_decisions(self, decisions: Sequence[NewDecision],
                         guard: LimitGuard | None = None) -> list[DecisionRecord]:
        """Append the decisions in one durable transaction (one commit, all or nothing).

        Inside that transaction the journal is the authority: it refuses the whole batch
        when an enforce approve/reject names an id that already has an enforce
        approve/reject decision, or (with ``guard``) when an approval would break a limit
        given the enforced approvals it holds.  Returns the records in order, ``decided``
        (or ``shadow``).  After the commit the witness (if any) holds the new head.

        Raises:
            JournalConflictError: refused as above; nothing was recorded.
            LockLostError: this process is no longer the writer; nothing was recorded.
            StoreError: the journal cannot be written; nothing was recorded.
        """
        ...

    def record_outcomes(self, outcomes: Sequence[NewOutcome]) -> None:
        """Append the outcomes in one durable transaction (all or nothing).

        An outcome may follow a ``decided`` or ``failed`` decision (a retry);
        applied in order, so ``failed`` then ``posted`` in one batch is fine.

        Raises:
            StoreError: nothing was recorded, because the journal cannot be
                written, or an outcome names an unknown decision seq, another
                item, a hold, a shadow decision or a decision already ``posted``.
        """

    def approvals_since(self, since: datetime) -> list[ApprovalRow]:
        """Enforced approvals (any state) created at or after ``since``, oldest first.

        This is the limits' history across restarts.

        Raises:
            ValueError: ``since`` is a naive datetime.
            StoreError: the journal cannot be read.
        """
        ...

    def records(self, since: datetime | None = None, action: Action | None = None,
                limit: int | None = None) -> Iterator[DecisionRecord]:
        """Decisions with their state, oldest first, optionally filtered.

        ``since`` keeps decisions created at or after it; ``limit`` keeps the
        first ``limit`` of those.

        Raises:
            ValueError: ``since`` is naive or ``limit`` negative.
            StoreError: the journal cannot be read.
        """
        ...

    def verify(self) -> VerifyResult:
        """Walk the whole chain and report the first broken or missing entry.

        Raises:
            StoreError: the journal cannot be read at all.
        """
        ...

    def count_by_state(self) -> dict[str, int]:
        """How many decisions are in each state (every state is a key).

        Raises:
            StoreError: the journal cannot be read.
        """
        ...
