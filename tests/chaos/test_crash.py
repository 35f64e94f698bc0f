"""Suite 2, crash and restart: ``kill -9`` of a real daemon at random points under a backlog.

Each round starts ``cosigner run`` against the sandbox (its clock moved forwards or
back in some rounds, the sandbox's moved with it) and kills it with SIGKILL right
after a randomly chosen point: an item decided (after the journal write), an item
posted (mid-post), a collection, or a random moment.  Between rounds more items
arrive.  After every kill no process of the daemon may survive (the signing worker
and its resource tracker included).  At the end a last daemon drains the backlog,
and the provider's received decisions are checked against the journal: no id
accepted twice, no decision lost or posted without a record, no approval outside
the policy, the limit never exceeded (max window usage / limit <= 1.0).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.chaos.checks import verdict
from tests.chaos.conftest import LONG, Figures, World, backlog, scale
from tests.chaos.daemons import DaemonProcess, init_journal, journal_rows, journal_verifies
from tests.chaos.procs import LINUX, subreaper

POINTS = ("item.decided", "item.posted", "collect.done", "moment")
OFFSETS = (0.0, 0.0, 1800.0, -1800.0, 2400.0, -600.0)  # seconds; the window is 1 h


def _drain(world: World, env: dict[str, str], within: float = 240.0) -> float:
    """Run a daemon until every pending item is decided and none that is still pending
    waits for its approve/reject to be posted; the seconds it took."""
    started = time.monotonic()
    daemon = DaemonProcess(env, world.tmp)
    try:
        # Its SIGTERM handler is in place once started: stopping it earlier (a backlog
        # already drained) would end it by the signal's default action (-15).
        daemon.wait_event("daemon.started", within=120)
        deadline = started + within
        while time.monotonic() < deadline:
            if daemon.proc.poll() is not None:
                raise AssertionError(f"the daemon exited: {daemon.output()[-2000:]}")
            rows = journal_rows(env, world.tmp)
            latest = {int(r["item_id"]): r for r in rows if r["mode"] == "enforce"}
            pending = world.admin.pending_ids()
            waiting = [i for i in pending
                       if i not in latest or latest[i]["action"] != "hold"]
            if not waiting:
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"the backlog was not drained in time: {len(waiting)} waiting")
    finally:
        assert daemon.stop() == 0


def lost_decisions(world: World, rows: list[dict[str, Any]]) -> int:
    """Approve/reject records the provider never applied (the item is not in the state the
    record says): a decision lost."""
    status = {int(i["item"]["id"]): i["status"] for i in world.admin.items()}
    want = {"approve": "approved", "reject": "rejected"}
    return sum(1 for r in rows if r["mode"] == "enforce" and r["action"] in want
               and status.get(int(r["item_id"])) != want[r["action"]])


@pytest.mark.timeout(3600)
def test_kill_9_at_random_points(world: World, figures: Figures) -> None:
    """Kills under a backlog (10 short, 50 long): nothing twice, nothing lost, within limits."""
    rng = random.Random(20261127)
    kills = scale(10, 50)
    env = world.env()
    init_journal(env, world.tmp)
    world.admin.add_items(backlog(scale(450, 900), rng))
    orphans: list[int] = []
    with_worker = 0  # kills while the daemon had child processes (the signing worker)
    exited: list[str] = []  # daemons that ended before their kill: the log's tail
    hit: dict[str, int] = dict.fromkeys(POINTS, 0)
    with subreaper() if LINUX else _nothing():
        for round_ in range(kills):
            offset = OFFSETS[round_ % len(OFFSETS)] if round_ >= 2 else 0.0
            world.clock.offset_s = offset
            point = rng.choice(POINTS)
            daemon = DaemonProcess(env, world.tmp, offset_s=offset)
            if point == "moment":
                daemon.wait_event("daemon.started", within=60)
                time.sleep(rng.uniform(0.0, 1.5))  # a random moment, not an assertion
                reached = daemon.proc.poll() is None
            else:
                reached = daemon.wait_event(point, rng.randint(1, 5), within=20)
            if reached:
                hit[point] += 1
            if daemon.proc.poll() is not None:  # it must still run: only we end it
                exited.append(daemon.output()[-1000:])
            orphans += daemon.kill9()
            with_worker += daemon.children_at_kill > 0
            if round_ % 3 == 2:
                world.admin.add_items(backlog(rng.randint(5, 40), rng))
        world.clock.offset_s = 0.0
        recovery = _drain(world, env)
    rows = journal_rows(env, world.tmp)
    result = verdict(world.admin.decisions(), rows)
    lost = lost_decisions(world, rows)
    figures.add("crash", kills=kills, **{f"kills_after_{p.replace('.', '_')}": n
                                         for p, n in hit.items()},
                orphaned_processes=len(orphans), kills_with_worker=with_worker,
                exited_before_kill=len(exited),
                accepted=result.accepted,
                double_posts=result.double_posts, outside_policy=result.outside_policy,
                unrecorded_posts=result.unrecorded_posts, lost_decisions=lost)
    figures.high("crash", max_limit_ratio=result.max_limit_ratio,
                 drain_seconds=round(recovery, 2))
    result.assert_clean()
    assert orphans == []
    assert exited == [], exited
    assert lost == 0
    assert journal_verifies(env, world.tmp)
    assert result.accepted > 0
    if LONG:
        assert all(hit.values()), hit


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
