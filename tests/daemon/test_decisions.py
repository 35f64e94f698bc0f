"""The real daemon against the sandbox: decisions match the policy, every ``data``
verifies, collections happen for each ``isMain`` (DESIGN sections 2 and 4)."""

from __future__ import annotations

from cosigner.models import Action
from tests.daemon.conftest import (
    LIMIT,
    MAX_COUNT,
    POLICY_NAME,
    SANCTIONED,
    Rig,
    address,
    item,
)


class TestDecisionsMatchThePolicy:
    """Approvals, rejections and holds of one cycle are exactly what the policy says."""

    async def test_approvals_rejections_and_holds_are_posted_as_decided(self, rig: Rig) -> None:
        """Approves are posted with status 1, rejects with status 2, holds not at all."""
        approve_a, reject, hold, approve_b = await rig.add(
            item("5"), item("5", to=SANCTIONED), item("500"), item("100"))
        daemon = rig.build()

        assert await daemon.run_once() == 0

        received = await rig.received()
        assert sorted((d["id"], d["status"]) for d in received) == sorted(
            [(approve_a, 1), (reject, 2), (approve_b, 1)])
        assert all(d["verified"] is True and d["code"] == 200 for d in received)
        assert await rig.statuses() == {approve_a: "approved", reject: "rejected",
                                        hold: "pending", approve_b: "approved"}
        latest = rig.latest()
        assert {i: (r.action, r.rule, r.state) for i, r in latest.items()} == {
            approve_a: (Action.APPROVE, "small", "posted"),
            reject: (Action.REJECT, "block-sanctioned", "posted"),
            hold: (Action.HOLD, "<default>", "decided"),
            approve_b: (Action.APPROVE, "small", "posted"),
        }
        assert latest[hold].reasons == ("default",)
        assert {r.policy_name for r in latest.values()} == {POLICY_NAME}
        assert {r.policy_sha256 for r in latest.values()} == {
            daemon.pipeline.state.policy.sha256}

    async def test_the_signed_fields_are_the_items_own(self, rig: Rig) -> None:
        """The approve body carries the listed fields, amount text exactly as listed."""
        (item_id,) = await rig.add(item("4.10", to=address(0x33)))

        assert await rig.build().run_once() == 0

        (received,) = await rig.received()
        body = received["body"]
        assert {k: body[k] for k in ("id", "from", "to", "value", "chainId", "status")} == {
            "id": item_id, "from": item()["fromAddress"], "to": address(0x33),
            "value": "4.10", "chainId": "56", "status": 1}
        assert received["verified"] is True

    async def test_the_limit_turns_the_next_approval_into_a_hold(self, rig: Rig) -> None:
        """With max_count 3, the fourth approval of the window is held as limit:<name>."""
        ids = await rig.add(*(item("1", to=address(0x40 + n)) for n in range(MAX_COUNT + 1)))

        assert await rig.build().run_once() == 0

        latest = rig.latest()
        assert [latest[i].action for i in ids] == [Action.APPROVE] * MAX_COUNT + [Action.HOLD]
        assert latest[ids[-1]].rule == "small"
        assert latest[ids[-1]].reasons == (f"limit:{LIMIT}",)
        assert sorted(d["id"] for d in await rig.received()) == ids[:MAX_COUNT]

    async def test_the_limit_persists_across_restarts(self, rig: Rig) -> None:
        """A new daemon on the same journal counts the approvals made before it."""
        first = await rig.add(*(item("1", to=address(0x50 + n)) for n in range(MAX_COUNT)))
        assert await rig.build().run_once() == 0
        (late,) = await rig.add(item("1", to=address(0x60)))

        assert await rig.build().run_once() == 0

        assert rig.latest()[late].reasons == (f"limit:{LIMIT}",)
        assert sorted(d["id"] for d in await rig.received()) == first

    async def test_malformed_items_are_held_with_their_reason(self, rig: Rig) -> None:
        """Malformed items are never evaluated: each is held as invalid:<reason>."""
        ids = await rig.add(
            item("5", to=address(0x70) + "\u200b"),
            item("-3"),
            item("5", chain="999"),
            item("1.0000000000000000001"),
            item("5", to="0x1234"),
            {"fromAddress": item()["fromAddress"], "amount": "5", "chainId": "56"},
            item("5", to=address(0x71).lower().replace("0x", "0X")),
        )
        daemon = rig.build()

        assert await daemon.run_once() == 0

        latest = rig.latest()
        assert [(latest[i].action, latest[i].rule, latest[i].reasons) for i in ids] == [
            (Action.HOLD, "<invalid>", (f"invalid:{reason}",)) for reason in (
                "address_chars", "amount_not_positive", "unknown_chain", "amount_precision",
                "address_format", "missing_field", "address_format")]
        assert await rig.received() == []
        registry = daemon.metrics.registry
        assert registry.get_sample_value("cosigner_invalid_items_total",
                                         {"reason": "address_format"}) == 2
        assert registry.get_sample_value("cosigner_invalid_items_total",
                                         {"reason": "missing_field"}) == 1

    async def test_an_unchanged_hold_is_not_recorded_again(self, rig: Rig) -> None:
        """An item held for the same reasons in a later cycle adds no journal record."""
        (hold,) = await rig.add(item("500"))
        daemon = rig.build()

        for _ in range(3):
            assert (await daemon.pipeline.poll()).ok
        await daemon.close()

        assert len(rig.records()[hold]) == 1


class TestCollections:
    """A collection round posts one signed collect per configured isMain."""

    async def test_each_is_main_is_collected_with_valid_data(self, rig: Rig) -> None:
        """isMain 1 and 0 are both collected and the sandbox verifies both."""
        daemon = rig.build()

        assert await daemon.run_once() == 0

        collections = await rig.admin.collections()
        assert sorted(c["isMain"] for c in collections) == [0, 1]
        assert all(c["verified"] is True and c["code"] == 200 for c in collections)
        registry = daemon.metrics.registry
        for is_main in ("1", "0"):
            assert registry.get_sample_value("cosigner_collections_total",
                                             {"is_main": is_main, "outcome": "ok"}) == 1

    async def test_only_the_configured_is_main_is_collected(self, rig: Rig) -> None:
        """COSIGNER_COLLECT_IS_MAIN=1 collects the main wallet only."""
        daemon = rig.build(rig.with_settings(collect_is_main="1"))

        assert await daemon.run_once() == 0

        assert [c["isMain"] for c in await rig.admin.collections()] == [1]
