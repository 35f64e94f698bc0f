"""Whole-class checks of the decision contracts the attack broke (issue 10, defects 1, 2, 5,
6), run against the real daemon and the sandbox.  They are written to DESIGN.md's
contracts; every one of them failed before the fixes of issue 10 landed.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx

from cosigner.cli.daemon import daemon_spec
from cosigner.daemon.build import BuildOptions, build_daemon
from cosigner.daemon.pipeline import DecisionEvent
from tests.chaos.conftest import HOT, Figures, World, address, backlog
from tests.chaos.daemons import init_journal, journal_rows


def _daemon(world: World, **options: Any) -> Any:
    opts: dict[str, Any] = {"install_signals": False, "configure_logs": False,
                            "watch_interval": 0}
    opts.update(options)
    spec = daemon_spec(world.settings(pause_file=world.tmp / "pause"))
    return build_daemon(spec, BuildOptions(**opts))


async def _close(daemon: Any) -> None:
    daemon.request_stop()
    await daemon.close()


async def test_shadow_posts_nothing_not_even_recorded_decisions(world: World,
                                                                figures: Figures) -> None:
    """An enforce run whose approves never arrived leaves ``decided`` records; a shadow run
    then posts nothing: no decision, no re-post, no collection."""
    await asyncio.to_thread(init_journal, world.env(), world.tmp)
    await asyncio.to_thread(world.admin.add_items, backlog(10, random.Random(1)))
    await asyncio.to_thread(world.admin.set_faults, dropRate=1.0, endpoints=["approve"])
    enforce = _daemon(world)
    try:
        await enforce.poll_job()
    finally:
        await _close(enforce)
    await asyncio.to_thread(world.admin.clear_faults)
    shadow = _daemon(world, shadow=True)
    try:
        await shadow.poll_job()
        await shadow.collect_job()
    finally:
        await _close(shadow)
    accepted = [d for d in await asyncio.to_thread(world.admin.decisions) if d["code"] == 200]
    collections = await asyncio.to_thread(world.admin.collections)
    figures.add("contracts", shadow_posts=len(accepted) + len(collections))
    assert accepted == []
    assert collections == []


async def test_pause_stops_a_chunk_already_posting(world: World, figures: Figures) -> None:
    """The pause file touched after 20 posts of a backlog: at most the posts already in
    flight complete; nothing else goes out."""
    await asyncio.to_thread(init_journal, world.env(), world.tmp)
    items = [{"fromAddress": HOT, "toAddress": address(n + 1), "amount": "1",
              "chainId": "56"} for n in range(300)]
    await asyncio.to_thread(world.admin.add_items, items)
    await asyncio.to_thread(world.admin.set_faults, latencyMs=20, endpoints=["approve"])
    pause = world.tmp / "pause"
    posted: list[bool] = []  # per posted event: was the pause file there already?

    def listen(event: DecisionEvent) -> None:
        if event.state == "posted":
            posted.append(pause.exists())
            if len(posted) == 20:
                pause.touch()

    daemon = _daemon(world, listeners=[listen])
    try:
        await daemon.poll_job()
    finally:
        await _close(daemon)
    after = sum(posted)
    figures.add("contracts", posts_after_pause=after)
    assert after <= world.settings().concurrency, f"{after} posts after the pause"


async def test_same_id_twice_in_one_snapshot_is_held(world: World, figures: Figures) -> None:
    """Two contents under one id in one snapshot: every copy held, counted as a mutation."""
    await asyncio.to_thread(init_journal, world.env(), world.tmp)
    approves: list[dict[str, Any]] = []
    first = {"id": 77, "fromAddress": HOT, "toAddress": address(5), "amount": "5",
             "chainId": "56"}
    second = {**first, "toAddress": address(6)}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/pending"):
            return httpx.Response(200, json={"code": 200, "message": "Success", "data": {
                "total": 2, "list": [first, second]}})
        approves.append(json.loads(request.content))
        return httpx.Response(200, json={"code": 200, "message": "Success", "data": None})

    daemon = _daemon(world, transport=httpx.MockTransport(handle))
    try:
        await daemon.poll_job()
        metrics = daemon.metrics
    finally:
        await _close(daemon)
    figures.add("contracts", same_id_approvals=sum(1 for a in approves if a["status"] == 1))
    assert [a for a in approves if a["status"] == 1] == []
    assert _counter(metrics, "cosigner_item_mutations_total") >= 1


async def test_decided_records_of_items_that_left_the_list_are_settled(
        world: World, figures: Figures) -> None:
    """Approves whose answers were lost while the provider acted: once the items leave the
    pending list their records are ``gone`` (outcome unknown), not ``decided`` for good."""
    env = world.env()
    await asyncio.to_thread(init_journal, env, world.tmp)
    await asyncio.to_thread(world.admin.add_items, backlog(10, random.Random(2)))
    await asyncio.to_thread(world.admin.set_faults, lostAnswerRate=1.0, endpoints=["approve"])
    daemon = _daemon(world)
    try:
        await daemon.poll_job()
        await asyncio.to_thread(world.admin.clear_faults)
        await daemon.poll_job()
    finally:
        await _close(daemon)
    rows = await asyncio.to_thread(journal_rows, env, world.tmp)
    stuck = [r for r in rows if r["action"] != "hold" and r["state"] == "decided"]
    figures.add("contracts", decided_forever=len(stuck))
    assert stuck == []
    assert any(r["state"] == "gone" for r in rows)


def _counter(metrics: Any, name: str) -> float:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    text = generate_latest(metrics.registry).decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)
