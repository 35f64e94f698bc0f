"""``/metrics``, ``/healthz`` and ``/readyz`` of a running daemon (DESIGN section 7)."""

from __future__ import annotations

import time

import httpx

from cosigner import __version__
from cosigner.daemon.service import Daemon
from tests.conftest import SHARD_PASSWORD
from tests.daemon.conftest import (
    API_SECRET,
    LIMIT,
    MAX_COUNT,
    POLICY_NAME,
    SANCTIONED,
    Rig,
    address,
    item,
    sample,
    samples,
    wait_for,
)
from tests.daemon.test_service import running

#: Every metric of DESIGN section 7, as the family names the parser reports.
SECTION_7 = {
    "cosigner_decisions", "cosigner_invalid_items", "cosigner_item_mutations",
    "cosigner_posts", "cosigner_api_request_duration_seconds", "cosigner_api_errors",
    "cosigner_pending_items", "cosigner_poll_duration_seconds",
    "cosigner_last_poll_success_timestamp_seconds", "cosigner_collections",
    "cosigner_last_collect_success_timestamp_seconds", "cosigner_policy_info",
    "cosigner_policy_reloads", "cosigner_limit_usage_ratio",
    "cosigner_shard_cert_expiry_timestamp_seconds", "cosigner_leader", "cosigner_build_info",
    "cosigner_mode", "cosigner_paused", "cosigner_poll_interval_seconds",
    "cosigner_collect_interval_seconds", "cosigner_decided_unposted_items",
}


async def get(daemon: Daemon, path: str) -> httpx.Response:
    assert daemon.http is not None
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.get(f"http://127.0.0.1:{daemon.http.port}{path}")


class TestMetricsAfterARun:
    """After one poll and one collection, /metrics shows exactly what that run did."""

    async def test_every_metric_has_the_values_of_the_run(self, rig: Rig) -> None:
        """Decisions, invalid items, mutations, posts, API timings and errors, the poll and
        collection gauges, policy, limits, shard expiry and leadership all match the run."""
        (mutated,) = await rig.add(item("500"))
        assert await rig.build().run_once() == 0   # held; then its content changes
        await rig.admin.change_item(mutated, {"amount": "5"})
        approvals = await rig.add(*(item("1", to=address(0xC0 + n))
                                    for n in range(MAX_COUNT + 1)))
        await rig.add(item("5", to=SANCTIONED), item("500"), item("-1"), item("5", chain="7"))
        # One 5xx on the first pending page: retried, so the poll succeeds, but counted.
        await rig.admin.set_faults({"errorRate": 1.0, "endpoints": ["pending"], "limit": 1})
        daemon = rig.build(rig.with_settings(poll_interval=30.0, collect_interval=30.0))
        started = time.time()

        async with running(daemon):
            await wait_for(lambda: daemon.polls == 1 and daemon.collections == 1,
                           what="the first poll and collection")
            assert await daemon.reload_policy("test") is True  # unchanged
            response = await get(daemon, "/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        values = samples(text)
        families = {name for name, _ in values} | {
            line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert {f.removesuffix("_total") for f in families} >= SECTION_7

        def v(metric: str, /, **labels: str) -> float | None:
            return sample(values, metric, **labels)

        assert v("cosigner_decisions_total", action="approve", rule="small", chain="56") == 3
        assert v("cosigner_decisions_total", action="hold", rule="small", chain="56") == 1
        assert v("cosigner_decisions_total", action="reject", rule="block-sanctioned",
                 chain="56") == 1
        assert v("cosigner_decisions_total", action="hold", rule="<default>", chain="56") == 1
        assert v("cosigner_decisions_total", action="hold", rule="<invalid>", chain="56") == 1
        assert v("cosigner_decisions_total", action="hold", rule="<invalid>",
                 chain="unknown") == 1
        assert sum(val for (name, _), val in values.items()
                   if name == "cosigner_decisions_total") == 8
        assert v("cosigner_invalid_items_total", reason="amount_not_positive") == 1
        assert v("cosigner_invalid_items_total", reason="unknown_chain") == 1
        assert v("cosigner_item_mutations_total") == 1
        assert v("cosigner_posts_total", endpoint="approve", outcome="ok") == 4
        assert v("cosigner_posts_total", endpoint="collect", outcome="ok") == 2
        assert v("cosigner_api_request_duration_seconds_count", endpoint="pending") == 2
        assert v("cosigner_api_request_duration_seconds_count", endpoint="approve") == 4
        assert v("cosigner_api_request_duration_seconds_count", endpoint="collect") == 2
        assert v("cosigner_api_errors_total", endpoint="pending", kind="http_status") == 1
        assert v("cosigner_pending_items") == 1 + len(approvals) + 4
        assert v("cosigner_poll_duration_seconds_count") == 1
        last_poll = v("cosigner_last_poll_success_timestamp_seconds")
        assert last_poll is not None
        assert started <= last_poll <= time.time()
        assert v("cosigner_collections_total", is_main="1", outcome="ok") == 1
        assert v("cosigner_collections_total", is_main="0", outcome="ok") == 1
        last_collect = v("cosigner_last_collect_success_timestamp_seconds")
        assert last_collect is not None
        assert started <= last_collect <= time.time()
        policy = daemon.pipeline.state.policy
        assert v("cosigner_policy_info", name=POLICY_NAME, sha256=policy.sha256) == 1
        assert [k for k in values if k[0] == "cosigner_policy_info"] == [
            ("cosigner_policy_info",
             frozenset({("name", POLICY_NAME), ("sha256", policy.sha256)}))]
        assert v("cosigner_policy_reloads_total", outcome="unchanged") == 1
        assert v("cosigner_limit_usage_ratio", limit=LIMIT, per="chain") == 3 / MAX_COUNT
        assert v("cosigner_shard_cert_expiry_timestamp_seconds") == (
            rig.shard.certificate.not_valid_after_utc.timestamp())
        assert v("cosigner_leader") == 1
        assert v("cosigner_build_info", version=__version__) == 1
        assert v("cosigner_mode", mode="enforce") == 1
        assert v("cosigner_mode", mode="shadow") == 0
        assert v("cosigner_paused") == 0
        assert v("cosigner_poll_interval_seconds") == 30.0
        assert v("cosigner_collect_interval_seconds") == 30.0
        assert v("cosigner_api_errors_total", endpoint="approve", kind="timeout") == 0
        assert v("cosigner_policy_reloads_total", outcome="error") == 0
        start = v("process_start_time_seconds")
        assert start is not None
        assert start <= started

    async def test_no_secret_is_rendered(self, rig: Rig) -> None:
        """Neither the API secret, the shard password nor the database URL appear."""
        await rig.add(item("5"))
        daemon = rig.build()
        async with running(daemon):
            await wait_for(lambda: daemon.polls >= 1, what="the first poll")
            text = (await get(daemon, "/metrics")).text
            ready = (await get(daemon, "/readyz")).text
        for secret in (API_SECRET, SHARD_PASSWORD, str(rig.db_path)):
            assert secret not in text + ready

    async def test_limit_usage_is_the_share_of_the_window_used(self, rig: Rig) -> None:
        """Two of three approvals used: the limit's gauge is 2/3."""
        await rig.add(item("1", to=address(0xD0)), item("1", to=address(0xD1)))
        daemon = rig.build()

        assert await daemon.run_once() == 0

        assert daemon.metrics.registry.get_sample_value(
            "cosigner_limit_usage_ratio", {"limit": LIMIT, "per": "chain"}) == 2 / MAX_COUNT

    async def test_an_api_error_kind_is_counted_per_endpoint(self, rig: Rig) -> None:
        """A non-JSON collect answer is counted as a protocol error of collect."""
        await rig.admin.set_faults({"nonJsonRate": 1.0, "endpoints": ["collect"]})
        daemon = rig.build()

        assert await daemon.run_once() == 1

        registry = daemon.metrics.registry
        assert registry.get_sample_value(
            "cosigner_api_errors_total", {"endpoint": "collect", "kind": "protocol"}) == 2
        assert registry.get_sample_value(
            "cosigner_collections_total", {"is_main": "1", "outcome": "error"}) == 1
        assert registry.get_sample_value(
            "cosigner_last_collect_success_timestamp_seconds") == 0


class TestHealth:
    """/healthz says the process is alive; /readyz waits for a successful poll."""

    async def test_healthz_and_readyz_after_the_first_poll(self, rig: Rig) -> None:
        """Both answer 200 once a poll succeeded; readyz lists its checks."""
        daemon = rig.build()
        async with running(daemon):
            await wait_for(lambda: daemon.polls >= 1, what="the first poll")
            health = await get(daemon, "/healthz")
            ready = await get(daemon, "/readyz")
        assert health.status_code == 200
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "role": "leader", "checks": {
            "policy_in_force": True, "shard_usable": True, "journal_writable": True,
            "lock_held": True, "recent_poll": True}}

    async def test_readyz_is_503_until_a_poll_succeeds(self, rig: Rig) -> None:
        """While the pending list fails, readyz is 503 (healthz 200); then it turns 200."""
        await rig.admin.set_faults({"errorRate": 1.0, "endpoints": ["pending"]})
        daemon = rig.build(client_retries=1)
        async with running(daemon):
            await wait_for(lambda: daemon.polls >= 2, what="two failed polls")
            not_ready = await get(daemon, "/readyz")
            alive = await get(daemon, "/healthz")
            await rig.admin.clear_faults()
            await wait_for(lambda: daemon.pipeline.last_poll_ok is not None,
                           what="a successful poll")
            ready = await get(daemon, "/readyz")
        assert (not_ready.status_code, alive.status_code, ready.status_code) == (503, 200, 200)
        assert not_ready.json()["checks"]["recent_poll"] is False

    async def test_readyz_goes_stale_when_polls_stop_succeeding(self, rig: Rig) -> None:
        """A last success older than twice the poll interval is not ready any more."""
        daemon = rig.build(client_retries=1)
        async with running(daemon):
            await wait_for(lambda: daemon.pipeline.last_poll_ok is not None,
                           what="a successful poll")
            await rig.admin.set_faults({"errorRate": 1.0, "endpoints": ["pending"]})
            await wait_for(lambda: not daemon.readiness()["recent_poll"], within=5,
                           what="readiness to go stale")
            stale = await get(daemon, "/readyz")
        assert stale.status_code == 503
