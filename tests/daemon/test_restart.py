"""Never decide twice (DESIGN section 4): a crash between journal and post, a
``posted`` item the API keeps listing, and an item whose content changes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cosigner.models import Action
from cosigner.sandbox import Merchant, SandboxServer
from cosigner.signing.shard import certificate_pem
from cosigner.store import DecisionRecord
from tests.daemon.conftest import API_KEY, API_SECRET, MERCHANT_NO, SANCTIONED, Rig, item


class SimulatedKill(BaseException):
    """The process dies here (a BaseException, so nothing in the daemon catches it)."""


def kill(_records: list[DecisionRecord]) -> None:
    raise SimulatedKill


class SplitTransport(httpx.AsyncBaseTransport):
    """A lagging read replica: the pending list comes from one sandbox, every other
    request goes to another (where the items were already decided)."""

    def __init__(self, pending_url: str, other_url: str) -> None:
        self._pending = httpx.URL(pending_url)
        self._other = httpx.URL(other_url)
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self._pending if request.url.path.endswith("/pending") else self._other
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.asynccontextmanager
async def replica(rig: Rig, items: list[dict[str, Any]]) -> AsyncIterator[SandboxServer]:
    """A second sandbox for the same merchant whose own state lists ``items`` as pending."""
    merchant = Merchant(MERCHANT_NO, API_KEY, API_SECRET,
                        certificate_pem=certificate_pem(rig.shard.certificate))
    server = SandboxServer(merchants=[merchant])
    try:
        server.state.add_items(MERCHANT_NO, items, 0)
        async with server:
            yield server
    finally:
        server.state.close()


class TestCrashBetweenJournalAndPost:
    """A kill after the journal write and before the posts loses nothing and doubles nothing."""

    async def test_restart_posts_each_decision_exactly_once(self, rig: Rig) -> None:
        """The next daemon re-posts every recorded decision once; holds stay unposted."""
        approve, reject, hold = await rig.add(item("5"), item("5", to=SANCTIONED), item("500"))
        crashing = rig.build()
        crashing.pipeline.after_journal = kill

        with pytest.raises(SimulatedKill):
            await crashing.run_once()

        assert await rig.received() == []
        assert {i: r.state for i, r in rig.latest().items()} == {
            approve: "decided", reject: "decided", hold: "decided"}

        assert await rig.build().run_once() == 0

        assert await rig.post_counts() == {approve: 1, reject: 1}
        assert all(d["verified"] is True for d in await rig.received())
        records = rig.records()
        assert {i: len(r) for i, r in records.items()} == {approve: 1, reject: 1, hold: 1}
        assert {i: r[-1].state for i, r in records.items()} == {
            approve: "posted", reject: "posted", hold: "decided"}

    async def test_the_pause_file_stops_recorded_approvals_too(self, rig: Rig) -> None:
        """Recorded decisions waiting for their post are not posted while paused; later once."""
        approve, reject = await rig.add(item("5"), item("5", to=SANCTIONED))
        crashing = rig.build()
        crashing.pipeline.after_journal = kill
        with pytest.raises(SimulatedKill):
            await crashing.run_once()
        pause = rig.tmp / "PAUSE"
        pause.touch()

        paused = rig.build(rig.with_settings(pause_file=pause))
        await paused.pipeline.poll()
        await paused.close()
        assert await rig.post_counts() == {}
        assert rig.latest()[approve].state == rig.latest()[reject].state == "decided"

        pause.unlink()
        assert await rig.build(rig.with_settings(pause_file=pause)).run_once() == 0
        assert await rig.post_counts() == {approve: 1, reject: 1}
        assert rig.latest()[approve].state == "posted"

    async def test_the_recorded_decision_is_reposted_not_reevaluated(self, rig: Rig) -> None:
        """A decided approve is posted after restart even if the new policy would hold it."""
        (approve,) = await rig.add(item("50"))
        crashing = rig.build()
        crashing.pipeline.after_journal = kill
        with pytest.raises(SimulatedKill):
            await crashing.run_once()
        rig.policy_path.write_text(rig.policy_path.read_text().replace(
            'amount: {max: "100"}', 'amount: {max: "10"}'), encoding="utf-8")

        assert await rig.build().run_once() == 0

        assert await rig.post_counts() == {approve: 1}
        (record,) = rig.records()[approve]
        assert (record.action, record.state) == (Action.APPROVE, "posted")

    async def test_a_third_run_posts_nothing(self, rig: Rig) -> None:
        """Once posted after the restart, a decision is never posted again."""
        (approve,) = await rig.add(item("5"))
        crashing = rig.build()
        crashing.pipeline.after_journal = kill
        with pytest.raises(SimulatedKill):
            await crashing.run_once()
        assert await rig.build().run_once() == 0

        assert await rig.build().run_once() == 0

        assert await rig.post_counts() == {approve: 1}


class TestPostedItemsStillListed:
    """A ``posted`` item that the API keeps listing is never posted again."""

    async def test_a_lost_answer_is_reconciled_then_never_posted_again(self, rig: Rig) -> None:
        """The sandbox acted but the answer was lost: the re-post gets "already processed",
        the record becomes posted, and later cycles post nothing."""
        (approve,) = await rig.add(item("5"))
        await rig.admin.set_faults({"lostAnswerRate": 1.0, "lostAnswerMode": "drop",
                                    "endpoints": ["approve"]})
        lost = rig.build()
        assert await lost.run_once() == 1  # the post's outcome is unknown
        assert lost.metrics.registry.get_sample_value(
            "cosigner_posts_total", {"endpoint": "approve", "outcome": "unknown"}) == 1
        await rig.admin.clear_faults()
        assert (await rig.statuses())[approve] == "approved"
        assert rig.latest()[approve].state == "decided"

        # The provider's list lags behind: it still shows the item as pending.
        listed = [i["item"] for i in await rig.admin.items()]
        async with replica(rig, listed) as lagging:
            transport = SplitTransport(lagging.url, rig.server.url)
            second = rig.build(transport=transport)
            assert await second.run_once() == 0
            assert second.metrics.registry.get_sample_value(
                "cosigner_posts_total",
                {"endpoint": "approve", "outcome": "already_processed"}) == 1
            (record,) = rig.records()[approve]
            assert (record.state, record.outcome_code) == ("posted", 4091)

            third = rig.build(transport=SplitTransport(lagging.url, rig.server.url))
            assert await third.run_once() == 0

        codes = [d["code"] for d in await rig.received()]
        assert codes == [200, 4091]

    async def test_a_posted_item_listed_by_a_fresh_sandbox_is_not_posted(
            self, rig: Rig) -> None:
        """A sandbox that lists an item the journal has as posted receives no approve."""
        (approve,) = await rig.add(item("5"))
        assert await rig.build().run_once() == 0
        listed = [i["item"] for i in await rig.admin.items()]

        async with replica(rig, listed) as fresh:
            daemon = rig.build(rig.with_settings(api_base_url=fresh.url))
            assert await daemon.run_once() == 0
            assert fresh.state.approvals() == []
            assert [i.status for i in fresh.state.items()] == ["pending"]

        assert len(rig.records()[approve]) == 1
        assert daemon.metrics.registry.get_sample_value(  # created at zero, never counted
            "cosigner_posts_total", {"endpoint": "approve", "outcome": "ok"}) == 0


class TestMutatedItems:
    """The same id with different content is held, never re-evaluated, and counted."""

    async def test_a_mutated_item_is_held_and_counted(self, rig: Rig) -> None:
        """A held item changed into one the policy would approve is still not posted."""
        (changed,) = await rig.add(item("500"))
        assert await rig.build().run_once() == 0
        await rig.admin.change_item(changed, {"amount": "5"})
        daemon = rig.build()

        for _ in range(3):
            assert (await daemon.pipeline.poll()).ok
        await daemon.close()

        assert await rig.received() == []
        assert (await rig.statuses())[changed] == "pending"
        (record,) = rig.records()[changed]
        assert (record.action, record.reasons) == (Action.HOLD, ("default",))
        assert daemon.metrics.registry.get_sample_value(
            "cosigner_item_mutations_total") == 1

    async def test_a_mutation_is_logged_as_an_alert(self, rig: Rig) -> None:
        """The mutation is logged at critical level with both content hashes."""
        from structlog.testing import capture_logs

        (changed,) = await rig.add(item("500"))
        assert await rig.build().run_once() == 0
        await rig.admin.change_item(changed, {"toAddress": SANCTIONED})

        with capture_logs() as logs:
            assert await rig.build().run_once() == 0

        (alert,) = [e for e in logs if e["event"] == "item.mutated"]
        assert alert["log_level"] == "critical"
        assert alert["item_id"] == changed
        assert alert["recorded_hash"] != alert["seen_hash"]
        assert await rig.received() == []
