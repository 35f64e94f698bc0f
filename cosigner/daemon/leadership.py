"""Who may poll, decide, post and collect (DESIGN section 4, PostgreSQL high availability).

With SQLite the single-writer lock already makes the process the only one:
:class:`SoleLeader` always leads.  With PostgreSQL, replicas elect one leader with
the journal's session-level advisory lock (:class:`ElectedLeader`): the others are
ready standbys retrying every ``COSIGNER_LEADER_RETRY`` seconds.

The journal itself refuses a write from a process that lost the lock, so a former
leader cannot record, and so cannot post.  Two more guards close the gap between
recording and posting:

* a replica that just won the lock waits one retry interval (``grace``) before its
  first poll, so a former leader that lost its connection has noticed (it probes
  its connection every ``min(1 s, retry / 2)``) and stopped posting;
* :class:`LeaderGatedSource` asks, right before every post, whether this process
  still leads and still holds the item's post claim in the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cosigner.api.models import PendingSnapshot
from cosigner.errors import ApiConnectError, StoreError

from .metrics import Metrics

if TYPE_CHECKING:  # psycopg is imported only when the journal is PostgreSQL
    from cosigner.store.postgres import PostgresJournal

LEADER = "leader"
STANDBY = "standby"


class Leadership(Protocol):
    """The daemon's view of the election."""

    @property
    def role(self) -> str:
        """``leader`` or ``standby``."""
        ...

    @property
    def interval(self) -> float:
        """How often :meth:`step` should run (seconds; 0: never)."""
        ...

    def active(self) -> bool:
        """Whether this process may poll, decide, post and collect right now (no I/O)."""
        ...

    def healthy(self) -> bool:
        """For readiness: a leader, or a standby that reached the database recently."""
        ...

    async def step(self) -> bool:
        """Probe the lock (leader) or try to take it (standby); True when this process
        has just become active (so the daemon polls at once)."""
        ...

    def may_post(self) -> bool:
        """Whether this process may post now (no I/O)."""
        ...


class SoleLeader:
    """The only writer there is (SQLite, memory): always the leader."""

    role = LEADER
    interval = 0.0

    def active(self) -> bool:
        return True

    def healthy(self) -> bool:
        return True

    async def step(self) -> bool:
        return False

    def may_post(self) -> bool:
        return True


class ElectedLeader:
    """Leader election on a :class:`PostgresJournal`'s advisory lock.

    ``retry``: seconds between a standby's attempts (``COSIGNER_LEADER_RETRY``).
    ``grace``: seconds a new leader waits before acting (default ``retry``).
    ``on_acquired``: called (in a worker thread) when the lock is won, before acting:
    the daemon rebuilds its limits ledger from the journal there.
    """

    def __init__(self, journal: PostgresJournal, retry: float, metrics: Metrics, log: Any, *,
                 grace: float | None = None,
                 on_acquired: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.journal = journal
        self.retry = retry
        self.grace = retry if grace is None else grace
        self.metrics = metrics
        self.log = log
        self.on_acquired = on_acquired
        self._clock = clock
        self._probe_timeout = max(0.2, min(retry / 2, 2.0))
        self._active_at: float | None = None   # when the grace ends (None: not leading)
        self._was_active = False
        self._last_try = float("-inf")
        self._last_ok: float | None = None
        self.acquisitions = 0
        metrics.leader.set(0)

    @property
    def interval(self) -> float:
        return max(0.1, min(1.0, self.retry / 2))

    @property
    def role(self) -> str:
        return LEADER if self._active_at is not None and self.journal.lock_held() else STANDBY

    def active(self) -> bool:
        return (self._active_at is not None and self.journal.lock_held()
                and self._clock() >= self._active_at)

    def healthy(self) -> bool:
        if self.role == LEADER:
            return True
        return self._last_ok is not None and self._clock() - self._last_ok <= 2 * self.retry + 1

    async def step(self) -> bool:
        now = self._clock()
        if self._active_at is not None:
            if await self._probe():
                self._last_ok = now
                became = self.active() and not self._was_active
                self._was_active = self.active()
                if became:
                    self.log.info("leader.active", epoch=self.journal.epoch)
                return became
            self._lost("the lock's connection is gone")
            return False
        if now - self._last_try < self.retry:
            return False
        self._last_try = now
        try:
            won = await asyncio.to_thread(self.journal.try_lead)
        except StoreError as exc:
            self._last_ok = None
            self.log.error("leader.unavailable", error=str(exc))
            return False
        self._last_ok = self._clock()
        if not won:
            return False
        if self.on_acquired is not None:
            try:
                await asyncio.to_thread(self.on_acquired)
            except Exception as exc:
                self.log.error("leader.prepare_failed", error=str(exc), kind=type(exc).__name__)
                await asyncio.to_thread(self.journal.step_down)
                return False
        self.acquisitions += 1
        self._active_at = self._clock() + self.grace
        self._was_active = False
        self.metrics.leader.set(1)
        self.log.info("leader.acquired", epoch=self.journal.epoch, grace=self.grace)
        if self.grace <= 0:
            self._was_active = True
            return True
        return False

    async def _probe(self) -> bool:
        if not self.journal.lock_held():
            return False
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.journal.check_lead),
                                          timeout=self._probe_timeout)
        except TimeoutError:
            return False  # a cut network: treat as lost (the thread ends on its own)

    def _lost(self, why: str) -> None:
        self._active_at = None
        self._was_active = False
        # Yield to the standbys: try again only after two retry intervals, so a replica
        # whose connection flaps does not win the lock straight back.
        self._last_try = self._clock() + self.retry
        self.metrics.leader.set(0)
        self.log.error("leader.lost", reason=why)

    def may_post(self) -> bool:
        if not self.active():
            if self._active_at is not None and not self.journal.lock_held():
                self._lost("a journal write found the lock gone")
            return False
        return True


class LeaderGatedSource:
    """The API client, posting only while :meth:`Leadership.may_post` says so and this
    process holds the item's post claim in the journal (whatever the election says).

    A refused post raises :class:`ApiConnectError` (provably never sent), which the
    pipeline treats as an unknown outcome: the record stays ``decided`` for the
    replica that holds the claim (or, once that one is gone, the leader) to post.
    """

    def __init__(self, client: Any, leadership: Leadership, journal: PostgresJournal) -> None:
        self.client = client
        self.leadership = leadership
        self.journal = journal

    async def pending(self) -> PendingSnapshot:
        snapshot: PendingSnapshot = await self.client.pending()
        return snapshot

    async def approve(self, fields: dict[str, Any], data: str) -> None:
        item_id = fields.get("id")
        if not self.leadership.may_post():
            raise ApiConnectError("approve", f"item {item_id}: not posted, this replica is "
                                  "not the leader")
        if not await self._claim(item_id):
            raise ApiConnectError("approve", f"item {item_id}: not posted, another live "
                                  "replica holds its post claim")
        await self.client.approve(fields, data)

    async def _claim(self, item_id: object) -> bool:
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            return False
        if self.journal.holds_claim(item_id):
            return True
        try:
            return await asyncio.to_thread(self.journal.claim_post, item_id)
        except StoreError:
            return False

    async def collect(self, is_main: int, data: str) -> None:
        if not self.leadership.may_post():
            raise ApiConnectError("collect", "not collected, this replica is not the leader")
        await self.client.collect(is_main, data)
