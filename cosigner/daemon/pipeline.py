"""The decision pipeline: snapshot → evaluate → journal → sign → post → record.

Invariants (DESIGN sections 2 and 4):

* every decision is journaled durably, in one transaction per chunk together with
  the limit check, **before** any post it covers;
* a ``posted`` record is never posted again; a ``decided`` (or ``failed``)
  approve/reject is re-posted with the *recorded* decision, never re-evaluated;
* the same id with different content is held and counted as a mutation;
* every exception, timeout or unexpected answer ends in hold for that item (or
  an unchanged ``decided`` record that the next cycle re-posts), a log event and
  a metric, and the cycle carries on with the next item.  No error path approves.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cosigner.api.models import PendingSnapshot
from cosigner.errors import (
    AlreadyProcessedError,
    ApiError,
    ApiResponseError,
    CosignerError,
    JournalConflictError,
    SigningError,
)
from cosigner.models import Action, PendingItem
from cosigner.policy import Approval, CompiledPolicy, Decision, Ledger, evaluate
from cosigner.signing import Shard, collect_sign_object
from cosigner.signing.objects import approval_fields, approval_sign_object
from cosigner.signing.pool import BatchSigner
from cosigner.store.base import DecisionRecord, ItemView, Journal, NewDecision, NewOutcome

from .guard import PolicyLimitGuard
from .metrics import Metrics

Signed = tuple[DecisionRecord, "str | SigningError"]

CHUNK = 500  # items decided, journaled (one commit) and signed together


class PendingSource(Protocol):
    """What the pipeline needs of the API client."""

    async def pending(self) -> PendingSnapshot: ...
    async def approve(self, fields: dict[str, Any], data: str) -> None: ...
    async def collect(self, is_main: int, data: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """What happened to one item in a cycle (for the demo's live table and for tests)."""

    item_id: int | None
    chain: str
    amount: str
    to: str
    action: str
    rule: str
    reasons: tuple[str, ...]
    state: str          # decided | posted | failed | unknown | mutated | skipped | shadow
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
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0


class PolicyState:
    """The policy in force and the ledger of approvals its limits count."""

    def __init__(self, policy: CompiledPolicy, ledger: Ledger, path: Path | None = None) -> None:
        self.policy = policy
        self.ledger = ledger
        self.path = path


def ledger_from_journal(policy: CompiledPolicy, journal: Journal, now: datetime) -> Ledger:
    """Rebuild the limits' usage from the journal's approvals (limits persist across restarts)."""
    longest = max((lim.window for lim in policy.limits), default=timedelta(0))
    approvals: list[Approval] = []
    if longest > timedelta(0):
        from decimal import Decimal
        for row in journal.approvals_since(now - longest):
            approvals.append(Approval(chain_id=row.chain_id, from_address=row.from_address,
                                      to_address=row.to_address,
                                      amount=Decimal(row.amount_text), at=row.created_at))
    return Ledger(policy, approvals)


class Pipeline:
    """One poll cycle and one collection round, wired to the network, the shard and the journal."""

    def __init__(self, client: PendingSource, shard: Shard, journal: Journal,
                 state: PolicyState, metrics: Metrics, log: Any, *, mode: str = "enforce",
                 concurrency: int = 8, pause_file: Path | None = None,
                 collect_is_main: Sequence[int] = (1, 0),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
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
        self.mode = mode
        self.concurrency = concurrency
        self.pause_file = pause_file
        self.collect_is_main = tuple(collect_is_main)
        self.clock = clock
        self.listeners = list(listeners)
        self.after_journal = after_journal  # test hook: a "crash" between journal and post
        self.stopping = asyncio.Event()
        self._mutations_seen: set[tuple[int, str]] = set()
        self.last_poll_ok: float | None = None
        self.in_flight = 0

    # -- helpers ---------------------------------------------------------------------

    def _emit(self, event: DecisionEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a display must never break a decision
                self.log.exception("listener.failed")

    def paused(self) -> bool:
        return self.pause_file is not None and self.pause_file.exists()

    @property
    def modes(self) -> tuple[str, ...]:
        return ("shadow", "enforce") if self.mode == "shadow" else ("enforce",)

    def _chain_label(self, chain: str | None) -> str:
        if chain is not None and chain in self.state.policy.chains:
            return chain
        return "unknown"

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
            self.last_poll_ok = time.time()
            self.metrics.last_poll_success.set(self.last_poll_ok)
        with contextlib.suppress(Exception):
            self.metrics.set_limit_ratios(self.state.ledger.ratios(self.clock()))
        self.log.info("poll.done", ok=result.ok, seen=result.seen, decided=result.decided,
                      approved=result.approved, rejected=result.rejected, held=result.held,
                      posted=result.posted, reposted=result.reposted,
                      reconciled=result.reconciled, failed=result.failed,
                      unknown=result.unknown, mutations=result.mutations,
                      skipped=result.skipped, seconds=round(result.duration, 3))
        return result

    async def _poll(self, result: PollResult) -> None:
        snapshot = await self.client.pending()
        items = snapshot.items
        result.seen = len(items)
        self.metrics.pending_items.set(len(items))
        if snapshot.truncated:
            self.log.warning("poll.truncated", total=snapshot.total, kept=len(items))
        if snapshot.malformed:
            self.metrics.invalid_items.labels("not_an_object").inc(snapshot.malformed)
            self.log.warning("poll.malformed_entries", count=snapshot.malformed)
        queue: asyncio.Queue[list[Signed] | None] = asyncio.Queue(maxsize=1)
        poster = asyncio.create_task(self._post_chunks(queue, result))
        try:
            for start in range(0, len(items), CHUNK):
                if self.stopping.is_set():
                    break
                records = await self._decide_chunk(items[start:start + CHUNK], result)
                await queue.put(await self._sign(records))
        finally:
            await queue.put(None)
            await poster

    async def _decide_chunk(self, chunk: list[PendingItem], result: PollResult,
                            *, retry: bool = True) -> list[DecisionRecord]:
        """Evaluate the chunk's new items and journal them; return what is to be posted.

        The journal re-checks idempotency and limits inside its write transaction; when it
        refuses (another writer got there first, or the ledger cache was wrong), the ledger
        is rebuilt from the journal and the chunk decided once more, from scratch.
        """
        before = copy.deepcopy(result)
        ids = [i.id for i in chunk if i.id is not None]
        views: dict[int, ItemView] = await asyncio.to_thread(self.journal.lookup, ids, self.modes)
        policy = self.state.policy
        ledger = self.state.ledger
        now = self.clock()
        paused = self.paused()
        new: list[tuple[NewDecision, Decision, PendingItem]] = []
        to_post: list[DecisionRecord] = []
        seen_in_chunk: set[int] = set()
        for item in chunk:
            item_id = item.id
            if item_id is None:
                self.metrics.invalid_items.labels("missing_field").inc()
                self.log.warning("item.unidentifiable", reason="missing or non-integer id")
                result.held += 1
                continue
            if item_id in seen_in_chunk:
                continue
            seen_in_chunk.add(item_id)
            view = views.get(item_id)
            latest = view.latest if view is not None else None
            if view is not None:
                if view.first_content_hash != item.content_hash:
                    self._mutation(item, view, result)
                    continue
                if latest is not None and latest.action is not Action.HOLD:
                    if latest.state == "posted" or latest.state == "shadow":
                        result.skipped += 1
                        continue
                    if paused:
                        # The kill switch stops every post, recorded decisions too: they
                        # stay decided and are posted once the pause file is gone.
                        result.held += 1
                        continue
                    to_post.append(latest)  # decided/failed: re-post the recorded decision
                    result.reposted += 1
                    continue
            decision = self._evaluate(policy, ledger, item, now, paused)
            if latest is not None and decision.action is Action.HOLD and \
                    tuple(latest.reasons) == tuple(decision.reasons):
                result.held += 1  # unchanged hold: nothing new to record
                continue
            new.append((self._new_decision(item, decision, policy), decision, item))
        if new:
            try:
                records = await asyncio.to_thread(self.journal.record_decisions,
                                                  [n for n, _, _ in new],
                                                  PolicyLimitGuard(policy))
            except JournalConflictError as exc:
                self.log.error("journal.conflict", error=str(exc), items=len(new),
                               refused=len(exc.conflicts), retry=retry)
                await self._rebuild_ledger(policy, now)
                if retry:
                    result.__dict__.update(before.__dict__)
                    return await self._decide_chunk(chunk, result, retry=False)
                result.ok = False
                result.errors.append(f"journal: {exc}")
                result.held += len(new)
                return to_post
            except Exception as exc:
                # Nothing of this chunk was recorded, so nothing of it may be posted, and
                # the ledger must forget the approvals it was told about.
                result.ok = False
                result.errors.append(f"journal: {exc}")
                self.log.error("journal.write_failed", error=str(exc), items=len(new))
                await self._rebuild_ledger(policy, now)
                result.held += len(new)
                return to_post
            for record, (_, decision, _item) in zip(records, new, strict=True):
                self._count(record, decision, result)
                if record.action is not Action.HOLD and self.mode == "enforce":
                    to_post.append(record)
            if self.after_journal is not None:
                self.after_journal(records)
        return to_post

    async def _rebuild_ledger(self, policy: CompiledPolicy, now: datetime) -> None:
        """The ledger from the journal again, after a write that recorded nothing."""
        try:
            self.state.ledger = await asyncio.to_thread(ledger_from_journal, policy,
                                                        self.journal, now)
        except Exception:
            # Keeping the ledger with the unrecorded approvals only over-counts
            # the limits: stricter, never looser.
            self.log.exception("ledger.rebuild_failed")

    def _evaluate(self, policy: CompiledPolicy, ledger: Ledger, item: PendingItem,
                  now: datetime, paused: bool) -> Decision:
        try:
            decision = evaluate(policy, item, ledger, now)
        except Exception as exc:  # evaluate is pure and total; this is belt and braces
            self.log.exception("item.evaluate_failed", item_id=item.id)
            return Decision(action=Action.HOLD, rule="<error>",
                            reasons=(f"error:{type(exc).__name__}",), limit_effects=(),
                            invalid_reason=None)
        if decision.action is not Action.HOLD and paused:
            return replace(decision, action=Action.HOLD, reasons=(*decision.reasons, "paused"))
        if decision.action is not Action.HOLD and None in (
                item.from_address, item.to_address, item.amount_text, item.chain_id):
            # A decision must sign the item's own fields; without them only hold is safe.
            return replace(decision, action=Action.HOLD, reasons=(*decision.reasons,
                                                                  "unsignable"))
        if decision.action is Action.APPROVE:
            ledger.add(Approval.from_item(item, now))
        return decision

    def _new_decision(self, item: PendingItem, decision: Decision,
                      policy: CompiledPolicy) -> NewDecision:
        assert item.id is not None
        return NewDecision(
            item_id=item.id, content_hash=item.content_hash,
            chain_id=item.chain_id, from_address=item.from_address,
            to_address=item.to_address, amount_text=item.amount_text,
            action=decision.action, rule=decision.rule, reasons=tuple(decision.reasons),
            policy_name=policy.name, policy_sha256=policy.sha256,
            mode="shadow" if self.mode == "shadow" else "enforce")

    def _count(self, record: DecisionRecord, decision: Decision, result: PollResult) -> None:
        result.decided += 1
        if record.action is Action.APPROVE:
            result.approved += 1
        elif record.action is Action.REJECT:
            result.rejected += 1
        else:
            result.held += 1
        self.metrics.decisions.labels(record.action.value, record.rule,
                                      self._chain_label(record.chain_id)).inc()
        if decision.invalid_reason:
            self.metrics.invalid_items.labels(decision.invalid_reason).inc()
        self.log.info("item.decided", item_id=record.item_id, action=record.action.value,
                      rule=record.rule, reasons=list(record.reasons), chain=record.chain_id,
                      mode=record.mode)
        state = "shadow" if record.mode == "shadow" else "decided"
        self._emit(self._event(record, state))

    def _event(self, record: DecisionRecord, state: str, detail: str = "") -> DecisionEvent:
        return DecisionEvent(record.item_id, record.chain_id or "", record.amount_text or "",
                             record.to_address or "", record.action.value, record.rule,
                             tuple(record.reasons), state, detail)

    def _mutation(self, item: PendingItem, view: ItemView, result: PollResult) -> None:
        result.mutations += 1
        result.held += 1
        key = (view.item_id, item.content_hash)
        if key in self._mutations_seen:
            return
        self._mutations_seen.add(key)
        self.metrics.item_mutations.inc()
        self.log.critical("item.mutated", item_id=view.item_id,
                          recorded_hash=view.first_content_hash, seen_hash=item.content_hash,
                          recorded_action=view.latest.action.value if view.latest else None)
        self._emit(DecisionEvent(view.item_id, item.chain_id or "", item.amount_text or "",
                                 item.to_address or "", Action.HOLD.value, "<mutated>",
                                 ("mutation",), "mutated",
                                 "content changed under the same id"))

    # -- posting ---------------------------------------------------------------------

    async def _sign(self, records: list[DecisionRecord]) -> list[Signed]:
        """The ``data`` of each record's decision (signed off the loop for big chunks)."""
        payloads: list[bytes] = []
        for record in records:
            status = record.action.status
            assert status is not None
            payloads.append(approval_sign_object(
                record.item_id, record.from_address or "", record.to_address or "",
                record.amount_text or "", record.chain_id or "", status))
        try:
            datas = await self.signer.sign_many(payloads)
        except Exception as exc:  # every item of the chunk stays decided
            self.log.exception("sign.failed", items=len(records))
            datas = [SigningError(f"signing failed: {type(exc).__name__}")] * len(records)
        return list(zip(records, datas, strict=True))

    async def _post_chunks(self, queue: asyncio.Queue[list[Signed] | None],
                           result: PollResult) -> None:
        while (records := await queue.get()) is not None:
            if records:
                outcomes = await self._post_all(records, result)
                if outcomes:
                    try:
                        await asyncio.to_thread(self.journal.record_outcomes, outcomes)
                    except Exception as exc:
                        # The posts happened; the next cycle re-posts them and reconciles
                        # the "already processed" answers.
                        result.ok = False
                        result.errors.append(f"journal: {exc}")
                        self.log.error("journal.outcome_write_failed", error=str(exc),
                                       outcomes=len(outcomes))

    async def _post_all(self, records: list[Signed], result: PollResult
                        ) -> list[NewOutcome]:
        semaphore = asyncio.Semaphore(self.concurrency)
        outcomes: list[NewOutcome] = []

        async def one(signed: Signed) -> None:
            async with semaphore:
                if self.stopping.is_set():
                    return  # post nothing new once asked to stop
                self.in_flight += 1
                try:
                    outcome = await self._post_one(*signed, result)
                finally:
                    self.in_flight -= 1
                if outcome is not None:
                    outcomes.append(outcome)

        await asyncio.gather(*(one(r) for r in records))
        return outcomes

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
            self._emit(self._event(record, "posted", "already processed"))
            return NewOutcome(record.seq, record.item_id, "posted", _int(exc.code),
                              exc.api_message or "already processed")
        except ApiResponseError as exc:
            result.failed += 1
            self.metrics.posts.labels("approve", "rejected_by_api").inc()
            self.log.error("item.post_refused", item_id=record.item_id, code=exc.code,
                           message=exc.api_message, action=record.action.value)
            self._emit(self._event(record, "failed", f"API code {exc.code}"))
            return NewOutcome(record.seq, record.item_id, "failed", _int(exc.code),
                              exc.api_message)
        except ApiError as exc:
            # Timeout or broken exchange: it may have landed.  The record stays
            # ``decided`` and the next cycle re-posts the same decision.
            result.unknown += 1
            self.metrics.posts.labels("approve", "unknown").inc()
            self.log.error("item.post_unknown", item_id=record.item_id, error=str(exc))
            self._emit(self._event(record, "unknown", type(exc).__name__))
            return None
        except Exception as exc:
            result.failed += 1
            result.ok = False
            self.metrics.posts.labels("approve", "error").inc()
            self.log.exception("item.post_error", item_id=record.item_id)
            self._emit(self._event(record, "failed", type(exc).__name__))
            return NewOutcome(record.seq, record.item_id, "failed", None,
                              f"{type(exc).__name__}: {exc}"[:200])
        result.posted += 1
        self.metrics.posts.labels("approve", "ok").inc()
        self.log.info("item.posted", item_id=record.item_id, action=record.action.value,
                      rule=record.rule)
        self._emit(self._event(record, "posted"))
        return NewOutcome(record.seq, record.item_id, "posted", 200, "Success")

    # -- collection ------------------------------------------------------------------

    async def collect(self) -> bool:
        """One collection round, for each configured ``isMain``; True when all succeeded."""
        if self.mode == "shadow":
            self.log.info("collect.skipped", reason="shadow mode posts nothing")
            return True
        if self.paused():
            self.log.info("collect.skipped", reason="paused: the kill switch posts nothing")
            return True
        ok = True
        for is_main in self.collect_is_main:
            if self.stopping.is_set():
                return False
            label = str(is_main)
            try:
                data = self.shard.sign(collect_sign_object(is_main))
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
            self.metrics.last_collect_success.set(time.time())
        return ok


def _int(code: object) -> int | None:
    return code if isinstance(code, int) and not isinstance(code, bool) else None
