"""Every interface of cosigner in one place (DESIGN section 9).

Implementations live in folders by role: the provider API in :mod:`cosigner.api`
(and the sandbox that emulates it), the signer in :mod:`cosigner.signing`, the
journal in :mod:`cosigner.store`.  The daemon and the pure decision only know
these protocols, so tests hand them real fakes (an in-memory journal, a local
sandbox, ``httpx.MockTransport``) instead of patching.

* :data:`Clock`: the current time, timezone-aware; injected wherever time is read.
* :class:`PendingSource`: what the pipeline needs of the provider API.
* :class:`Signer`: turns sign-objects into the API's ``data``.
* :class:`Journal`: the decision journal (its value types are in :mod:`cosigner.journal`),
  and :class:`LimitGuard`, the limits it re-checks inside its write transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from cosigner.errors import SigningError
from cosigner.journal import (
    ApprovalRow,
    DecisionRecord,
    Head,
    ItemView,
    NewDecision,
    NewOutcome,
    VerifyResult,
)
from cosigner.models import Action, PendingSnapshot

#: A clock: returns the current time, timezone-aware.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class PendingSource(Protocol):
    """What the pipeline needs of the provider API (:class:`cosigner.api.client.ApiClient`).

    Every method raises :class:`~cosigner.errors.ApiError` (or a subclass) when the
    exchange does not succeed; ``approve`` and ``collect`` raise
    :class:`~cosigner.errors.AlreadyProcessedError` when the item was already decided.
    """

    async def pending(self) -> PendingSnapshot:
        """Every page of the pending list read into one snapshot."""
        ...

    async def approve(self, fields: Mapping[str, Any], data: str) -> None:
        """Post one decision: the signed fields plus ``data``."""
        ...

    async def collect(self, is_main: int, data: str) -> None:
        """Trigger fund collection for ``isMain``."""
        ...


class Signer(Protocol):
    """Signs sign-objects with the merchant's shard (:class:`cosigner.signing.pool.BatchSigner`).

    A payload that cannot be signed gives its :class:`~cosigner.errors.SigningError`
    in place of the ``data``; ``sign_many`` raises only when the signer itself broke.
    """

    def sign_one(self, payload: bytes) -> str:
        """The ``data`` of one payload (raises SigningError)."""
        ...

    async def sign_many(self, payloads: Sequence[bytes]) -> list[str | SigningError]:
        """One ``data`` (or the SigningError) per payload, in order."""
        ...

    async def aclose(self) -> None:
        """Release the signer's resources (a worker process)."""
        ...


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
