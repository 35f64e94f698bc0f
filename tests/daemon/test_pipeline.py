"""Unit tests of the decision pipeline: a scripted stand-in for the API client, the
in-memory journal and an injected clock; no sockets."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cosigner.api.models import PendingSnapshot
from cosigner.daemon.metrics import Metrics
from cosigner.daemon.pipeline import (
    CHUNK,
    OUTCOME_BATCH,
    DecisionEvent,
    Pipeline,
    PolicyState,
    ledger_from_journal,
)
from cosigner.errors import (
    AlreadyProcessedError,
    ApiHTTPError,
    ApiResponseError,
    ApiTimeoutError,
)
from cosigner.logs import get_logger
from cosigner.models import Action, PendingItem
from cosigner.policy import Ledger, load_policy
from cosigner.signing import Shard, load_shard
from cosigner.store import (
    DecisionRecord,
    LimitGuard,
    MemoryJournal,
    NewDecision,
    NewOutcome,
    SqliteJournal,
    init_journal,
)
from tests.conftest import ThrowawayShard
from tests.daemon.conftest import (
    HOT,
    LIMIT,
    MAX_COUNT,
    POLICY,
    SANCTIONED,
    address,
    wait_for,
)

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock shared by the pipeline and the journal."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class ScriptedApi:
    """The pipeline's view of the API: a pending list and scripted approve answers.

    ``answers[id]`` is a list of exceptions raised by successive approves of that id
    (None: success).  Every call is appended to ``timeline``.
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[int, list[BaseException | None]] = field(default_factory=dict)
    collect_errors: dict[int, BaseException] = field(default_factory=dict)
    timeline: list[tuple[str, Any]] = field(default_factory=list)

    async def pending(self) -> PendingSnapshot:
        listed = [PendingItem(raw) for raw in self.items]
        return PendingSnapshot(items=listed, total=len(listed), pages=1)

    async def approve(self, fields: dict[str, Any], data: str) -> None:
        self.timeline.append(("approve", fields["id"]))
        script = self.answers.get(fields["id"])
        if script:
            answer = script.pop(0)
            if answer is not None:
                raise answer

    async def collect(self, is_main: int, data: str) -> None:
        self.timeline.append(("collect", is_main))
        if is_main in self.collect_errors:
            raise self.collect_errors[is_main]

    def posts(self) -> list[int]:
        return [v for k, v in self.timeline if k == "approve"]


class RecordingJournal(MemoryJournal):
    """The in-memory journal that also notes each decision write in the API's timeline."""

    def __init__(self, timeline: list[tuple[str, Any]], clock: Clock) -> None:
        super().__init__(clock=clock)
        self.timeline = timeline

    def record_decisions(self, decisions: Sequence[NewDecision],
                         guard: LimitGuard | None = None) -> list[DecisionRecord]:
        records = super().record_decisions(decisions, guard)
        self.timeline.append(("journal", [d.item_id for d in decisions]))
        return records

    def record_outcomes(self, outcomes: Sequence[NewOutcome]) -> None:
        super().record_outcomes(outcomes)
        self.timeline.append(("outcomes", [(o.item_id, str(o.state)) for o in outcomes]))


def raw(item_id: int, amount: str = "5", to: str | None = None) -> dict[str, Any]:
    return {"id": item_id, "fromAddress": HOT, "toAddress": to or address(0x22),
            "amount": amount, "chainId": "56"}


@dataclass
class World:
    api: ScriptedApi
    journal: RecordingJournal
    clock: Clock
    pipeline: Pipeline
    events: list[DecisionEvent]

    def latest(self) -> dict[int, DecisionRecord]:
        return {r.item_id: r for r in self.journal.records()}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.pipeline.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def signer(shard: ThrowawayShard) -> Shard:
    return load_shard(shard.path, shard.password)


@pytest.fixture
def make_world(signer: Shard, test_policy: Path) -> Callable[..., World]:
    """Build a pipeline over a scripted API and an in-memory journal."""
    def make(items: Sequence[dict[str, Any]] = (), **options: Any) -> World:
        api = ScriptedApi(items=list(items))
        clock = Clock()
        journal = RecordingJournal(api.timeline, clock)
        journal.open()
        policy = load_policy(test_policy)
        events: list[DecisionEvent] = []
        pipeline = Pipeline(api, signer, journal,
                            PolicyState(policy, ledger_from_journal(policy, journal, clock())),
                            Metrics(), get_logger("test"), clock=clock,
                            listeners=[events.append], **options)
        return World(api, journal, clock, pipeline, events)
    return make


class TestPostOutcomes:
    """Each kind of answer to an approve ends in the right journal state and metric."""

    async def test_success_is_recorded_as_posted(self, make_world: Callable[..., World]) -> None:
        """A 200 answer records the decision as posted with the API's code."""
        world = make_world([raw(1)])

        result = await world.pipeline.poll()

        assert (result.ok, result.approved, result.posted) == (True, 1, 1)
        record = world.latest()[1]
        assert (record.state, record.outcome_code) == ("posted", 200)
        assert world.metric("cosigner_posts_total", endpoint="approve", outcome="ok") == 1
        assert [e.state for e in world.events] == ["decided", "posted"]

    async def test_already_processed_is_reconciled(self, make_world: Callable[..., World]
                                                   ) -> None:
        """An "already processed" answer marks the decision posted and is not retried."""
        world = make_world([raw(1)])
        world.api.answers[1] = [AlreadyProcessedError("approve", 4091, "already processed")]

        result = await world.pipeline.poll()
        await world.pipeline.poll()

        assert result.reconciled == 1
        assert (world.latest()[1].state, world.latest()[1].outcome_code) == ("posted", 4091)
        assert world.api.posts() == [1]

    async def test_an_api_refusal_is_failed_and_reposted_next_cycle(
            self, make_world: Callable[..., World]) -> None:
        """A business error records failed; the next cycle re-posts the same decision."""
        world = make_world([raw(1)])
        world.api.answers[1] = [ApiResponseError("approve", 4222, "value differs")]

        first = await world.pipeline.poll()
        assert (first.failed, world.latest()[1].state) == (1, "failed")
        second = await world.pipeline.poll()

        assert (second.reposted, second.posted, second.decided) == (1, 1, 0)
        assert world.api.posts() == [1, 1]
        assert world.latest()[1].state == "posted"
        assert len(list(world.journal.records())) == 1

    @pytest.mark.parametrize("error", [
        ApiTimeoutError("approve", "timed out (ReadTimeout)"),
        ApiHTTPError("approve", 502, "API code 5000"),
    ], ids=["timeout", "5xx"])
    async def test_an_unknown_outcome_stays_decided(self, make_world: Callable[..., World],
                                                    error: Exception) -> None:
        """A post that may or may not have landed leaves the record decided, then re-posts."""
        world = make_world([raw(1)])
        world.api.answers[1] = [error]

        first = await world.pipeline.poll()

        assert (first.ok, first.unknown) == (True, 1)
        assert world.latest()[1].state == "decided"
        assert world.metric("cosigner_posts_total", endpoint="approve", outcome="unknown") == 1
        await world.pipeline.poll()
        assert world.latest()[1].state == "posted"
        assert world.api.posts() == [1, 1]

    async def test_an_unexpected_exception_fails_the_item_and_the_cycle(
            self, make_world: Callable[..., World]) -> None:
        """A bug-shaped exception during a post is logged, recorded failed, and the
        cycle goes on with the next item."""
        world = make_world([raw(1), raw(2)])
        world.api.answers[1] = [RuntimeError("boom")]

        with capture_logs() as logs:
            result = await world.pipeline.poll()

        assert (result.ok, result.failed, result.posted) == (False, 1, 1)
        assert world.latest()[1].state == "failed"
        assert world.latest()[2].state == "posted"
        assert any(e["event"] == "item.post_error" and e["item_id"] == 1 for e in logs)


class TestJournalBeforePost:
    """Decisions are journaled in few grouped writes, each before the posts it covers."""

    async def test_every_post_follows_its_journal_write(self, make_world: Callable[..., World]
                                                        ) -> None:
        """With more items than a chunk, each chunk is one write and precedes its posts."""
        count = 2 * CHUNK + 100
        items = [raw(i, "500", to=SANCTIONED if i % 100 == 0 else None)
                 for i in range(1, count + 1)]
        world = make_world(items)

        result = await world.pipeline.poll()

        assert (result.decided, result.rejected, result.posted) == (count, count // 100,
                                                                    count // 100)
        writes = [(n, ids) for n, (kind, ids) in enumerate(world.api.timeline)
                  if kind == "journal"]
        assert [len(ids) for _, ids in writes] == [CHUNK, CHUNK, 100]
        written_at = {i: n for n, ids in writes for i in ids}
        for n, (kind, value) in enumerate(world.api.timeline):
            if kind == "approve":
                assert written_at[value] < n

    async def test_decided_chunks_are_not_held(self, make_world: Callable[..., World]) -> None:
        """Regression (issue 12, peak RSS at 50,000 items): the cycle held every item of the
        snapshot to its end.  A chunk's items are dropped once it is decided and signed."""
        import gc
        import weakref

        class Raw(dict[str, Any]):
            """A raw item that a weak reference can follow (plain dicts cannot)."""

        world = make_world([raw(i, "5") for i in range(1, 2 * CHUNK + 101)])
        refs: list[weakref.ref[Raw]] = []

        async def pending() -> PendingSnapshot:
            listed = []
            for item in world.api.items:
                copy = Raw(item)
                refs.append(weakref.ref(copy))
                listed.append(PendingItem(copy))
            return PendingSnapshot(items=listed, total=len(listed), pages=1)

        alive: list[int] = []

        def third_write(records: list[DecisionRecord]) -> None:
            if len(records) == 100:  # the last chunk
                gc.collect()
                alive.append(sum(ref() is not None for ref in refs[:CHUNK]))

        world.api.pending = pending  # type: ignore[method-assign]
        world.pipeline.after_journal = third_write
        result = await world.pipeline.poll()
        assert result.decided == 2 * CHUNK + 100
        assert alive == [0]

    async def test_posts_stay_in_flight_across_chunks(self, make_world: Callable[..., World],
                                                      tmp_path: Path) -> None:
        """Regression (issue 12): each chunk's posts waited for every post of the chunk
        before, so at each chunk's end the posts in flight fell to zero.  The next chunk's
        first post now starts while the last ones of the chunk before are in flight, and
        never more than ``concurrency`` are in flight."""
        import asyncio

        world = make_world([raw(i, "1") for i in range(1, CHUNK + 101)], concurrency=8)
        _unlimited(world, tmp_path)
        approve = world.api.approve
        in_flight: set[int] = set()
        most = 0
        at_second_chunk: list[int] = []

        async def slow(fields: dict[str, Any], data: str) -> None:
            nonlocal most
            if fields["id"] == CHUNK + 1:
                at_second_chunk.append(len(in_flight))
            in_flight.add(fields["id"])
            most = max(most, len(in_flight))
            try:
                await asyncio.sleep(0.001 * (fields["id"] % 5))
                await approve(fields, data)
            finally:
                in_flight.discard(fields["id"])

        world.api.approve = slow  # type: ignore[method-assign]
        result = await world.pipeline.poll()
        assert result.posted == CHUNK + 100
        assert most == 8
        assert len(at_second_chunk) == 1
        assert at_second_chunk[0] > 0

    async def test_the_decider_runs_at_most_one_chunk_ahead_of_the_posting(
            self, make_world: Callable[..., World], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """While the first chunk's posts hang, the second chunk waits in the queue and the
        third is decided, signed and held by the decider: no more is journaled ahead (the
        poster took the second chunk from the queue as soon as it came, so a fourth was
        journaled, and the posts of two chunks contended for the same slots).  Once the
        posts go on, everything is posted, in order within each worker."""
        import asyncio

        import cosigner.daemon.pipeline as pipeline_module

        monkeypatch.setattr(pipeline_module, "CHUNK", 10)
        world = make_world([raw(i, "1") for i in range(1, 61)], concurrency=3)
        _unlimited(world, tmp_path)
        approve = world.api.approve
        release = asyncio.Event()
        journaled: list[int] = []

        async def held(fields: dict[str, Any], data: str) -> None:
            await release.wait()
            await approve(fields, data)

        world.api.approve = held  # type: ignore[method-assign]
        world.pipeline.after_journal = lambda records: journaled.append(len(records))
        poll = asyncio.create_task(world.pipeline.poll())
        try:
            await wait_for(lambda: len(journaled) >= 3, what="three chunks journaled")
            await asyncio.sleep(0.3)  # time for the decider to go further, if it could
            ahead, in_flight = list(journaled), world.pipeline.in_flight
        finally:
            release.set()
            result = await poll
        assert ahead == [10, 10, 10]
        assert in_flight == 3
        assert result.posted == 60
        assert journaled == [10] * 6

    async def test_the_posts_go_on_while_a_chunk_is_decided(
            self, make_world: Callable[..., World], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """Regression (issue 12): a chunk was decided in one stretch of the event loop, so
        no answer was read and no post sent until its last item was decided (~20 ms of
        500 items under load, ~6 % of a 10,000-item cycle with the provider waiting).  The
        decider now hands the loop back every ``DECIDE_SLICE`` items: the posts of the
        chunk before go on between the decisions of the next one."""
        import asyncio
        import time

        import cosigner.daemon.pipeline as pipeline_module

        monkeypatch.setattr(pipeline_module, "CHUNK", 100)
        world = make_world([raw(i, "1") for i in range(1, 301)], concurrency=2)
        _unlimited(world, tmp_path)
        approve = world.api.approve
        decide = pipeline_module.decide

        def slow_decide(item: PendingItem, *args: Any, **kwargs: Any) -> Any:
            world.api.timeline.append(("decide", item.id))
            time.sleep(0.0005)  # a decision that takes a while: posts fall due meanwhile
            return decide(item, *args, **kwargs)

        async def post(fields: dict[str, Any], data: str) -> None:
            await asyncio.sleep(0.001)
            await approve(fields, data)

        monkeypatch.setattr(pipeline_module, "decide", slow_decide)
        world.api.approve = post  # type: ignore[method-assign]
        result = await world.pipeline.poll()

        assert result.posted == 300
        kinds = [(kind, value) for kind, value in world.api.timeline
                 if kind in ("decide", "approve")]
        for first_id in (101, 201):  # the second and the third chunk
            start = kinds.index(("decide", first_id))
            end = kinds.index(("decide", first_id + 99))
            posted_meanwhile = [v for k, v in kinds[start:end] if k == "approve"]
            assert posted_meanwhile, f"no post while the chunk from {first_id} was decided"
            assert all(v < first_id for v in posted_meanwhile)

    async def test_the_posts_go_on_while_a_chunk_is_counted_and_its_payloads_built(
            self, make_world: Callable[..., World], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """Regression (issue 12): once a chunk was journaled, counting its decisions (the
        metrics, the log, the events) and building the payloads to sign ran in one
        stretch of the event loop (~6 ms a chunk of 500 under load).  Both now hand the
        loop back as the deciding does: the posts of the chunk before go on."""
        import asyncio
        import time

        import cosigner.daemon.pipeline as pipeline_module

        # Four payload slices a chunk: a post that falls due during one slice is sent
        # once the slice after it has run, so it lands inside the chunk's stretch.
        size = 4 * pipeline_module.SIGN_SLICE
        monkeypatch.setattr(pipeline_module, "CHUNK", size)
        world = make_world([raw(i, "1") for i in range(1, 2 * size + 1)], concurrency=4)
        _unlimited(world, tmp_path)
        approve = world.api.approve
        sign_object = pipeline_module.approval_sign_object

        def slow_sign_object(item_id: int, *args: Any) -> bytes:
            world.api.timeline.append(("payload", item_id))
            time.sleep(0.0001)
            return sign_object(item_id, *args)

        def slow_event(event: DecisionEvent) -> None:
            if event.state == "decided":
                world.api.timeline.append(("counted", event.item_id))
                time.sleep(0.0001)

        async def post(fields: dict[str, Any], data: str) -> None:
            await asyncio.sleep(0.004)  # the first chunk posts while the second is prepared
            await approve(fields, data)

        monkeypatch.setattr(pipeline_module, "approval_sign_object", slow_sign_object)
        world.pipeline.listeners.append(slow_event)
        world.api.approve = post  # type: ignore[method-assign]
        result = await world.pipeline.poll()

        assert result.posted == 2 * size
        steps = [(kind, value) for kind, value in world.api.timeline
                 if kind in ("payload", "counted", "approve")]
        for kind in ("counted", "payload"):  # the second chunk's, while the first posts
            start, end = steps.index((kind, size + 1)), steps.index((kind, 2 * size))
            posted_meanwhile = [v for k, v in steps[start:end] if k == "approve"]
            assert posted_meanwhile, f"no post while the second chunk was {kind}"
            assert all(v <= size for v in posted_meanwhile)

    async def test_a_failing_poster_posts_nothing_more_and_the_decider_finishes(
            self, make_world: Callable[..., World], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """A bug in a posting worker stops every worker; the decider is not left blocked
        on the full queue (the poster keeps taking its chunks), the cycle ends as failed
        and what was not posted stays decided, for the next cycle."""
        import asyncio

        import cosigner.daemon.pipeline as pipeline_module

        monkeypatch.setattr(pipeline_module, "CHUNK", 10)
        world = make_world([raw(i, "1") for i in range(1, 61)], concurrency=3)
        _unlimited(world, tmp_path)

        def broken(outcome: Any) -> None:
            raise RuntimeError("a bug after a post")

        world.pipeline._settled = broken  # type: ignore[method-assign]
        result = await asyncio.wait_for(world.pipeline.poll(), timeout=20)
        assert result.ok is False
        assert any("a bug after a post" in error for error in result.errors)
        assert result.decided == 60
        posted = world.api.posts()
        assert 1 <= len(posted) <= 3  # the posts in flight when the first one failed
        states = {r.item_id: r.state for r in world.latest().values()}
        assert {states[i] for i in range(1, 61) if i not in posted} == {"decided"}

    async def test_a_conflict_retry_keeps_what_the_poster_counted(
            self, make_world: Callable[..., World], tmp_path: Path) -> None:
        """Regression: a journal conflict restored the whole cycle's result as it was before
        the chunk, erasing the posts counted meanwhile by the poster of the chunk before.
        The chunk is counted apart; every post is counted once."""
        from cosigner.errors import JournalConflictError

        world = make_world([raw(i, "1") for i in range(1, 2 * CHUNK + 1)])
        _unlimited(world, tmp_path)
        record = world.journal.record_decisions
        calls = 0

        def conflict_once(decisions: Any, guard: Any = None) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise JournalConflictError("test", {decisions[0].item_id: "already_decided"})
            return record(decisions, guard)

        world.journal.record_decisions = conflict_once  # type: ignore[method-assign]
        result = await world.pipeline.poll()
        assert calls == 3
        assert len(world.api.posts()) == 2 * CHUNK
        assert (result.decided, result.posted) == (2 * CHUNK, 2 * CHUNK)

    async def test_a_rebuild_recounts_the_pending_bundles_ledger_too(
            self, make_world: Callable[..., World]) -> None:
        """Regression: after a write that recorded nothing (or a failover), only the
        ledger in force was counted again; the pending bundle's kept the approvals that
        were never recorded.  Both are recounted; a shared one stays shared."""
        from cosigner.daemon.pipeline import rebuild_ledgers
        from cosigner.policy.governance import Pending
        from cosigner.policy.ledger import Approval

        world = make_world()
        state = world.pipeline.state
        ghost = Approval("56", HOT, address(0x22), Decimal(5), world.clock())
        state.pending = Pending(state.policy, Ledger(state.policy, [ghost]), world.clock(),
                                world.clock() + timedelta(hours=1))
        rebuild_ledgers(state, world.journal, world.clock())
        assert state.pending.ledger.usage(LIMIT, "56", world.clock()) == (0, 0)
        state.pending.ledger = state.ledger
        rebuild_ledgers(state, world.journal, world.clock())
        assert state.pending.ledger is state.ledger

    async def test_a_hook_between_journal_and_post_sees_the_records(
            self, make_world: Callable[..., World]) -> None:
        """``after_journal`` runs after the write and before any post."""
        world = make_world([raw(1), raw(2, to=SANCTIONED)])
        seen: list[tuple[list[int], list[int]]] = []
        world.pipeline.after_journal = lambda records: seen.append(
            ([r.item_id for r in records], world.api.posts()))

        await world.pipeline.poll()

        assert seen == [([1, 2], [])]


class TestItemsWithoutDecision:
    """Items that cannot be decided are held without a record, and never posted."""

    async def test_an_item_without_id_is_held_and_counted(self, make_world: Callable[..., World]
                                                          ) -> None:
        """No id means no record and no post; invalid_items{missing_field} counts it."""
        no_id = raw(1)
        del no_id["id"]
        world = make_world([no_id, {**raw(2), "id": "2"}])

        result = await world.pipeline.poll()

        assert result.held == 2
        assert list(world.journal.records()) == []
        assert world.api.posts() == []
        assert world.metric("cosigner_invalid_items_total", reason="missing_field") == 2

    async def test_a_duplicate_id_in_one_snapshot_is_decided_once(
            self, make_world: Callable[..., World]) -> None:
        """The same id listed twice is decided and posted once."""
        world = make_world([raw(1), raw(1)])

        await world.pipeline.poll()

        assert world.api.posts() == [1]
        assert len(list(world.journal.records())) == 1

    async def test_a_stopping_pipeline_decides_and_posts_nothing(
            self, make_world: Callable[..., World]) -> None:
        """Once asked to stop, a poll records and posts nothing new."""
        world = make_world([raw(1)])
        world.pipeline.stopping.set()

        result = await world.pipeline.poll()

        assert (result.decided, world.api.posts()) == (0, [])
        assert await world.pipeline.collect() is False

    async def test_a_failing_listener_does_not_stop_decisions(
            self, make_world: Callable[..., World]) -> None:
        """A display that raises is logged; the item is still decided and posted."""
        world = make_world([raw(1)])

        def broken(_event: DecisionEvent) -> None:
            raise ValueError("display is broken")

        world.pipeline.listeners.insert(0, broken)
        with capture_logs() as logs:
            await world.pipeline.poll()

        assert world.api.posts() == [1]
        assert any(e["event"] == "listener.failed" for e in logs)


class TestLimitsOverTime:
    """The limit window moves with the injected clock."""

    async def test_approvals_leave_the_window(self, make_world: Callable[..., World]) -> None:
        """After 24 h the earlier approvals no longer count against the limit."""
        world = make_world([raw(i, "1") for i in range(1, MAX_COUNT + 2)])

        await world.pipeline.poll()
        assert world.latest()[MAX_COUNT + 1].reasons == (f"limit:{LIMIT}",)
        assert world.metric("cosigner_limit_usage_ratio", limit=LIMIT, per="chain") == 1.0

        world.clock.now = T0 + timedelta(hours=24, seconds=1)
        await world.pipeline.poll()

        assert world.latest()[MAX_COUNT + 1].action is Action.APPROVE
        assert world.api.posts() == [*range(1, MAX_COUNT + 1), MAX_COUNT + 1]
        assert world.metric("cosigner_limit_usage_ratio", limit=LIMIT, per="chain") == 1 / MAX_COUNT


class TestCollect:
    """A collection round tries every isMain and reports whether all succeeded."""

    async def test_one_failure_does_not_skip_the_other(self, make_world: Callable[..., World]
                                                       ) -> None:
        """isMain 1 failing still collects isMain 0; the round reports failure."""
        world = make_world()
        world.api.collect_errors[1] = ApiHTTPError("collect", 503)

        assert await world.pipeline.collect() is False

        assert world.api.timeline == [("collect", 1), ("collect", 0)]
        assert world.metric("cosigner_collections_total", is_main="1", outcome="error") == 1
        assert world.metric("cosigner_collections_total", is_main="0", outcome="ok") == 1
        assert world.metric("cosigner_last_collect_success_timestamp_seconds") == 0

    async def test_shadow_mode_collects_nothing(self, make_world: Callable[..., World]) -> None:
        """In shadow mode the collection round posts nothing and succeeds."""
        world = make_world(mode="shadow")

        assert await world.pipeline.collect() is True
        assert world.api.timeline == []


class TestIssue10Defects:
    """Regression tests of issue 10, defects 1-6 (each failed on the code before the fix)."""

    async def test_shadow_mode_never_reposts_a_recorded_decision(
            self, make_world: Callable[..., World], signer: Shard) -> None:
        """Defect 1: an enforce approval whose post was lost is not re-posted by a shadow run;
        the shadow run collects nothing either."""
        world = make_world([raw(1)])
        world.api.answers[1] = [ApiTimeoutError("approve", "timed out")]
        await world.pipeline.poll()
        assert (world.latest()[1].state, world.api.posts()) == ("decided", [1])

        shadow = Pipeline(world.api, signer, world.journal, world.pipeline.state, Metrics(),
                          get_logger("test"), clock=world.clock, mode="shadow")
        result = await shadow.poll()
        assert await shadow.collect() is True

        assert world.api.posts() == [1]
        assert ("collect", 1) not in world.api.timeline
        assert (result.skipped, result.reposted) == (1, 0)
        assert world.latest()[1].state == "decided"

    async def test_same_id_twice_with_other_content_holds_every_copy(
            self, make_world: Callable[..., World]) -> None:
        """Defect 2: two contents under one id in one snapshot: nothing posted, nothing
        recorded, the mutation counted once and logged critical."""
        world = make_world([raw(1), raw(2), raw(1, amount="6")])

        with capture_logs() as logs:
            result = await world.pipeline.poll()

        assert world.api.posts() == [2]
        assert 1 not in world.latest()
        assert result.mutations == 2
        assert world.metric("cosigner_item_mutations_total") == 2
        assert [e["item_id"] for e in logs if e["event"] == "item.mutated"] == [1, 1]
        assert all(e["log_level"] == "critical" for e in logs if e["event"] == "item.mutated")

    async def test_an_item_with_a_duplicate_key_is_held(
            self, make_world: Callable[..., World]) -> None:
        """Defect 3: an item repeating ``toAddress`` is held as duplicate_key, never posted."""
        from cosigner.models import loads_checked  # new with the fix
        text = json.dumps(raw(1)).replace('"amount"', f'"toAddress": "{address(0x33)}", "amount"')
        world = make_world()
        world.api.items = [loads_checked(text)]

        await world.pipeline.poll()

        assert world.api.posts() == []
        record = world.latest()[1]
        assert (record.action, record.reasons) == (Action.HOLD, ("invalid:duplicate_key",))
        assert world.metric("cosigner_invalid_items_total", reason="duplicate_key") == 1

    async def test_bad_ids_are_held_and_the_cycle_carries_on(
            self, make_world: Callable[..., World], signer: Shard, tmp_path: Path) -> None:
        """Defect 4: ids of 2**63 and more, 0 and negative are held as invalid (nothing
        recorded or posted); the good item of the same cycle is still posted (SQLite journal:
        2**63 used to raise OverflowError and stop every cycle)."""
        world = make_world([raw(2**63), raw(2**64), raw(0), raw(-7), raw(5)])
        init_journal(f"sqlite://{tmp_path / 'journal.db'}")
        journal = SqliteJournal(tmp_path / "journal.db", writer=True, clock=world.clock)
        journal.open()
        try:
            world.pipeline.journal = journal
            result = await world.pipeline.poll()
            recorded = [r.item_id for r in journal.records()]
        finally:
            journal.close()

        assert result.ok
        assert world.api.posts() == [5]
        assert recorded == [5]
        assert world.metric("cosigner_invalid_items_total", reason="bad_id") == 4

    async def test_the_pause_stops_a_chunk_already_posting(
            self, make_world: Callable[..., World], tmp_path: Path) -> None:
        """Defect 5: the pause file touched after two posts stops every later post at once;
        the rest stay decided and go out when the pause ends."""
        pause = tmp_path / "pause"
        world = make_world([raw(i, "1") for i in range(1, 4)], pause_file=pause,
                           concurrency=1)
        approve = world.api.approve

        async def approve_then_pause(fields: dict[str, Any], data: str) -> None:
            await approve(fields, data)
            if len(world.api.posts()) == 2:
                pause.touch()

        world.api.approve = approve_then_pause  # type: ignore[method-assign]
        result = await world.pipeline.poll()

        assert world.api.posts() == [1, 2]
        assert result.paused == 1
        assert world.latest()[3].state == "decided"
        pause.unlink()
        await world.pipeline.poll()
        assert world.api.posts() == [1, 2, 3]

    async def test_a_pause_file_that_cannot_be_checked_counts_as_paused(
            self, make_world: Callable[..., World], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """Regression: a pause check raising (EACCES, EIO on Python 3.11) killed the poster
        task and the decider then blocked on the full queue forever.  It counts as
        paused now: the poll ends, nothing is posted, the records stay decided."""
        import asyncio
        import os

        from cosigner.daemon import pipeline as pipeline_module

        pause = tmp_path / "guarded" / "pause"
        real_stat = os.stat

        def stat(path: object, *args: object, **kwargs: object) -> object:
            if str(path) == str(pause):
                raise PermissionError(13, "Permission denied")
            return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(pipeline_module.os, "stat", stat)
        world = make_world([raw(i, "1") for i in range(1, CHUNK + 11)])
        world.pipeline.pause_file = pause
        result = await asyncio.wait_for(world.pipeline.poll(), timeout=20)
        assert result.ok is True  # not a failing poster: paused, as the file might say
        assert world.api.posts() == []
        assert result.posted == 0
        assert result.held == CHUNK + 10  # decided while "paused": recorded as holds
        assert {r.state for r in world.latest().values()} <= {"decided"}

    def test_the_pause_check_fails_closed(self, make_world: Callable[..., World],
                                          tmp_path: Path) -> None:
        """Only "no such file" (or a path through a file) means not paused; a symlink loop
        at the path or a path that cannot be checked at all means paused."""
        pipeline = make_world([]).pipeline
        cases = {tmp_path / "absent": False, tmp_path / "file" / "pause": False,
                 tmp_path / "loop": True, tmp_path / "present": True,
                 Path(str(tmp_path) + "/nul\x00pause"): True}
        (tmp_path / "file").write_text("")
        (tmp_path / "present").write_text("")
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        for path, paused in cases.items():
            pipeline.pause_file = path
            assert pipeline.paused() is paused, path

    async def test_a_poster_that_fails_does_not_block_the_decider(
            self, make_world: Callable[..., World], tmp_path: Path) -> None:
        """A post path raising outside the per-post handling ends the poll (not ok) instead
        of leaving the decider blocked on the queue; no post follows the failure."""
        import asyncio

        world = make_world([raw(i, "1") for i in range(1, 3 * CHUNK + 1)])
        _unlimited(world, tmp_path)
        calls = 0
        settled = world.pipeline._settled

        def broken(outcome: NewOutcome) -> None:
            nonlocal calls
            calls += 1
            if calls > 3:
                raise RuntimeError("boom")
            settled(outcome)

        world.pipeline._settled = broken  # type: ignore[method-assign]
        result = await asyncio.wait_for(world.pipeline.poll(), timeout=20)
        assert result.ok is False
        assert len(world.api.posts()) <= CHUNK  # no chunk after the failing one is posted

    async def test_the_pause_stops_collections(self, make_world: Callable[..., World],
                                               tmp_path: Path) -> None:
        """Defect 5: no collection is posted while paused."""
        pause = tmp_path / "pause"
        pause.touch()
        world = make_world(pause_file=pause)

        assert await world.pipeline.collect() is True
        assert world.api.timeline == []

    async def test_a_poster_goes_on_posting_while_a_full_batch_is_committed(
            self, make_world: Callable[..., World], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """Regression (issue 12): the poster whose outcome filled a batch waited for the
        journal's commit of it (a thread hop, an fsync), one post slot idle meanwhile.
        The commit now runs on its own and the poster goes on; it waits only when the
        journal is a whole batch behind, so the outcomes queued stay about a batch."""
        import asyncio
        import functools
        import time

        import cosigner.daemon.pipeline as pipeline_module

        # Only full batches commit (no timer): the first commit is a full batch's.
        monkeypatch.setattr(pipeline_module, "OutcomeWriter",
                            functools.partial(pipeline_module.OutcomeWriter, delay=60.0))
        count = 3 * OUTCOME_BATCH
        world = make_world([raw(i, "1") for i in range(1, count + 1)], concurrency=1)
        _unlimited(world, tmp_path)
        record_outcomes = world.journal.record_outcomes

        def slow_commit(outcomes: Sequence[NewOutcome]) -> None:
            world.api.timeline.append(("commit", len(outcomes)))
            time.sleep(0.05)  # an fsync that takes a while
            record_outcomes(outcomes)

        async def post(fields: dict[str, Any], data: str) -> None:
            await asyncio.sleep(0.001)  # a post takes a while and hands the loop over
            await approve(fields, data)

        approve = world.api.approve
        world.api.approve = post  # type: ignore[method-assign]
        world.journal.record_outcomes = slow_commit  # type: ignore[method-assign]
        result = await world.pipeline.poll()

        assert result.posted == count
        kinds = [kind for kind, _ in world.api.timeline]
        first_commit, first_done = kinds.index("commit"), kinds.index("outcomes")
        assert kinds[first_commit:first_done].count("approve") > 0
        assert sum(v for k, v in world.api.timeline if k == "commit") == count
        assert all(len(v) <= 2 * OUTCOME_BATCH for k, v in world.api.timeline
                   if k == "outcomes")
        assert all(r.state == "posted" for r in world.latest().values())

    async def test_outcomes_are_recorded_promptly_and_after_their_post(
            self, make_world: Callable[..., World], tmp_path: Path) -> None:
        """Defect 6: outcomes are committed in small groups while a chunk posts (not once per
        chunk), each after its own post."""
        count = 300
        world = make_world([raw(i, "1") for i in range(1, count + 1)])
        _unlimited(world, tmp_path)
        recorded_when: list[int] = []
        approve = world.api.approve

        async def approve_and_look(fields: dict[str, Any], data: str) -> None:
            if fields["id"] == count:  # the last post: earlier outcomes are already durable
                recorded_when.append(sum(1 for r in world.journal.records()
                                         if r.state == "posted"))
            await approve(fields, data)

        world.api.approve = approve_and_look  # type: ignore[method-assign]
        await world.pipeline.poll()

        assert recorded_when
        assert recorded_when[0] >= count - 2 * OUTCOME_BATCH - 8
        posted_at: dict[int, int] = {}
        for position, (kind, value) in enumerate(world.api.timeline):
            if kind == "approve":
                posted_at[value] = position
            elif kind == "outcomes":
                assert all(posted_at[item_id] < position for item_id, _ in value)
        batches = [v for k, v in world.api.timeline if k == "outcomes"]
        assert len(batches) >= count // OUTCOME_BATCH
        assert max(len(b) for b in batches) <= 2 * OUTCOME_BATCH

    async def test_a_decided_record_whose_item_left_the_list_is_settled_gone(
            self, make_world: Callable[..., World]) -> None:
        """Defect 6: a post with an unknown outcome whose item then leaves the pending list
        becomes ``gone`` (logged critical, counted in decided_unposted_items), not
        ``decided`` forever; it is never posted again."""
        world = make_world([raw(1), raw(2)])
        world.api.answers[1] = [ApiTimeoutError("approve", "timed out")]
        await world.pipeline.poll()
        assert world.metric("cosigner_decided_unposted_items") == 1

        world.api.items = [raw(2)]
        with capture_logs() as logs:
            result = await world.pipeline.poll()

        assert result.gone == 1
        assert world.latest()[1].state == "gone"
        assert [e["item_id"] for e in logs if e["event"] == "item.gone"] == [1]
        assert world.metric("cosigner_decided_unposted_items") == 1
        assert world.api.posts() == [1, 2]


def _unlimited(world: World, tmp_path: Path) -> Ledger:
    """The test policy without its limit (hundreds of approvals fit), put in force."""
    text = POLICY[:POLICY.index("limits:")] + POLICY[POLICY.index("rules:"):]
    path = tmp_path / "unlimited.yaml"
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    world.pipeline.state = PolicyState(policy, Ledger(policy))
    return world.pipeline.state.ledger
