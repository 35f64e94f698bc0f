"""The journal contract: every store (memory, SQLite, later PostgreSQL) passes these."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

import pytest

from cosigner.errors import StoreError
from cosigner.models import Action
from cosigner.store import (
    STATES,
    ApprovalRow,
    Journal,
    NewOutcome,
)
from cosigner.store.base import GENESIS_HASH
from tests.store.conftest import T0, FakeClock, Harness, InjectedFailure, content_hash, decision


def posted(record_seq: int, item_id: int, code: int | None = 200,
           message: str = "success") -> NewOutcome:
    return NewOutcome(record_seq, item_id, "posted", code, message)


def failed(record_seq: int, item_id: int, code: int | None = 500,
           message: str = "internal error") -> NewOutcome:
    return NewOutcome(record_seq, item_id, "failed", code, message)


class TestRecordDecisions:
    def test_returns_records_in_order(self, journal: Journal) -> None:
        """A batch comes back as records with consecutive seqs and its fields intact."""
        records = journal.record_decisions([decision(7), decision(8, Action.REJECT)])
        assert [(r.seq, r.item_id, r.action) for r in records] == [
            (1, 7, Action.APPROVE), (2, 8, Action.REJECT)]
        first = records[0]
        assert first.amount_text == "4.10"
        assert first.reasons == ("rule:treasury-sweeps",)
        assert first.created_at == T0
        assert (first.state, first.outcome_code, first.outcome_message) == ("decided", None, None)

    def test_shadow_decisions_are_in_state_shadow(self, journal: Journal) -> None:
        """A decision recorded in shadow mode is in state shadow from the start."""
        [record] = journal.record_decisions([decision(7, mode="shadow")])
        assert record.state == "shadow"

    def test_hold_is_decided(self, journal: Journal) -> None:
        """A hold is a decision like any other, in state decided."""
        [record] = journal.record_decisions([decision(7, Action.HOLD, chain_id=None)])
        assert (record.action, record.state, record.chain_id) == (Action.HOLD, "decided", None)

    def test_records_are_hash_chained(self, journal: Journal) -> None:
        """Each record's prev_hash is the record_hash of the one before, zeros for the first."""
        a = journal.record_decisions([decision(1), decision(2)])
        b = journal.record_decisions([decision(3)])
        chain = [*a, *b]
        assert chain[0].prev_hash == GENESIS_HASH
        for before, after in itertools.pairwise(chain):
            assert after.prev_hash == before.record_hash
        assert len({r.record_hash for r in chain}) == 3

    def test_empty_batch_records_nothing(self, journal: Journal) -> None:
        """An empty batch is a no-op."""
        assert journal.record_decisions([]) == []
        assert journal.verify().entries == 0

    def test_failure_mid_batch_writes_nothing(self, journal: Journal,
                                              harness: Harness) -> None:
        """A batch that fails on its third decision leaves no trace of the first two."""
        journal.record_decisions([decision(1)])
        with harness.failing_on(12), pytest.raises((StoreError, InjectedFailure)):
            journal.record_decisions([decision(10), decision(11), decision(12), decision(13)])
        assert journal.lookup([10, 11, 12, 13], {"enforce"}) == {}
        assert [r.item_id for r in journal.records()] == [1]
        assert journal.verify().ok
        [again] = journal.record_decisions([decision(10)])
        assert again.seq == 2

    def test_created_at_comes_from_the_clock(self, journal: Journal, clock: FakeClock) -> None:
        """Every decision of a batch carries the clock's time, in UTC."""
        clock.advance(hours=1)
        records = journal.record_decisions([decision(1), decision(2)])
        assert {r.created_at for r in records} == {T0 + timedelta(hours=1)}
        assert records[0].created_at.utcoffset() == timedelta(0)


class TestRecordOutcomes:
    def test_posted_outcome_keeps_the_answer(self, journal: Journal, clock: FakeClock) -> None:
        """A posted outcome moves the decision to posted with the API's code and message."""
        [record] = journal.record_decisions([decision(5)])
        clock.advance(seconds=3)
        journal.record_outcomes([posted(record.seq, 5, 200, "success")])
        [view] = journal.lookup([5], {"enforce"}).values()
        assert view.latest is not None
        assert (view.latest.state, view.latest.outcome_code, view.latest.outcome_message) == (
            "posted", 200, "success")
        assert view.latest.outcome_at == T0 + timedelta(seconds=3)
        assert view.latest.record_hash == record.record_hash

    def test_failed_can_be_retried_to_posted(self, journal: Journal) -> None:
        """A failed decision may be posted again; the latest outcome gives the state."""
        [record] = journal.record_decisions([decision(5)])
        journal.record_outcomes([failed(record.seq, 5, 1003, "timestamp expired")])
        assert next(journal.records()).state == "failed"
        journal.record_outcomes([posted(record.seq, 5)])
        assert next(journal.records()).state == "posted"

    def test_failed_then_posted_in_one_batch(self, journal: Journal) -> None:
        """Outcomes of one batch apply in order."""
        [record] = journal.record_decisions([decision(5)])
        journal.record_outcomes([failed(record.seq, 5), posted(record.seq, 5, None, "reconciled")])
        assert next(journal.records()).outcome_message == "reconciled"

    def test_posted_is_final(self, journal: Journal) -> None:
        """An outcome for a decision already posted is refused."""
        [record] = journal.record_decisions([decision(5)])
        journal.record_outcomes([posted(record.seq, 5)])
        with pytest.raises(StoreError, match="already posted"):
            journal.record_outcomes([failed(record.seq, 5)])
        with pytest.raises(StoreError, match="already posted"):
            journal.record_outcomes([posted(record.seq, 5)])
        assert journal.verify().entries == 2

    @pytest.mark.parametrize(("action", "mode", "outcome_item", "problem"), [
        pytest.param("hold", "enforce", 5, "a hold is never posted", id="hold"),
        pytest.param("approve", "shadow", 5, "a shadow decision is never posted", id="shadow"),
        pytest.param("reject", "enforce", 6, "that decision is for item 5", id="other-item"),
    ])
    def test_impossible_outcomes_are_refused(self, journal: Journal, action: str, mode: str,
                                             outcome_item: int, problem: str) -> None:
        """An outcome for a hold, a shadow decision or another item is refused."""
        [record] = journal.record_decisions([decision(5, action, mode=mode)])
        with pytest.raises(StoreError, match=problem):
            journal.record_outcomes([posted(record.seq, outcome_item)])

    def test_bad_outcome_mid_batch_writes_nothing(self, journal: Journal) -> None:
        """A batch with an outcome for an unknown seq records none of its outcomes."""
        records = journal.record_decisions([decision(1), decision(2)])
        with pytest.raises(StoreError, match="no decision has that seq"):
            journal.record_outcomes([posted(records[0].seq, 1), posted(99, 9),
                                     posted(records[1].seq, 2)])
        assert [r.state for r in journal.records()] == ["decided", "decided"]
        assert journal.verify().entries == 2

    def test_outcome_cannot_name_an_outcome(self, journal: Journal) -> None:
        """decision_seq must be a decision's seq, not an outcome's."""
        [record] = journal.record_decisions([decision(1)])
        journal.record_outcomes([failed(record.seq, 1)])
        with pytest.raises(StoreError, match="no decision has that seq"):
            journal.record_outcomes([posted(record.seq + 1, 1)])

    def test_failure_mid_batch_writes_nothing(self, journal: Journal,
                                              harness: Harness) -> None:
        """A storage failure half-way through an outcome batch records none of it."""
        records = journal.record_decisions([decision(1), decision(2), decision(3)])
        with harness.failing_on(3), pytest.raises((StoreError, InjectedFailure)):
            journal.record_outcomes([posted(r.seq, r.item_id) for r in records])
        assert journal.count_by_state()["posted"] == 0
        journal.record_outcomes([posted(r.seq, r.item_id) for r in records])
        assert journal.count_by_state()["posted"] == 3
        assert journal.verify().ok

    def test_empty_batch_records_nothing(self, journal: Journal) -> None:
        """An empty outcome batch is a no-op."""
        journal.record_outcomes([])
        assert journal.verify().entries == 0


class TestLookup:
    def test_unknown_ids_are_absent(self, journal: Journal) -> None:
        """Ids never decided are not in the answer."""
        journal.record_decisions([decision(1)])
        assert set(journal.lookup([1, 2, 3], {"enforce"})) == {1}

    def test_first_content_hash_is_the_first_decision_in_any_mode(self,
                                                                  journal: Journal) -> None:
        """first_content_hash comes from the first decision ever, even a shadow one."""
        journal.record_decisions([decision(1, mode="shadow", content="original")])
        journal.record_decisions([decision(1, Action.HOLD, content="mutated")])
        view = journal.lookup([1], {"enforce"})[1]
        assert view.first_content_hash == content_hash("1:original")
        assert view.latest is not None
        assert view.latest.content_hash == content_hash("1:mutated")

    def test_latest_is_per_requested_modes(self, journal: Journal) -> None:
        """latest is the newest decision among the modes asked for."""
        journal.record_decisions([decision(1, "hold", rule="a")])
        journal.record_decisions([decision(1, rule="b", mode="shadow")])
        journal.record_decisions([decision(1, "hold", rule="c")])
        journal.record_decisions([decision(1, rule="d", mode="shadow")])

        def latest_rule(modes: set[str]) -> str | None:
            latest = journal.lookup([1], modes)[1].latest
            return latest.rule if latest else None

        assert latest_rule({"enforce"}) == "c"
        assert latest_rule({"shadow"}) == "d"
        assert latest_rule({"enforce", "shadow"}) == "d"
        assert latest_rule(set()) is None

    def test_latest_is_none_when_only_other_modes_decided(self, journal: Journal) -> None:
        """An id decided only in shadow mode still shows its first content hash."""
        journal.record_decisions([decision(1, mode="shadow")])
        view = journal.lookup([1], {"enforce"})[1]
        assert view.latest is None
        assert view.first_content_hash == content_hash("1:v1")

    def test_states(self, journal: Journal) -> None:
        """Each view carries its latest decision's state: decided, posted, failed, shadow."""
        records = journal.record_decisions([decision(1), decision(2), decision(3),
                                            decision(4, mode="shadow"), decision(5, "hold")])
        journal.record_outcomes([posted(records[1].seq, 2), failed(records[2].seq, 3)])
        views = journal.lookup(range(1, 6), {"enforce", "shadow"})
        assert {i: v.latest.state for i, v in views.items() if v.latest} == {
            1: "decided", 2: "posted", 3: "failed", 4: "shadow", 5: "decided"}

    def test_a_new_decision_supersedes_a_posted_one(self, journal: Journal) -> None:
        """The state is that of the latest decision, not of an older posted one."""
        [first] = journal.record_decisions([decision(1)])
        journal.record_outcomes([posted(first.seq, 1)])
        journal.record_decisions([decision(1, Action.HOLD, content="v2")])
        latest = journal.lookup([1], {"enforce"})[1].latest
        assert latest is not None
        assert (latest.seq, latest.state) == (3, "decided")

    def test_many_ids_across_chunks(self, journal: Journal) -> None:
        """Thousands of ids, most unknown and some repeated, are answered in one call."""
        journal.record_decisions([decision(i) for i in range(0, 3000, 2)])
        views = journal.lookup([*range(3000), 4, 4, 6], {"enforce"})
        assert set(views) == set(range(0, 3000, 2))
        assert all(v.latest is not None and v.latest.item_id == i for i, v in views.items())


class TestApprovalsSince:
    def test_enforced_approvals_at_or_after_since(self, journal: Journal,
                                                  clock: FakeClock) -> None:
        """Only enforce-mode approvals from ``since`` on count, whatever their state."""
        [old] = journal.record_decisions([decision(1)])
        clock.advance(hours=1)
        records = journal.record_decisions([
            decision(2, amount_text="7"), decision(3, mode="shadow"), decision(4, "reject"),
            decision(5, "hold"), decision(6, chain_id="195", to_address="TXyz", amount_text="1")])
        journal.record_outcomes([posted(old.seq, 1), failed(records[0].seq, 2)])
        rows = journal.approvals_since(T0 + timedelta(hours=1))
        assert rows == [
            ApprovalRow("56", "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8",
                        "0x1111111111111111111111111111111111111111", "7",
                        T0 + timedelta(hours=1)),
            ApprovalRow("195", "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8", "TXyz", "1",
                        T0 + timedelta(hours=1)),
        ]
        assert len(journal.approvals_since(T0)) == 3

    def test_naive_since_is_refused(self, journal: Journal) -> None:
        """A naive datetime is ambiguous and refused."""
        with pytest.raises(ValueError, match="naive"):
            journal.approvals_since(T0.replace(tzinfo=None))


class TestRecords:
    @pytest.fixture
    def filled(self, journal: Journal, clock: FakeClock) -> Journal:
        for item_id, action in enumerate(["approve", "reject", "hold", "approve"], start=1):
            journal.record_decisions([decision(item_id, action)])
            clock.advance(minutes=10)
        return journal

    def test_all_oldest_first(self, filled: Journal) -> None:
        """Without filters every decision comes, oldest first, outcomes not included."""
        filled.record_outcomes([posted(1, 1)])
        records = list(filled.records())
        assert [r.item_id for r in records] == [1, 2, 3, 4]
        assert records[0].state == "posted"

    def test_since_action_and_limit(self, filled: Journal) -> None:
        """since, action and limit filter and cut the list."""
        assert [r.item_id for r in filled.records(since=T0 + timedelta(minutes=10))] == [2, 3, 4]
        assert [r.item_id for r in filled.records(action=Action.APPROVE)] == [1, 4]
        assert [r.item_id for r in filled.records(limit=2)] == [1, 2]
        assert list(filled.records(limit=0)) == []
        assert [r.item_id for r in filled.records(since=T0 + timedelta(minutes=5),
                                                  action=Action.APPROVE, limit=5)] == [4]

    def test_negative_limit_is_refused(self, filled: Journal) -> None:
        """A negative limit is a programming error."""
        with pytest.raises(ValueError, match="negative"):
            filled.records(limit=-1)


class TestVerifyAndCounts:
    def test_empty_journal_verifies(self, journal: Journal) -> None:
        """A journal with no entries is a valid chain of zero entries."""
        assert journal.verify() == journal.verify().__class__(ok=True, entries=0)

    def test_good_chain_verifies(self, journal: Journal) -> None:
        """Decisions and outcomes together form one valid chain."""
        records = journal.record_decisions([decision(i) for i in range(5)])
        journal.record_outcomes([posted(r.seq, r.item_id) for r in records[:2]])
        result = journal.verify()
        assert (result.ok, result.entries, result.first_bad_seq, result.problem) == (
            True, 7, None, None)

    def test_gone_settles_a_decided_record(self, journal: Journal) -> None:
        """A ``gone`` outcome settles a decided (or failed) record; it can still be posted
        later if the item comes back, and it counts as ``gone``."""
        records = journal.record_decisions([decision(1), decision(2)])
        journal.record_outcomes([NewOutcome(records[0].seq, 1, "gone", None, "left the list"),
                                 failed(records[1].seq, 2)])
        journal.record_outcomes([NewOutcome(records[1].seq, 2, "gone", None, "left the list")])
        states = {r.item_id: r.state for r in journal.records()}
        assert states == {1: "gone", 2: "gone"}
        assert journal.count_by_state()["gone"] == 2
        journal.record_outcomes([posted(records[0].seq, 1)])
        assert {r.item_id: r.state for r in journal.records()}[1] == "posted"

    def test_count_by_state(self, journal: Journal) -> None:
        """Decisions are counted per state, every state present."""
        assert journal.count_by_state() == dict.fromkeys(STATES, 0)
        records = journal.record_decisions([decision(1), decision(2), decision(3),
                                            decision(4, mode="shadow")])
        journal.record_outcomes([posted(records[0].seq, 1), failed(records[1].seq, 2)])
        assert journal.count_by_state() == {"decided": 1, "posted": 1, "failed": 1,
                                            "gone": 0, "shadow": 1}


class TestLifecycle:
    def test_closed_journal_refuses_calls(self, journal: Journal) -> None:
        """Every call on a closed journal raises StoreError."""
        journal.close()
        journal.close()
        with pytest.raises(StoreError, match="not open"):
            journal.lookup([1], {"enforce"})
        with pytest.raises(StoreError, match="not open"):
            journal.record_decisions([decision(1)])
        with pytest.raises(StoreError, match="not open"):
            journal.records()

    def test_open_twice_is_harmless(self, journal: Journal) -> None:
        """Opening an open journal does nothing."""
        journal.record_decisions([decision(1)])
        journal.open()
        assert journal.verify().entries == 1

    def test_survives_close_and_reopen(self, journal: Journal, harness: Harness) -> None:
        """What was recorded is there after the journal is closed and opened again."""
        records = journal.record_decisions([decision(1), decision(2, mode="shadow")])
        journal.record_outcomes([posted(records[0].seq, 1)])
        again = harness.reopen(journal)
        try:
            assert again.verify().entries == 3
            assert [r.state for r in again.records()] == ["posted", "shadow"]
            [more] = again.record_decisions([decision(3)])
            assert more.seq == 4
            assert again.verify().ok
        finally:
            again.close()

    def test_satisfies_the_protocol(self, journal: Journal) -> None:
        """Every store is a Journal."""
        assert isinstance(journal, Journal)


class TestThroughput:
    def test_ten_thousand_decisions_then_outcomes(self, journal: Journal,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        """10,000 decisions in one batch, then their outcomes: timed for the report only."""
        batch = [decision(i) for i in range(10_000)]
        started = time.perf_counter()
        records = journal.record_decisions(batch)
        decided = time.perf_counter()
        outcomes = [posted(r.seq, r.item_id) for r in records]
        outcomes_built = time.perf_counter()
        journal.record_outcomes(outcomes)
        posted_at = time.perf_counter()
        views = journal.lookup(range(10_000), {"enforce"})
        looked = time.perf_counter()
        assert len(views) == 10_000
        assert journal.count_by_state()["posted"] == 10_000
        assert sum(1 for _ in journal.records()) == 10_000
        assert journal.verify().entries == 20_000
        with capsys.disabled():
            print(f"\n[{type(journal).__name__}] 10,000 decisions {decided - started:.3f}s, "
                  f"outcomes {posted_at - outcomes_built:.3f}s, lookup {looked - posted_at:.3f}s")
