"""High availability on PostgreSQL (issue 9): several ``cosigner run`` processes against
one sandbox and one PostgreSQL journal, a backlog arriving over time.

Needs ``COSIGNER_TEST_POSTGRES_URL`` (skips with the reason without it, fails under
``COSIGNER_REQUIRE_ALL=1``); every test gets its own scratch database.  A "server
restart" is simulated by terminating every session of the test's database (the server is
shared with other test runs, so it is never restarted from here).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from pydantic import SecretStr

from cosigner.models import Action
from cosigner.store.postgres import PostgresJournal
from tests.daemon.conftest import (
    COSIGNER,
    REPO,
    SANCTIONED,
    Rig,
    address,
    item,
    sample,
    samples,
    wait_for,
)
from tests.daemon.test_metrics import get
from tests.daemon.test_service import running
from tests.postgres import (
    drop_database,
    require_postgres,
    scratch_database,
    terminate_backends,
)

pytestmark = [pytest.mark.external_service, pytest.mark.slow, pytest.mark.timeout(240)]

# Read at import: the daemon fixtures clear every COSIGNER_* variable.
RESTART = os.environ.get("COSIGNER_TEST_PG_RESTART") == "1"
RETRY = 2.0          # COSIGNER_LEADER_RETRY in these tests
MAX_COUNT = 30       # the policy's approval limit
APPROVABLE = 40      # more than the limit: 10 of them must be held
REJECTED = 8         # sanctioned destinations

HA_POLICY = f"""\
version: 1
name: ha-test
default: hold
on_invalid: hold
on_limit: hold
chains:
  "56": {{name: bsc, address: evm, decimals: 18}}
lists:
  sanctioned: ["{SANCTIONED}"]
limits:
  - name: bsc-count
    chain: "56"
    window: 24h
    max_count: {MAX_COUNT}
    per: chain
rules:
  - name: block-sanctioned
    to: {{in: [sanctioned]}}
    action: reject
  - name: small
    chain: "56"
    amount: {{max: "100"}}
    action: approve
"""

# Runs the daemon with the election skipped (BuildOptions(election=False)): a test hook.
FORCED_RUNNER = """
import asyncio, sys
from cosigner.cli.daemon import daemon_spec
from cosigner.daemon.build import BuildOptions, build_daemon
from cosigner.settings import load_settings
sys.exit(asyncio.run(build_daemon(daemon_spec(load_settings()),
                                  BuildOptions(election=False)).run()))
"""


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


@dataclass
class Replica:
    """One daemon process and the JSON log events it wrote."""

    name: str
    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    killed_at: float | None = None

    async def read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def posted(self) -> list[tuple[float, int]]:
        return [(_ts(e), int(e["item_id"])) for e in self.named("item.posted")]

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def leads(self) -> bool:
        """Whether its log says it is the active leader now."""
        marks = [e["event"] for e in self.events
                 if e.get("event") in ("leader.active", "leader.lost", "leader.acquired")]
        return self.alive and bool(marks) and marks[-1] == "leader.active"


@dataclass
class Cluster:
    rig: Rig
    url: str
    replicas: list[Replica] = field(default_factory=list)

    async def start(self, count: int, *, forced: bool = False) -> None:
        # The pause file's default for a PostgreSQL journal is /var/lib/cosigner/PAUSE,
        # whose directory a test machine need not have (the daemon refuses to start then).
        env = self.rig.env(DATABASE_URL=self.url, LEADER_RETRY=str(RETRY), POLL_INTERVAL="0.3",
                           COLLECT_INTERVAL="1", CONCURRENCY="2",
                           PAUSE_FILE=self.rig.tmp / "PAUSE")
        env["PYTHONPATH"] = str(REPO)
        for n in range(count):
            argv = [sys.executable, "-c", FORCED_RUNNER] if forced else [str(COSIGNER), "run"]
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=self.rig.tmp, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            replica = Replica(f"r{n}", process)
            replica.reader = asyncio.create_task(replica.read())
            self.replicas.append(replica)

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.leads()]

    async def wait(self, condition: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not await _call(condition):
            for r in self.replicas:
                if r.process.returncode not in (None, -signal.SIGKILL):
                    pytest.fail(f"{r.name} exited {r.process.returncode}: {r.events[-5:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {within} s waiting for {what}; "
                            f"leaders {[r.name for r in self.leaders()]}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for r in self.replicas:
            if r.alive:
                with contextlib.suppress(ProcessLookupError):
                    r.process.send_signal(signal.SIGTERM)
        for r in self.replicas:
            try:
                await asyncio.wait_for(r.process.wait(), 15)
            except TimeoutError:
                r.process.kill()
                await r.process.wait()
            if r.reader is not None:
                await r.reader

    async def backlog(self, batches: list[list[dict[str, Any]]], every: float) -> list[int]:
        """Add the batches to the sandbox one after another, ``every`` seconds apart."""
        ids: list[int] = []
        for batch in batches:
            ids += await self.rig.add(*batch)
            await asyncio.sleep(every)
        return ids

    async def settled(self, expect_done: int) -> bool:
        """Whether ``expect_done`` items are approved or rejected in the sandbox."""
        statuses = await self.rig.statuses()
        return sum(1 for s in statuses.values() if s != "pending") >= expect_done

    def journal_records(self) -> dict[int, list[Any]]:
        journal = PostgresJournal(self.url)
        journal.open()
        try:
            assert journal.verify().ok
            out: dict[int, list[Any]] = {}
            for record in journal.records():
                out.setdefault(record.item_id, []).append(record)
            return out
        finally:
            journal.close()


async def _call(condition: Any) -> bool:
    result = condition()
    if not isinstance(result, bool):
        result = await result
    return bool(result)


def _batches() -> list[list[dict[str, Any]]]:
    """The backlog: approvable items (more than the limit) and sanctioned ones, mixed."""
    items = [item("5", to=address(0x30 + n % 20)) for n in range(APPROVABLE)]
    for n in range(REJECTED):
        items.insert(n * 5, item("7", to=SANCTIONED))
    return [items[i:i + 6] for i in range(0, len(items), 6)]


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """The test server (read before ``cosigner_env`` clears COSIGNER_* variables)."""
    return require_postgres()


@pytest.fixture
async def cluster(pg_admin: str, rig: Rig) -> AsyncIterator[Cluster]:
    rig.policy_path.write_text(HA_POLICY, encoding="utf-8")
    with _scratch(pg_admin) as url:
        PostgresJournal(url).init()
        world = Cluster(rig, url)
        try:
            yield world
        finally:
            await world.stop()


@contextlib.contextmanager
def _scratch(admin: str) -> Iterator[str]:
    os.environ.setdefault("COSIGNER_TEST_POSTGRES_URL", admin)
    with scratch_database("ha") as url:
        yield url


async def _check_outcome(cluster: Cluster) -> dict[str, Any]:
    """Every item posted at most once, approvals within the limit, no post without a
    record; returns the counts."""
    counts = await cluster.rig.post_counts()
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not twice, f"posted more than once: {twice}"
    statuses = await cluster.rig.statuses()
    approved = [i for i, s in statuses.items() if s == "approved"]
    rejected = [i for i, s in statuses.items() if s == "rejected"]
    assert len(approved) <= MAX_COUNT
    records = cluster.journal_records()
    for item_id in counts:
        verdicts = [r for r in records.get(item_id, []) if r.mode == "enforce"
                    and r.action in (Action.APPROVE, Action.REJECT)]
        assert len(verdicts) == 1, f"item {item_id} was posted with {len(verdicts)} verdicts"
    enforce_approvals = sum(1 for recs in records.values() for r in recs
                            if r.mode == "enforce" and r.action is Action.APPROVE)
    assert enforce_approvals <= MAX_COUNT
    return {"approved": len(approved), "rejected": len(rejected), "posts": sum(counts.values())}


class TestFailover:
    async def test_sigkill_of_the_leader_hands_over_without_double_posts(
            self, cluster: Cluster) -> None:
        """Three replicas, one leader at a time; SIGKILL of the leader mid-backlog makes
        another take over within 3 x COSIGNER_LEADER_RETRY; every item posted once, the
        limit held."""
        await cluster.start(3)
        await cluster.wait(lambda: len(cluster.leaders()) == 1, 30, "a leader")
        batches = _batches()
        feeding = asyncio.create_task(cluster.backlog(batches, every=0.4))
        first = cluster.leaders()[0]
        await cluster.wait(lambda: len(first.posted()) >= 5, 30, "the leader to post")
        first.process.send_signal(signal.SIGKILL)
        first.killed_at = time.time()
        await first.process.wait()
        await cluster.wait(lambda: len(cluster.leaders()) == 1, 6 * RETRY, "a new leader")
        second = cluster.leaders()[0]
        takeover = _ts(second.named("leader.active")[-1]) - first.killed_at
        await feeding
        total = APPROVABLE + REJECTED
        await cluster.wait(lambda: cluster.settled(MAX_COUNT + REJECTED), 60, "the backlog")
        await asyncio.sleep(1.0)  # a little longer: nothing more may be posted
        result = await _check_outcome(cluster)
        assert result == {"approved": MAX_COUNT, "rejected": REJECTED,
                          "posts": MAX_COUNT + REJECTED}
        assert sum(1 for s in (await cluster.rig.statuses()).values()
                   if s == "pending") == total - MAX_COUNT - REJECTED
        _one_leader_at_a_time(cluster)
        print(f"\ntakeover after SIGKILL: {takeover:.2f} s (retry {RETRY} s)")
        assert takeover <= 3 * RETRY

    async def test_terminated_lock_connection_stops_the_leader_before_another_posts(
            self, cluster: Cluster) -> None:
        """pg_terminate_backend on the leader's lock connection: it stops posting before
        any other replica posts anything, then recovers as a standby."""
        await cluster.start(3)
        await cluster.wait(lambda: len(cluster.leaders()) == 1, 30, "a leader")
        feeding = asyncio.create_task(cluster.backlog(_batches(), every=0.4))
        first = cluster.leaders()[0]
        await cluster.wait(lambda: len(first.posted()) >= 5, 30, "the leader to post")
        ended = terminate_backends(
            cluster.url, where=f"application_name ~ ' pid {first.process.pid}$'")
        assert ended == 1
        cut = time.time()
        await cluster.wait(lambda: any(r.leads() for r in cluster.replicas if r is not first)
                           and bool(first.named("leader.lost")), 10 * RETRY, "another leader")
        await feeding
        await cluster.wait(lambda: cluster.settled(MAX_COUNT + REJECTED), 60, "the backlog")
        await asyncio.sleep(1.0)
        await _check_outcome(cluster)
        others = [t for r in cluster.replicas if r is not first for t, _ in r.posted()]
        assert others, "the new leader posted nothing"
        last_by_first = max(t for t, _ in first.posted())
        assert last_by_first < min(others)
        lost = _ts(first.named("leader.lost")[0])
        print(f"\nlock connection cut: old leader noticed after {lost - cut:.2f} s, its last "
              f"post {last_by_first - cut:+.2f} s, the new leader's first post "
              f"{min(others) - cut:+.2f} s")
        assert first.alive  # it carries on, as a standby

    async def test_database_outage_recovers_without_unrecorded_approvals(
            self, cluster: Cluster) -> None:
        """Every session of the database terminated mid-run (a server restart as the
        replicas see it): they reconnect by themselves, one leads, the backlog drains,
        nothing is approved without a journal record."""
        await cluster.start(2)
        await cluster.wait(lambda: len(cluster.leaders()) == 1, 30, "a leader")
        feeding = asyncio.create_task(cluster.backlog(_batches(), every=0.4))
        first = cluster.leaders()[0]
        await cluster.wait(lambda: len(first.posted()) >= 5, 30, "the leader to post")
        assert terminate_backends(cluster.url) >= 2
        await feeding
        await cluster.wait(lambda: cluster.settled(MAX_COUNT + REJECTED), 90, "the backlog")
        await asyncio.sleep(1.0)
        await _check_outcome(cluster)
        assert any(r.named("leader.lost") for r in cluster.replicas)
        assert len(cluster.leaders()) == 1


class TestSplitBrain:
    async def test_two_forced_leaders_cannot_exceed_a_limit_or_post_twice(
            self, cluster: Cluster) -> None:
        """With the election skipped (a test hook), two replicas decide at once: the
        database refuses the second verdict and the approval over the limit, and an item's
        post claim keeps the other from posting it."""
        await cluster.start(2, forced=True)
        await cluster.wait(lambda: all(r.named("daemon.started") for r in cluster.replicas),
                           30, "both replicas")
        await cluster.backlog(_batches(), every=0.2)
        await cluster.wait(lambda: cluster.settled(MAX_COUNT + REJECTED), 60, "the backlog")
        await asyncio.sleep(1.5)
        result = await _check_outcome(cluster)
        assert result["approved"] == MAX_COUNT
        # Both decided (the race is real), yet nothing was posted twice.
        assert all(r.named("poll.done") for r in cluster.replicas)


def _one_leader_at_a_time(cluster: Cluster) -> None:
    """From the logs: no two replicas' leadership intervals (acquired .. lost / killed /
    end) overlap."""
    end = time.time()
    spans: list[tuple[float, float, str]] = []
    for r in cluster.replicas:
        start: float | None = None
        for e in r.events:
            if e.get("event") == "leader.acquired":
                start = _ts(e)
            elif e.get("event") == "leader.lost" and start is not None:
                spans.append((start, _ts(e), r.name))
                start = None
        if start is not None:
            spans.append((start, r.killed_at or end, r.name))
    spans.sort()
    for (_, a_end, a), (b_start, _, b) in itertools.pairwise(spans):
        assert b_start >= a_end, f"{a} and {b} led at once"
    assert Counter(name for *_, name in spans)


class TestRoles:
    async def test_standby_is_ready_and_says_so(self, pg_admin: str, rig: Rig) -> None:
        """Two in-process replicas: the leader polls (cosigner_leader 1), the standby is
        ready too (/readyz 200, role standby, cosigner_leader 0); when the leader stops, the
        standby leads."""
        with _scratch(pg_admin) as url:
            PostgresJournal(url).init()
            settings = rig.with_settings(database_url=SecretStr(url),
                                         pause_file=rig.tmp / "PAUSE", leader_retry=0.5)
            first, second = rig.build(settings), rig.build(settings)
            async with running(first):
                await wait_for(lambda: first.leadership.active() and first.polls >= 1,
                               within=20, what="the first replica to lead")
                async with running(second):
                    await wait_for(lambda: second.leadership.healthy(), within=10,
                                   what="the standby to reach the database")
                    leader = await get(first, "/readyz")
                    standby = await get(second, "/readyz")
                    metrics = [samples((await get(d, "/metrics")).text)
                               for d in (first, second)]
                    assert second.polls == 0
                    first.request_stop()
                    await wait_for(lambda: second.leadership.active() and second.polls >= 1,
                                   within=20, what="the standby to take over")
                    after = await get(second, "/readyz")
        assert (leader.status_code, leader.json()["role"]) == (200, "leader")
        assert (standby.status_code, standby.json()["role"]) == (200, "standby")
        assert standby.json()["checks"] == {"policy_in_force": True, "shard_usable": True,
                                            "journal_writable": True, "standby": True}
        assert [sample(m, "cosigner_leader") for m in metrics] == [1.0, 0.0]
        assert (after.status_code, after.json()["role"]) == (200, "leader")

    async def test_configured_log_masks_the_database_userinfo(self, pg_admin: str,
                                                              rig: Rig) -> None:
        """daemon.configured names the journal with its userinfo masked; the password
        appears in no log event."""
        from structlog.testing import capture_logs
        with _scratch(pg_admin) as url:
            PostgresJournal(url).init()
            user_url = url.replace("://postgres@", "://postgres:s3cret-pw@")
            settings = rig.with_settings(database_url=SecretStr(user_url),
                                         pause_file=rig.tmp / "PAUSE")
            with capture_logs() as logs:
                daemon = rig.build(settings)
                await daemon.close()
        [configured] = [e for e in logs if e["event"] == "daemon.configured"]
        assert configured["journal"].startswith("postgresql://***@127.0.0.1:")
        assert configured["role"] == "standby"
        assert "s3cret-pw" not in repr(logs)

    async def test_standby_without_database_is_not_ready(self, pg_admin: str,
                                                         rig: Rig) -> None:
        """A standby that cannot reach the database fails /readyz (a check that fires)."""
        with _scratch(pg_admin) as url:
            PostgresJournal(url).init()
            holder = PostgresJournal(url, writer=True)
            holder.open()  # another process leads
            try:
                settings = rig.with_settings(database_url=SecretStr(url),
                                             pause_file=rig.tmp / "PAUSE", leader_retry=0.3)
                daemon = rig.build(settings)
                async with running(daemon):
                    await wait_for(lambda: daemon.leadership.healthy(), within=10,
                                   what="a healthy standby")
                    # The database goes away (every session ended with it).
                    drop_database(pg_admin, url.rpartition("/")[2])
                    await wait_for(lambda: not daemon.leadership.healthy(), within=10,
                                   what="the standby to notice")
                    response = await get(daemon, "/readyz")
            finally:
                holder.close()
        assert response.status_code == 503
        assert response.json()["checks"]["standby"] is False


@pytest.mark.pg_restart
class TestServerRestart:
    """Opt-in (``COSIGNER_TEST_PG_RESTART=1``, run by ``.ci/run`` at the end): restarts
    the PostgreSQL server itself, which every other user of the server notices."""

    async def test_replicas_recover_from_a_server_restart(self, cluster: Cluster) -> None:
        """pg_ctlcluster restart mid-backlog: no approval without a record, the replicas
        recover by themselves and drain the backlog."""
        if not RESTART:
            pytest.skip("restarts the shared PostgreSQL server: set COSIGNER_TEST_PG_RESTART=1")
        import shutil
        import subprocess
        ctl = shutil.which("pg_ctlcluster")
        assert ctl is not None, "pg_ctlcluster is needed to restart the server"
        version = sorted(await asyncio.to_thread(os.listdir, "/etc/postgresql"))[-1]
        await cluster.start(2)
        await cluster.wait(lambda: len(cluster.leaders()) == 1, 30, "a leader")
        feeding = asyncio.create_task(cluster.backlog(_batches(), every=0.4))
        first = cluster.leaders()[0]
        await cluster.wait(lambda: len(first.posted()) >= 5, 30, "the leader to post")
        await asyncio.to_thread(subprocess.run, [ctl, "--skip-systemctl-redirect", version,
                                                 "main", "restart"], check=True, timeout=60)
        await feeding
        await cluster.wait(lambda: cluster.settled(MAX_COUNT + REJECTED), 90, "the backlog")
        await asyncio.sleep(1.0)
        await _check_outcome(cluster)
        assert len(cluster.leaders()) == 1
