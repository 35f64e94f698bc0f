"""Every error path ends in hold or an unposted ``decided`` record, never an approval
(DESIGN section 2): API faults during the posts and journal write failures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from cosigner.errors import StoreError
from cosigner.models import Action
from cosigner.store import DecisionRecord, Journal, LimitGuard, NewDecision, NewOutcome
from tests.daemon.conftest import SANCTIONED, Rig, address, item


class FailingJournal:
    """A journal whose writes fail on demand; everything else is the real one."""

    def __init__(self, inner: Journal, *, decisions: bool = False,
                 outcomes: bool = False) -> None:
        self._inner = inner
        self.fail_decisions = decisions
        self.fail_outcomes = outcomes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def record_decisions(self, decisions: Sequence[NewDecision],
                         guard: LimitGuard | None = None) -> list[DecisionRecord]:
        if self.fail_decisions:
            raise StoreError("journal: disk I/O error (simulated)")
        return self._inner.record_decisions(decisions, guard)

    def record_outcomes(self, outcomes: Sequence[NewOutcome]) -> None:
        if self.fail_outcomes:
            raise StoreError("journal: disk I/O error (simulated)")
        self._inner.record_outcomes(outcomes)


async def mixed(rig: Rig) -> tuple[set[int], set[int]]:
    """Queue approvable items and items the policy does not approve; both id sets."""
    approvable = await rig.add(*(item("1", to=address(0xE0 + n)) for n in range(3)))
    others = await rig.add(item("5", to=SANCTIONED), item("500"), item("-1"),
                           item("1", to=address(0xE5) + " "))
    return set(approvable), set(others)


FAULTS = {
    "5xx": {"errorRate": 1.0},
    "429": {"rateLimitRate": 1.0},
    "html": {"nonJsonRate": 1.0},
    "dropped": {"dropRate": 1.0},
    "truncated-body": {"truncateRate": 1.0, "truncateMode": "body"},
    "truncated-connection": {"truncateRate": 1.0, "truncateMode": "connection"},
    "lost-answer": {"lostAnswerRate": 1.0, "lostAnswerMode": "drop"},
    "timeout": {"lostAnswerRate": 1.0, "lostAnswerMode": "hang", "hangMaxS": 5},
    "half": {"errorRate": 0.25, "dropRate": 0.25, "seed": 3},
}


class TestApiFaultsDuringPosts:
    """Whatever the API does to the posts, nothing the policy would not approve is approved,
    and a clean cycle afterwards completes each decision exactly once."""

    @pytest.mark.parametrize("faults", FAULTS.values(), ids=FAULTS.keys())
    async def test_faults_never_approve_what_the_policy_does_not(
            self, rig: Rig, faults: dict[str, Any]) -> None:
        """Faulty approve answers leave records decided or failed, never a wrong approval."""
        approvable, others = await mixed(rig)
        await rig.admin.set_faults({**faults, "endpoints": ["approve"]})
        daemon = rig.build(rig.with_settings(request_timeout=0.5))

        assert await daemon.run_once() == 1

        statuses = await rig.statuses()
        assert {i for i, s in statuses.items() if s == "approved"} <= approvable
        latest = rig.latest()
        assert {i for i, r in latest.items() if r.action is Action.APPROVE} == approvable
        assert all(latest[i].state != "posted" or statuses[i] != "pending" for i in latest)

        await rig.admin.clear_faults()
        assert await rig.build().run_once() == 0

        statuses = await rig.statuses()
        assert {i for i, s in statuses.items() if s == "approved"} == approvable
        assert {i for i, s in statuses.items() if s == "rejected"} == {
            i for i in others if rig.latest()[i].action is Action.REJECT}
        accepted = Counter(d["id"] for d in await rig.received() if d["code"] == 200)
        assert accepted == dict.fromkeys(approvable | {i for i, s in statuses.items()
                                                       if s == "rejected"}, 1)
        # A post whose answer was lost is settled as ``gone``: the API no longer lists
        # the item, so there is nothing to re-post; every other one is now ``posted``.
        assert {rig.latest()[i].state for i in approvable} <= {"posted", "gone"}
        if not faults.get("lostAnswerRate") and not faults.get("truncateRate"):
            assert {rig.latest()[i].state for i in approvable} == {"posted"}

    async def test_a_post_refused_by_the_api_is_recorded_as_failed(self, rig: Rig) -> None:
        """An item the API no longer has (4041) is recorded as failed, not posted."""
        (gone,) = await rig.add(item("5"))
        daemon = rig.build()
        # The item disappears from the sandbox between the journal write and the post.
        daemon.pipeline.after_journal = lambda _records: rig.server.state.reset()

        assert await daemon.run_once() == 1

        record = rig.latest()[gone]
        assert (record.action, record.state, record.outcome_code) == (
            Action.APPROVE, "failed", 4041)
        assert daemon.metrics.registry.get_sample_value(
            "cosigner_posts_total", {"endpoint": "approve", "outcome": "rejected_by_api"}) == 1


class TestJournalFailures:
    """A journal that cannot be written stops the posts it would have covered."""

    async def test_a_failed_decision_write_posts_nothing(self, rig: Rig) -> None:
        """When record_decisions fails, nothing of that cycle is posted and it counts as failed."""
        approvable, _ = await mixed(rig)
        daemon = rig.build()
        daemon.pipeline.journal = FailingJournal(daemon.journal, decisions=True)

        assert await daemon.run_once() == 1

        assert await rig.received() == []
        assert rig.records() == {}
        assert daemon.metrics.registry.get_sample_value(
            "cosigner_limit_usage_ratio", {"limit": "bsc-count", "per": "chain"}) == 0

        assert await rig.build().run_once() == 0
        assert set(await rig.post_counts()) >= approvable

    async def test_a_failed_outcome_write_is_not_posted_twice(self, rig: Rig) -> None:
        """Posts whose answers could not be recorded fail the cycle and are not made again."""
        approvable, _ = await mixed(rig)
        daemon = rig.build()
        daemon.pipeline.journal = FailingJournal(daemon.journal, outcomes=True)

        assert await daemon.run_once() == 1

        assert {rig.latest()[i].state for i in approvable} == {"decided"}
        posted = await rig.post_counts()
        assert set(posted) >= approvable
        assert set(posted.values()) == {1}

        assert await rig.build().run_once() == 0
        assert await rig.post_counts() == posted

    async def test_a_crash_inside_the_journal_write_posts_nothing(self, rig: Rig) -> None:
        """An unexpected exception type from the journal is handled like a StoreError."""
        approvable, _ = await mixed(rig)
        daemon = rig.build()

        class Broken(FailingJournal):
            def record_decisions(self, decisions: Sequence[NewDecision],
                                 guard: LimitGuard | None = None) -> list[DecisionRecord]:
                raise OSError("No space left on device")

        daemon.pipeline.journal = Broken(daemon.journal)

        assert await daemon.run_once() == 1
        assert await rig.received() == []
        assert approvable.isdisjoint(rig.latest())
