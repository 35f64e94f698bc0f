"""Every interface of cosigner in one place (DESIGN section 9).

Implementations live in folders by role: the provider API in :mod:`cosigner.api`
(and the sandbox that emulates it), the signer in :mod:`cosigner.signing`, the
journal in :mod:`cosigner.store`.  The daemon and the pure decision only know
these protocols, so tests hand them real fakes (an in-memory journal, a local
sandbox, ``httpx.MockTransport``) instead of patching.

* :data:`Clock`: the current time, timezone-aware; injected wherever time is read.
* :class:`PendingSource`: what the pipeline needs of the provider API.
* :class:`Signer`: turns sign-objects into the API's ``data``.
* ``Journal``: the decision journal, :class:`cosigner.store.base.Journal` (moving here
  once the store's journal-authority contract has landed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from cosigner.errors import SigningError
from cosigner.models import PendingSnapshot

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
