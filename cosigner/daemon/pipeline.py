"""The decision pipeline's I/O: snapshot -> decide -> journal -> sign -> post -> record.

Every decision about an item is :func:`cosigner.decide.decide`'s; this module
only reads and writes around it (DESIGN sections 2 and 4):

* every decision is journaled durably, in one transaction per chunk, **before**
  any post it covers; the outcomes of posts are recorded promptly after them, in
  small group commits (:class:`OutcomeWriter`), never before the post;
* the pause file is checked before every post and every collection;
* a recorded approve/reject whose item has left the pending list before its post
  was confirmed is settled as ``gone`` (outcome unknown), logged and counted in
  ``cosigner_decided_unposted_items``;
* every exception, timeout or unexpected answer ends in hold for that item (or
  an unchanged ``decided`` record that the next cycle re-posts), a log event and
  a metric, and the cycle carries on with the next item.  No error path approves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from cosigner.abc import Clock, LimitGuard, PendingSource, utc_now
from cosigner.decide import Outcome, Step, decide
from cosigner.errors import (
    AlreadyProcessedError,
    ApiError,
    ApiResponseError,
    CosignerError,
    JournalConflictError,
    SigningError,
)
from cosigner.models import (
    Action,
    EventState,
    Mode,
    PendingItem,
    PendingSnapshot,
    RecordState,
    valid_item_id,
)
from cosigner.policy import Approval, CompiledPolicy, Ledger
from cosigner.policy.governance import Pending
from cosigner.signing import Shard, collect_sign_object
from cosigner.signing.objects import approval_fields, approval_sign_object
from cosigner.signing.pool import BatchSigner
from cosigner.store.base import DecisionRecord, ItemView, Journal, NewDecision, NewOutcome

from .guard import BothLimits, PolicyLimitGuard
from .metrics import Metrics

#: The errors that mean "no pause file" (no such file, or a path component is no
#: directory); any other (EACCES, EIO, ELOOP: a symlink loop sits at the path) counts
#: as paused.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR})

Signed = tuple[DecisionRecord, "str | SigningError"]

CHUNK = 500  # items decided, journaled (one commit) and signed together
DECIDE_SLICE = 32  # items decided (or counted) between two turns of the event loop
SIGN_SLICE = 128  # payloads built between two turns of the event loop
OUTCOME_BATCH = 128  # outcomes recorded in one commit at most ...
OUTCOME_DELAY = 0.1  # ... or after this many seconds, whichever comes first
#: How long a record settled as ``gone`` counts in ``cosigner_decided_unposted_items``.
GONE_SHOWN_FOR = timedelta(days=1)


class DecisionEvent(NamedTuple):
    """What happened to one item in a cycle (for the demo's live table and for tests).

    A named tuple: immutable as a frozen dataclass, built for ~1/5 of its cost (two
    per item while anyone listens)."""

    item_id: int | None
    chain: str
    amount: str
    to: str
    action: str
    rule: str
    reasons: tuple[str, ...]
    state: EventState
    detail: str = ""


@dataclass
class PollResult:
    """Counts of one poll cycle; ``ok`` is False when the cycle hit an error."""

    ok: bool = True
    seen: int = 0
    decided: int = 0
    approved: int = 0
    rejected: int = 0
    held: int = 0
    posted: int = 0
    reposted: int = 0
    reconciled: int = 0
    failed: int = 0
    unknown: int = 0
    mutations: int = 0
    skipped: int = 0
    paused: int = 0
    gone: int = 0
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0

    def add(self, other: PollResult) -> None:
        """Count *other* (a chunk's deciding) in this cycle's result."""
        for name in ("seen", "decided", "approved", "rejected", "held", "posted", "reposted",
                     "reconciled", "failed", "unknown", "mutations", "skipped", "paused",
                     "gone"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ok = self.ok and other.ok
        self.errors.extend(other.errors)


class PolicyState:
    """The policy in force and the ledger of approvals its limits count."""

    def __init__(self, policy: CompiledPolicy, ledger: Ledger, path: Path | None = None) -> None:
        self.policy = policy
        self.ledger = ledger
        self.path = path
        # governance (DESIGN section 11): a bundle enforced as the intersection until due
        self.pending: Pending | None = None


def rebuild_ledgers(state: PolicyState, journal: Journal, now: datetime) -> None:
    """The ledgers of *state* counted from the journal again: the one in force and the
    pending bundle's (the same object when the policy in force is unknown)."""
    pending = state.pending
    shared = pending is not None and pending.ledger is state.ledger
    state.ledger = ledger_from_journal(state.policy, journal, now)
    if pending is not None:
        pending.ledger = state.ledger if shared else ledger_from_journal(
            pending.policy, journal, now)


def ledger_from_journal(policy: CompiledPolicy, journal: Journal, now: datetime) -> Ledger:
    """Rebuild the limits' usage from the journal's approvals (limits persist across restarts)."""
    longest = max((lim.window for lim in policy.limits), default=timedelta(0))
    approvals: list[Approval] = []
    if longest > timedelta(0):
        for row in journal.approvals_since(now - longest):
            approvals.append(Approval(chain_id=row.chain_id, from_address=row.from_address,
                                      to_address=row.to_address,
                                      amount=Decimal(row.amount_text), at=row.created_at))
    return Ledger(policy, approvals)


class OutcomeWriter:
    """Records post outcomes promptly: a group commit every :data:`OUTCOME_BATCH` outcomes
    or :data:`OUTCOME_DELAY` seconds, whichever comes first (never one fsync per item)."""

    def __init__(self, journal: Journal, log: Any, *, batch: int = OUTCOME_BATCH,
                 delay: float = OUTCOME_DELAY) -> None:
        self.journal = journal
        self.log = log
        self.batch = batch
        self.delay = delay
        self.errors: list[str] = []
        self._pending: list[NewOutcome] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._due = False  # a commit task is started and has not taken the queue yet

    async def add(self, outcome: NewOutcome) -> None:
        """Queue an outcome (after its post); commit when the batch is full.

        The commit of a full batch runs as a task of its own, so the poster that filled it
        goes on posting.  Only when the journal is a whole batch behind (a commit is still
        running and a batch has queued up since) does a poster wait for it, so the queue
        stays within about two batches.
        """
        self._pending.append(outcome)
        if len(self._pending) < self.batch:
            if self._timer is None and not self._due:
                self._timer = asyncio.get_running_loop().call_later(self.delay,
                                                                    self._flush_soon)
        elif self._lock.locked():
            await self.flush()
        elif self._due:
            await asyncio.sleep(0)  # the commit's task, due first, takes the queue now
        else:
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._due = True
        task = asyncio.create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Commit every queued outcome (one transaction)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            batch, self._pending = self._pending, []
            self._due = False
            if not batch:
                return
            try:
                await asyncio.to_thread(self.journal.record_outcomes, batch)
            except Exception as exc:
                # The posts happened; the next cycle re-posts them and reconciles the
                # "already processed" answers.
                self.errors.append(f"journal: {exc}")
                self.log.error("journal.outcome_write_failed", error=str(exc),
                               outcomes=len(batch))

    async def close(self) -> None:
        """Commit what is queued and wait for timer-started commits."""
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Pipeline:
    """One poll cycle and one collection round, wired to the network, the shard and the journal."""

    def __init__(self, client: PendingSource, shard: Shard, journal: Journal,
                 state: PolicyState, metrics: Metrics, log: Any, *, mode: str = "enforce",
                 concurrency: int = 8, pause_file: Path | None = None,
                 collect_is_main: Sequence[int] = (1, 0),
                 clock: Clock = utc_now,
                 listeners: Iterable[Callable[[DecisionEvent], None]] = (),
                 after_journal: Callable[[list[DecisionRecord]], None] | None = None,
                 signer: BatchSigner | None = None) -> None:
        self.client = client
        self.shard = shard
        self.signer = signer or BatchSigner(shard)
        self.journal = journal
        self.state = state
        self.metrics = metrics
        self.log = log
        self.mode = Mode(mode)
        self.concurrency = concurrency
        self.pause_file = pause_file
        self.collect_is_main = tuple(collect_is_main)
        self.clock = clock
        self.listeners = list(listeners)
        self.after_journal = after_journal  # test hook: a "crash" between journal and post
        self.stopping = asyncio.Event()
        self._mutations_seen: set[tuple[int, str]] = set()
        # id -> seq of enforce approve/reject records whose post is not confirmed
        # (decided or failed); None until read from the journal at the first poll.
        self._unposted: dict[int, int] | None = None
        # item id -> when its record was settled as gone (the gauge shows a day of them)
        self._gone: dict[int, datetime] = {}
        self.last_poll_ok: float | None = None
        self.journal_ok = True   # the last journal write succeeded (readiness)
        self.signing_ok = True   # the last signing round worked (readiness)
        self.in_flight = 0
        self._posted_ok = metrics.posts.labels("approve", "ok")  # once: one per post
        self._decision_counters: dict[tuple[str, str, str], Any] = {}
        # (policy in force, pending policy or None, their guard): reused while they hold
        self._guard_kept: tuple[CompiledPolicy, CompiledPolicy | None, LimitGuard] | None = None

    # -- helpers ---------------------------------------------------------------------

    def _emit_record(self, record: DecisionRecord, state: EventState, detail: str = "") -> None:
        """Tell the listeners about ``record`` (the event is built only when there are any)."""
        if self.listeners:
            self._emit(self._event(record, state, detail))

    def _emit(self, event: DecisionEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a display must never break a decision
                self.log.exception("listener.failed")

    def paused(self) -> bool:
        """The kill switch: the pause file exists.  A pause file that cannot be checked
        (EACCES, EIO, ELOOP, a NUL in its path) counts as paused."""
        if self.pause_file is None:
            return False
        try:  # one os.stat: this runs before every post
            os.stat(self.pause_file)
        except OSError as exc:
            return exc.errno not in _ABSENT
        except ValueError:  # a NUL in the path: the switch cannot be checked
            return True
        return True

    @property
    def modes(self) -> tuple[str, ...]:
        return ("shadow", "enforce") if self.mode is Mode.SHADOW else ("enforce",)

    def _chain_label(self, chain: str | None) -> str:
        if chain is not None and chain in self.state.policy.chains:
            return chain
        return "unknown"

    def _now_ts(self) -> float:
        return self.clock().timestamp()

    # -- the poll cycle --------------------------------------------------------------

    async def poll(self) -> PollResult:
        """Read the pending snapshot, decide what is new, journal it, post it."""
        result = PollResult()
        started = time.perf_counter()
        try:
            await self._poll(result)
        except CosignerError as exc:
            result.ok = False
            result.errors.append(str(exc))
            self.log.error("poll.failed", error=str(exc), kind=type(exc).__name__)
        except Exception as exc:
            result.ok = False
            result.errors.append(f"{type(exc).__name__}: {exc}")
            self.log.exception("poll.failed", kind=type(exc).__name__)
        result.duration = time.perf_counter() - started
        self.metrics.poll_duration.observe(result.duration)
        if result.ok:
            self.last_poll_ok = self._now_ts()
            self.metrics.last_poll_success.set(self.last_poll_ok)
        with contextlib.suppress(Exception):
            self.metrics.set_limit_ratios(self.state.ledger.ratios(self.clock()))
        self.log.info("poll.done", ok=result.ok, seen=result.seen, decided=result.decided,
                      approved=result.approved, rejected=result.rejected, held=result.held,
                      posted=result.posted, reposted=result.reposted,
                      reconciled=result.reconciled, failed=result.failed,
                      unknown=result.unknown, mutations=result.mutations,
                      skipped=result.skipped, paused=result.paused, gone=result.gone,
                      seconds=round(result.duration, 3))
        return result

    def activate_due(self) -> bool:
        """Put a pending bundle whose delay has passed in force alone; True when it did."""
        pending = self.state.pending
        if pending is None or not pending.due(self.clock()):
            return False
        self.state = PolicyState(pending.policy, pending.ledger, self.state.path)
        self.metrics.set_policy(pending.policy.name, pending.policy.sha256)
        self.metrics.set_limit_scopes({lim.name: lim.per for lim in pending.policy.limits})
        self.metrics.set_policy_pending(None, pending.activates_at.timestamp())
        self.log.warning("policy.activated", name=pending.policy.name,
                         sha256=pending.policy.sha256,
                         first_seen=pending.first_seen.isoformat())
        return True

    async def _poll(self, result: PollResult) -> None:
        self.activate_due()
        snapshot = await self.client.pending()
        items = snapshot.items
        result.seen = len(items)
        self.metrics.pending_items.set(len(items))
        if snapshot.truncated:
            self.log.warning("poll.truncated", total=snapshot.total, kept=len(items))
        if snapshot.malformed:
            self.metrics.invalid_items.labels("not_an_object").inc(snapshot.malformed)
            self.log.warning("poll.malformed_entries", count=snapshot.malformed)
        conflicting = _conflicting_ids(snapshot)
        await self._settle_gone(snapshot, result)
        writer = OutcomeWriter(self.journal, self.log)
        queue: asyncio.Queue[list[Signed] | None] = asyncio.Queue(maxsize=1)
        poster = asyncio.create_task(self._post_chunks(queue, writer, result))
        seen: set[int] = set()
        # The snapshot is consumed chunk by chunk: a chunk's items are dropped once it is
        # decided, so the items and the approvals they add are not all held at once.
        chunks = [items[start:start + CHUNK] for start in range(0, len(items), CHUNK)]
        chunks.reverse()
        del snapshot, items  # (a client that keeps its snapshot keeps it alive, not us)
        try:
            while chunks and not self.stopping.is_set():
                records = await self._decide_chunk(chunks.pop(), conflicting, seen, result)
                await queue.put(await self._sign(records))
        finally:
            await queue.put(None)
            await poster
            await writer.close()
            if writer.errors:
                self.journal_ok = False
                result.ok = False
                result.errors.extend(writer.errors)
            self._set_unposted_gauge()

    # -- settling records whose item has left the list -------------------------------

    async def _load_unposted(self) -> dict[int, int]:
        if self._unposted is None:
            def scan() -> tuple[dict[int, int], dict[int, datetime]]:
                unposted: dict[int, int] = {}
                gone: dict[int, datetime] = {}
                for record in self.journal.records():
                    if record.mode != Mode.ENFORCE or record.action is Action.HOLD:
                        continue
                    if record.state in (RecordState.DECIDED, RecordState.FAILED):
                        unposted[record.item_id] = record.seq
                    elif record.state == RecordState.GONE and record.outcome_at is not None:
                        gone[record.item_id] = record.outcome_at
                return unposted, gone
            unposted, self._gone = await asyncio.to_thread(scan)
            self._unposted = unposted
            return unposted
        return self._unposted

    async def _settle_gone(self, snapshot: PendingSnapshot, result: PollResult) -> None:
        """Settle as ``gone`` each unposted approve/reject whose item is no longer listed."""
        if snapshot.truncated:
            return  # an item beyond the cap is still listed
        unposted = await self._load_unposted()
        listed = {i.id for i in snapshot.items} | set(snapshot.ids)
        left = [(item_id, seq) for item_id, seq in unposted.items() if item_id not in listed]
        if not left:
            return
        outcomes = [NewOutcome(seq, item_id, RecordState.GONE, None,
                               "the item left the pending list; outcome unknown")
                    for item_id, seq in left]
        try:
            await asyncio.to_thread(self.journal.record_outcomes, outcomes)
        except Exception as exc:
            self.journal_ok = False
            result.ok = False
            result.errors.append(f"journal: {exc}")
            self.log.error("journal.outcome_write_failed", error=str(exc), outcomes=len(left))
            return
        for item_id, seq in left:
            del unposted[item_id]
            self._gone[item_id] = self.clock()
            result.gone += 1
            self.log.critical("item.gone", item_id=item_id, seq=seq,
                              hint="decided but its post was never confirmed, and the item "
                                   "left the pending list: check it in the 1BitPay app")
            self._emit(DecisionEvent(item_id, "", "", "", "", "", (), EventState.GONE,
                                     "left the pending list; outcome unknown"))

    def _set_unposted_gauge(self) -> None:
        if self._unposted is not None:
            recent = self.clock() - GONE_SHOWN_FOR
            self._gone = {i: at for i, at in self._gone.items() if at >= recent}
            self.metrics.decided_unposted_items.set(len(self._unposted) + len(self._gone))

    # -- deciding --------------------------------------------------------------------

    async def _decide_chunk(self, chunk: list[PendingItem], conflicting: frozenset[int],
                            seen: set[int], result: PollResult, *, retry: bool = True
                            ) -> list[DecisionRecord]:
        """Decide the chunk's items and journal the new decisions; return what to post.

        The journal re-checks idempotency and limits inside its write transaction; when it
        refuses (another writer got there first, or the ledger cache was wrong), the ledger
        is rebuilt from the journal and the chunk decided once more, from scratch.
        """
        # The chunk is counted apart and added to the cycle's result at the end: a retry
        # starts it afresh without touching what the poster counted meanwhile.
        cycle, result, seen_before = result, PollResult(), set(seen)
        ids = [i for i in (item.id for item in chunk) if i is not None and valid_item_id(i)]
        views = await asyncio.to_thread(self.journal.lookup, ids, self.modes)
        policy, ledger = self.state.policy, self.state.ledger
        pending = self.state.pending  # governance: decide by the intersection meanwhile
        now = self.clock()
        paused = self.paused()
        new: list[tuple[NewDecision, Outcome]] = []
        to_post: list[DecisionRecord] = []
        for n, item in enumerate(_once_each(chunk, conflicting, seen), 1):
            if not n % DECIDE_SLICE:
                await asyncio.sleep(0)
            view = views.get(item.id) if item.id is not None else None
            outcome = decide(item, view, policy, ledger, now, paused=paused, mode=self.mode,
                             conflicting=item.id in conflicting, pending=pending)
            record = self._act(item, outcome, result, view)
            if record is not None:
                to_post.append(record)
            elif outcome.step is Step.NEW:
                if outcome.approval is not None:
                    ledger.add(outcome.approval)  # the next items of the chunk count it
                    if pending is not None:
                        pending.add_approval(outcome.approval, ledger)
                new.append((self._new_decision(item, outcome, policy), outcome))
        if new:
            try:
                to_post += await self._record_new(new, policy, now, result)
            except JournalConflictError as exc:
                self.log.error("journal.conflict", error=str(exc), items=len(new),
                               refused=len(exc.conflicts), retry=retry)
                await self._rebuild_ledger(now)
                if retry:
                    seen.clear()
                    seen.update(seen_before)
                    return await self._decide_chunk(chunk, conflicting, seen, cycle,
                                                    retry=False)
                result.ok = False
                result.errors.append(f"journal: {exc}")
                result.held += len(new)
        cycle.add(result)
        return to_post

    async def _record_new(self, new: list[tuple[NewDecision, Outcome]], policy: CompiledPolicy,
                          now: datetime, result: PollResult) -> list[DecisionRecord]:
        """Journal new decisions, count them; the records to post."""
        records = await self._record(new, policy, now, result)
        to_post = [record for record, (_, outcome) in zip(records, new, strict=True)
                   if outcome.post]
        if self._unposted is not None:
            for record in to_post:
                self._unposted[record.item_id] = record.seq
        for n, (record, (_, outcome)) in enumerate(zip(records, new, strict=True), 1):
            if not n % DECIDE_SLICE:
                await asyncio.sleep(0)  # the posts go on meanwhile
            self._count(record, outcome, result)
        if records and self.after_journal is not None:
            self.after_journal(records)
        return to_post

    def _act(self, item: PendingItem, outcome: Outcome, result: PollResult,
             view: ItemView | None) -> DecisionRecord | None:
        """Count and report an outcome that records nothing new; the record to re-post."""
        step = outcome.step
        if step is Step.UNRECORDABLE:
            result.held += 1
            self.metrics.invalid_items.labels(outcome.invalid_reason or "missing_field").inc()
            self.log.warning("item.unidentifiable", reason=outcome.reasons[0],
                             item_id=item.raw.get("id") if isinstance(item.raw, dict) else None)
        elif step is Step.MUTATION:
            self._mutation(item, outcome, result, view)
        elif step is Step.SKIP:
            result.skipped += 1
        elif step is Step.PAUSED:
            result.held += 1
            result.paused += 1
        elif step is Step.UNCHANGED:
            result.held += 1
        elif step is Step.REPOST:
            result.reposted += 1
            record = outcome.recorded
            assert isinstance(record, DecisionRecord)
            if self._unposted is not None:
                if record.state == RecordState.GONE:  # listed again: back to awaiting a post
                    self._gone.pop(record.item_id, None)
                self._unposted[record.item_id] = record.seq
            return record
        return None

    def _guard(self, policy: CompiledPolicy) -> LimitGuard:
        """The limits the journal re-checks: the pending bundle's too, while it is pending.

        Kept while the policies stay the same: a guard counts only the journal's approvals
        it has not seen yet (see :mod:`cosigner.daemon.guard`)."""
        pending = self.state.pending
        second = None if pending is None or pending.policy is policy else pending.policy
        kept = self._guard_kept
        if kept is not None and kept[0] is policy and kept[1] is second:
            return kept[2]
        guard: LimitGuard = PolicyLimitGuard(policy)
        if second is not None:
            guard = BothLimits(PolicyLimitGuard(policy), PolicyLimitGuard(second))
        self._guard_kept = (policy, second, guard)
        return guard

    async def _record(self, new: list[tuple[NewDecision, Outcome]], policy: CompiledPolicy,
                      now: datetime, result: PollResult) -> list[DecisionRecord]:
        """Journal the chunk's new decisions in one transaction; nothing on failure."""
        try:
            records = await asyncio.to_thread(self.journal.record_decisions,
                                              [n for n, _ in new], self._guard(policy))
        except JournalConflictError:
            raise  # refused by the authority, not broken: the caller decides again
        except Exception as exc:
            self.journal_ok = False
            # Nothing of this chunk was recorded, so nothing of it may be posted, and
            # the ledger must forget the approvals it was told about.
            result.ok = False
            result.errors.append(f"journal: {exc}")
            self.log.error("journal.write_failed", error=str(exc), items=len(new))
            await self._rebuild_ledger(now)
            result.held += len(new)
            return []
        self.journal_ok = True
        return records

    async def _rebuild_ledger(self, now: datetime) -> None:
        """The ledgers from the journal again, after a write that recorded nothing."""
        try:
            await asyncio.to_thread(rebuild_ledgers, self.state, self.journal, now)
        except Exception:
            # Keeping the ledger with the unrecorded approvals only over-counts
            # the limits: stricter, never looser.
            self.log.exception("ledger.rebuild_failed")

    def _new_decision(self, item: PendingItem, outcome: Outcome,
                      policy: CompiledPolicy) -> NewDecision:
        assert item.id is not None
        return NewDecision(
            item_id=item.id, content_hash=item.content_hash,
            chain_id=item.chain_id, from_address=item.from_address,
            to_address=item.to_address, amount_text=item.amount_text,
            action=outcome.action, rule=outcome.rule, reasons=outcome.reasons,
            policy_name=policy.name, policy_sha256=self._recorded_sha256(policy),
            mode=self.mode)

    def _recorded_sha256(self, policy: CompiledPolicy) -> str:
        """The policy digest of a record: ``in-force+pending`` under the intersection."""
        pending = self.state.pending
        return policy.sha256 if pending is None else pending.recorded_sha256(policy)

    def _count(self, record: DecisionRecord, outcome: Outcome, result: PollResult) -> None:
        result.decided += 1
        if record.action is Action.APPROVE:
            result.approved += 1
        elif record.action is Action.REJECT:
            result.rejected += 1
        else:
            result.held += 1
        labels = (record.action.value, record.rule, self._chain_label(record.chain_id))
        counter = self._decision_counters.get(labels)
        if counter is None:  # resolved once per (action, rule, chain): a bounded set
            counter = self._decision_counters[labels] = self.metrics.decisions.labels(*labels)
        counter.inc()
        if outcome.invalid_reason:
            self.metrics.invalid_items.labels(outcome.invalid_reason).inc()
        self.log.info("item.decided", item_id=record.item_id, action=record.action.value,
                      rule=record.rule, reasons=list(record.reasons), chain=record.chain_id,
                      mode=record.mode.value)
        state = EventState.SHADOW if record.mode is Mode.SHADOW else EventState.DECIDED
        self._emit_record(record, state)

    def _event(self, record: DecisionRecord, state: EventState, detail: str = ""
               ) -> DecisionEvent:
        return DecisionEvent(record.item_id, record.chain_id or "", record.amount_text or "",
                             record.to_address or "", record.action.value, record.rule,
                             tuple(record.reasons), state, detail)

    def _mutation(self, item: PendingItem, outcome: Outcome, result: PollResult,
                  view: ItemView | None) -> None:
        result.mutations += 1
        result.held += 1
        assert item.id is not None
        key = (item.id, item.content_hash)
        if key in self._mutations_seen:
            return
        self._mutations_seen.add(key)
        self.metrics.item_mutations.inc()
        latest = view.latest if view is not None else None
        self.log.critical("item.mutated", item_id=item.id, seen_hash=item.content_hash,
                          recorded_hash=view.first_content_hash if view is not None else None,
                          recorded_action=latest.action.value if latest else None,
                          why=outcome.trace[-2] if len(outcome.trace) > 1 else "")
        self._emit(DecisionEvent(item.id, item.chain_id or "", item.amount_text or "",
                                 item.to_address or "", Action.HOLD.value, outcome.rule,
                                 outcome.reasons, EventState.MUTATED,
                                 "content changed under the same id"))

    # -- posting ---------------------------------------------------------------------

    async def _sign(self, records: list[DecisionRecord]) -> list[Signed]:
        """The ``data`` of each record's decision (signed off the loop for big chunks)."""
        payloads: list[bytes] = []
        for n, record in enumerate(records, 1):
            if not n % SIGN_SLICE:
                await asyncio.sleep(0)  # the posts go on meanwhile
            status = record.action.status
            assert status is not None
            payloads.append(approval_sign_object(
                record.item_id, record.from_address or "", record.to_address or "",
                record.amount_text or "", record.chain_id or "", status))
        try:
            datas = await self.signer.sign_many(payloads)
            self.signing_ok = True
        except Exception as exc:  # every item of the chunk stays decided
            self.signing_ok = False
            self.log.exception("sign.failed", items=len(records))
            datas = [SigningError(f"signing failed: {type(exc).__name__}")] * len(records)
        return list(zip(records, datas, strict=True))

    async def _post_chunks(self, queue: asyncio.Queue[list[Signed] | None],
                           writer: OutcomeWriter, result: PollResult) -> None:
        """Post each chunk as it comes, ``concurrency`` posts in flight in all.

        ``concurrency`` workers for the whole cycle take the records in order, chunk
        after chunk: a chunk's posts start while the last posts of the chunk before it
        are still in flight, so the number in flight does not fall to zero at every
        chunk's end, and a worker only takes the next chunk from the queue once every
        record of the one before is taken, so the deciding runs at most one chunk ahead
        of the posting.  A worker holds its post's place itself: no semaphore, no
        waiter and no task per record.
        """
        feed = _Feed(queue)

        async def worker() -> None:
            while (signed := await feed.next()) is not None:
                await self._post_signed(signed, writer, result)

        tasks = [asyncio.create_task(worker()) for _ in range(max(1, self.concurrency))]
        try:
            await asyncio.gather(*tasks)
        except Exception:
            # One failing stops its siblings: nothing more is posted.  Keep taking what
            # the decider hands over (it would block on the full queue forever
            # otherwise); those records stay decided.
            await _cancel_all(tasks)
            await feed.drain()
            raise
        finally:
            await _cancel_all(tasks)  # a cancel of this task stops every worker

    async def _post_signed(self, signed: Signed, writer: OutcomeWriter,
                           result: PollResult) -> None:
        if self.stopping.is_set():
            return  # post nothing new once asked to stop
        if self.paused():
            # The kill switch stops every post from the moment the file exists;
            # the record stays decided and is posted once the pause ends.
            result.paused += 1
            self._emit_record(signed[0], EventState.PAUSED)
            return
        self.in_flight += 1
        try:
            outcome = await self._post_one(*signed, result)
        finally:
            self.in_flight -= 1
        if outcome is not None:
            self._settled(outcome)
            await writer.add(outcome)

    def _settled(self, outcome: NewOutcome) -> None:
        if self._unposted is not None and outcome.state == RecordState.POSTED:
            self._unposted.pop(outcome.item_id, None)

    async def _post_one(self, record: DecisionRecord, data: str | SigningError,
                        result: PollResult) -> NewOutcome | None:
        status = record.action.status
        assert status is not None
        try:
            if isinstance(data, SigningError):
                raise data
            fields = approval_fields(record.item_id, record.from_address or "",
                                     record.to_address or "", record.amount_text or "",
                                     record.chain_id or "", status)
            await self.client.approve(fields, data)
        except AlreadyProcessedError as exc:
            result.reconciled += 1
            self.metrics.posts.labels("approve", "already_processed").inc()
            self.log.warning("item.reconciled", item_id=record.item_id, code=exc.code,
                             message=exc.api_message, action=record.action.value)
            self._emit_record(record, EventState.POSTED, "already processed")
            return NewOutcome(record.seq, record.item_id, RecordState.POSTED, _int(exc.code),
                              exc.api_message or "already processed")
        except ApiResponseError as exc:
            result.failed += 1
            self.metrics.posts.labels("approve", "rejected_by_api").inc()
            self.log.error("item.post_refused", item_id=record.item_id, code=exc.code,
                           message=exc.api_message, action=record.action.value)
            self._emit_record(record, EventState.FAILED, f"API code {exc.code}")
            return NewOutcome(record.seq, record.item_id, RecordState.FAILED, _int(exc.code),
                              exc.api_message)
        except ApiError as exc:
            # Timeout or broken exchange: it may have landed.  The record stays
            # ``decided`` and the next cycle re-posts the same decision.
            result.unknown += 1
            self.metrics.posts.labels("approve", "unknown").inc()
            self.log.error("item.post_unknown", item_id=record.item_id, error=str(exc))
            self._emit_record(record, EventState.UNKNOWN, type(exc).__name__)
            return None
        except Exception as exc:
            result.failed += 1
            result.ok = False
            self.metrics.posts.labels("approve", "error").inc()
            self.log.exception("item.post_error", item_id=record.item_id)
            self._emit_record(record, EventState.FAILED, type(exc).__name__)
            return NewOutcome(record.seq, record.item_id, RecordState.FAILED, None,
                              f"{type(exc).__name__}: {exc}"[:200])
        result.posted += 1
        self._posted_ok.inc()
        self.log.info("item.posted", item_id=record.item_id, action=record.action.value,
                      rule=record.rule)
        self._emit_record(record, EventState.POSTED)
        return NewOutcome(record.seq, record.item_id, RecordState.POSTED, 200, "Success")

    # -- collection ------------------------------------------------------------------

    async def collect(self) -> bool:
        """One collection round, for each configured ``isMain``; True when all succeeded."""
        if self.mode is Mode.SHADOW:
            self.log.info("collect.skipped", reason="shadow mode posts nothing")
            return True
        ok = True
        for is_main in self.collect_is_main:
            if self.stopping.is_set():
                return False
            if self.paused():  # checked before every collection, as before every post
                self.log.info("collect.skipped", reason="paused: the kill switch posts nothing",
                              is_main=is_main)
                return True
            label = str(is_main)
            try:
                data = self.signer.sign_one(collect_sign_object(is_main))
                await self.client.collect(is_main, data)
            except Exception as exc:
                ok = False
                self.metrics.collections.labels(label, "error").inc()
                self.metrics.posts.labels("collect", "error").inc()
                self.log.error("collect.failed", is_main=is_main, error=str(exc),
                               kind=type(exc).__name__)
                continue
            self.metrics.collections.labels(label, "ok").inc()
            self.metrics.posts.labels("collect", "ok").inc()
            self.log.info("collect.done", is_main=is_main)
        if ok:
            self.metrics.last_collect_success.set(self._now_ts())
        return ok


class _Feed:
    """The signed records of a cycle, in order, to the posting workers: chunk by chunk
    from the decider's queue (None: no more), the next chunk taken only once every
    record of the one before has been handed out."""

    def __init__(self, queue: asyncio.Queue[list[Signed] | None]) -> None:
        self._queue = queue
        self._records: Iterator[Signed] = iter(())
        self._lock = asyncio.Lock()  # one worker takes the next chunk; the others wait
        self._done = False

    async def next(self) -> Signed | None:
        """The next record to post; None once the decider has said there are no more."""
        for signed in self._records:
            return signed
        async with self._lock:
            while not self._done:
                for signed in self._records:  # another worker took a chunk meanwhile
                    return signed
                chunk = await self._queue.get()
                if chunk is None:
                    self._done = True
                else:
                    self._records = iter(chunk)
        return None

    async def drain(self) -> None:
        """Take (and drop) every chunk still to come, up to the decider's end mark."""
        self._records = iter(())
        while not self._done:
            self._done = await self._queue.get() is None


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks still running and wait for them all to end."""
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)


def _int(code: object) -> int | None:
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _once_each(chunk: list[PendingItem], conflicting: frozenset[int],
               seen: set[int]) -> Iterable[PendingItem]:
    """The chunk's items, an id listed again with the same content only once (a conflicting
    id's every copy is decided: each is held)."""
    for item in chunk:
        item_id = item.id
        if item_id is not None:
            if item_id in seen and item_id not in conflicting:
                continue
            seen.add(item_id)
        yield item


def _conflicting_ids(snapshot: PendingSnapshot) -> frozenset[int]:
    """Ids the snapshot lists more than once with different content (each copy is held)."""
    first: dict[int, str] = {}
    conflicts = set(snapshot.conflicts)
    for item in snapshot.items:
        item_id = item.id
        if item_id is None:
            continue
        known = first.setdefault(item_id, item.content_hash)
        if known != item.content_hash:
            conflicts.add(item_id)
    return frozenset(conflicts)
