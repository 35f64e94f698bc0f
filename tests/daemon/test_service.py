"""The long-running daemon: policy hot reload, graceful stop (in-process and on SIGTERM),
the pause file and shadow mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator

import pytest

from cosigner.daemon.service import Daemon
from cosigner.models import Action
from tests.daemon.conftest import (
    COSIGNER,
    MAX_COUNT,
    POLICY,
    POLICY_NAME,
    SANCTIONED,
    Rig,
    address,
    item,
    wait_for,
)
from tests.daemon.test_once import cosigner


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[int]]:
    """``daemon.run()`` as a task, stopped (and awaited) on the way out."""
    task = asyncio.create_task(daemon.run())
    try:
        yield task
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


def reloads(daemon: Daemon, outcome: str) -> float:
    return daemon.metrics.registry.get_sample_value(
        "cosigner_policy_reloads_total", {"outcome": outcome}) or 0


def policy_info(daemon: Daemon) -> list[dict[str, str]]:
    return [s.labels for metric in daemon.metrics.registry.collect()
            if metric.name == "cosigner_policy_info" for s in metric.samples if s.value == 1]


BROKEN = "version: 1\nname: broken\ndefault: hold\nrules: [\n"


class TestPolicyReload:
    """A bad policy reload keeps the last good policy; a good one replaces it."""

    async def test_a_bad_reload_keeps_the_old_policy(self, rig: Rig) -> None:
        """reload_policy with a broken file returns False and changes nothing in force."""
        daemon = rig.build(watch_interval=0)
        old = daemon.pipeline.state.policy
        async with running(daemon):
            await wait_for(lambda: daemon.polls >= 1, what="the first poll")
            rig.policy_path.write_text(BROKEN, encoding="utf-8")

            assert await daemon.reload_policy("test") is False

            assert daemon.pipeline.state.policy is old
            assert reloads(daemon, "error") == 1
            assert policy_info(daemon) == [{"name": POLICY_NAME, "sha256": old.sha256}]
            # The old policy still decides: a small payout is approved under it.
            (approve,) = await rig.add(item("5"))
            await wait_for(lambda: approve in rig.latest(), what="the decision")
        record = rig.latest()[approve]
        assert (record.action, record.policy_sha256) == (Action.APPROVE, old.sha256)

    async def test_a_good_reload_replaces_the_policy(self, rig: Rig) -> None:
        """After a failed reload, a fixed file loads: outcome ok and new policy_info."""
        daemon = rig.build(watch_interval=0)
        old = daemon.pipeline.state.policy
        good = rig.policy_path.read_text().replace(f"name: {POLICY_NAME}", "name: stricter") \
            .replace('amount: {max: "100"}', 'amount: {max: "10"}')
        async with running(daemon):
            rig.policy_path.write_text(BROKEN, encoding="utf-8")
            assert await daemon.reload_policy("test") is False
            rig.policy_path.write_text(good, encoding="utf-8")

            assert await daemon.reload_policy("test") is True

            new = daemon.pipeline.state.policy
            assert (new.name, reloads(daemon, "error"), reloads(daemon, "ok")) == (
                "stricter", 1, 1)
            assert new.sha256 != old.sha256
            assert policy_info(daemon) == [{"name": "stricter", "sha256": new.sha256}]
            assert await daemon.reload_policy("test") is True
            assert reloads(daemon, "unchanged") == 1
            (held,) = await rig.add(item("50"))
            await wait_for(lambda: held in rig.latest(), what="the decision")
        record = rig.latest()[held]
        assert (record.action, record.policy_name) == (Action.HOLD, "stricter")

    async def test_a_reload_keeps_the_limits_usage(self, rig: Rig) -> None:
        """Approvals made under the old policy still count against the new one's limit."""
        daemon = rig.build(watch_interval=0)
        async with running(daemon):
            first = await rig.add(*(item("1", to=address(0x80 + n)) for n in range(MAX_COUNT)))
            await wait_for(lambda: all(i in rig.latest() for i in first), what="approvals")
            rig.policy_path.write_text(rig.policy_path.read_text().replace(
                f"name: {POLICY_NAME}", "name: renamed"), encoding="utf-8")
            assert await daemon.reload_policy("test") is True
            (late,) = await rig.add(item("1", to=address(0x90)))
            await wait_for(lambda: late in rig.latest(), what="the decision")
        assert rig.latest()[late].reasons == ("limit:bsc-count",)

    async def test_the_file_watch_reloads_and_survives_a_broken_file(self, rig: Rig) -> None:
        """Saving a broken file is counted once and ignored; saving a good one reloads."""
        daemon = rig.build(watch_interval=0.2)
        old = daemon.pipeline.state.policy
        async with running(daemon):
            rig.policy_path.write_text(BROKEN, encoding="utf-8")
            await wait_for(lambda: reloads(daemon, "error") >= 1, what="the failed reload")
            await asyncio.sleep(0.6)  # three more watch ticks: the same broken file
            assert reloads(daemon, "error") == 1
            assert daemon.pipeline.state.policy is old

            rig.policy_path.write_text(POLICY.replace(f"name: {POLICY_NAME}", "name: watched"),
                                       encoding="utf-8")
            await wait_for(lambda: reloads(daemon, "ok") >= 1, what="the reload")
            assert daemon.pipeline.state.policy.name == "watched"
            assert policy_info(daemon) == [{"name": "watched",
                                            "sha256": daemon.pipeline.state.policy.sha256}]

    async def test_a_changed_list_file_is_watched_too(self, rig: Rig) -> None:
        """A policy's list file is one of its sources: changing it reloads the policy."""
        lists = rig.policy_path.parent / "sanctioned.txt"
        lists.write_text(f"{SANCTIONED}\n", encoding="utf-8")
        rig.policy_path.write_text(POLICY.replace(
            f'sanctioned: ["{SANCTIONED}"]', "sanctioned: {file: sanctioned.txt}"),
            encoding="utf-8")
        daemon = rig.build(watch_interval=0.2)
        async with running(daemon):
            extra = address(0xA0)
            lists.write_text(f"{SANCTIONED}\n{extra}\n", encoding="utf-8")
            await wait_for(lambda: reloads(daemon, "ok") >= 1, what="the reload")
            (rejected,) = await rig.add(item("5", to=extra))
            await wait_for(lambda: rejected in rig.latest(), what="the decision")
        assert rig.latest()[rejected].action is Action.REJECT


class TestGracefulStop:
    """A stop finishes the item in flight, posts nothing new and closes the journal."""

    async def test_the_item_in_flight_is_finished_and_nothing_new_is_posted(
            self, rig: Rig) -> None:
        """Stopping during a slow post lets that post complete and record its answer."""
        ids = await rig.add(*(item("1", to=address(0xB0 + n)) for n in range(MAX_COUNT)))
        await rig.admin.set_faults({"latencyMs": 400})
        daemon = rig.build(rig.with_settings(concurrency=1))
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: daemon.pipeline.in_flight == 1, what="a post in flight")
        started = time.monotonic()

        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

        assert time.monotonic() - started < 10
        assert daemon.readiness()["journal_writable"] is False
        received = await rig.post_counts()
        latest = rig.latest()
        # The one post in flight completed and its answer was recorded; the posts not
        # yet started were not made.
        assert received == {ids[0]: 1}
        assert [latest[i].state for i in ids] == ["posted"] + ["decided"] * (len(ids) - 1)
        await rig.admin.clear_faults()

        assert await rig.build().run_once() == 0
        assert await rig.post_counts() == dict.fromkeys(ids, 1)
        assert {latest.state for latest in rig.latest().values()} == {"posted"}


class TestSigterm:
    """``cosigner run`` exits 0 within 10 s of SIGTERM, with a journal that verifies."""

    async def test_sigterm_exits_cleanly(self, rig: Rig) -> None:
        """SIGTERM after the first poll: exit 0, 'daemon.stopped' logged, journal intact."""
        await rig.add(item("5"), item("500"), item("5", to=SANCTIONED), item("7"))
        await rig.admin.set_faults({"latencyMs": 150})
        process = await asyncio.create_subprocess_exec(
            str(COSIGNER), "run", env=rig.env(), cwd=rig.tmp,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert process.stderr is not None
        events: list[str] = []
        try:
            async with asyncio.timeout(20):
                while "poll.done" not in events:
                    line = await process.stderr.readline()
                    assert line, f"the daemon ended early: {events}"
                    events.append(json.loads(line).get("event", ""))
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(process.communicate(), 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

        assert process.returncode == 0, err.decode()
        assert time.monotonic() - started < 10
        events += [json.loads(line).get("event", "") for line in err.decode().splitlines()]
        assert events.index("daemon.stopping") < events.index("daemon.stopped")
        assert len(await rig.received()) == 3
        verify = await cosigner("audit", "verify", "--database-url", rig.database_url,
                                env=rig.env(), cwd=rig.tmp)
        assert verify.code == 0, verify.stdout + verify.stderr
        assert verify.stdout.startswith("journal OK:")

    async def test_sighup_reloads_the_policy(self, rig: Rig) -> None:
        """SIGHUP makes a running daemon load its policy file again."""
        process = await asyncio.create_subprocess_exec(
            str(COSIGNER), "run", env=rig.env(), cwd=rig.tmp,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        assert process.stderr is not None
        events: list[dict[str, object]] = []

        async def until(name: str) -> dict[str, object]:
            while True:
                line = await process.stderr.readline()  # type: ignore[union-attr]
                assert line, f"the daemon ended early: {events}"
                events.append(json.loads(line))
                if events[-1].get("event") == name:
                    return events[-1]

        try:
            async with asyncio.timeout(20):
                await until("poll.done")
                rig.policy_path.write_text(POLICY.replace(
                    f"name: {POLICY_NAME}", "name: hupped"), encoding="utf-8")
                process.send_signal(signal.SIGHUP)
                reloaded = await until("policy.reloaded")
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert (reloaded["trigger"], reloaded["name"]) == ("sighup", "hupped")
        assert process.returncode == 0


class TestPauseFile:
    """While the pause file exists no approval is posted."""

    async def test_the_pause_file_holds_every_approval(self, rig: Rig) -> None:
        """Approvals are held with reason paused; removing the file lets them through."""
        pause = rig.tmp / "PAUSE"
        pause.touch()
        approve, reject = await rig.add(item("5"), item("5", to=SANCTIONED))
        daemon = rig.build(rig.with_settings(pause_file=pause))

        assert (await daemon.pipeline.poll()).ok

        record = rig.latest()[approve]
        assert (record.action, record.rule) == (Action.HOLD, "small")
        assert "paused" in record.reasons
        assert approve not in await rig.post_counts()

        pause.unlink()
        assert (await daemon.pipeline.poll()).ok
        await daemon.close()

        assert (await rig.post_counts())[approve] == 1
        assert rig.latest()[approve].action is Action.APPROVE
        assert rig.latest()[approve].state == "posted"
        assert rig.latest()[reject].action in (Action.REJECT, Action.HOLD)


class TestShadowMode:
    """Shadow mode decides and journals but posts nothing."""

    @pytest.mark.parametrize("how", ["option", "setting"])
    async def test_shadow_journals_and_posts_nothing(self, rig: Rig, how: str) -> None:
        """Every decision is recorded as shadow; the sandbox receives no approve or collect."""
        approve, reject, hold = await rig.add(item("5"), item("5", to=SANCTIONED), item("500"))
        daemon = (rig.build(shadow=True) if how == "option"
                  else rig.build(rig.with_settings(mode="shadow")))

        assert await daemon.run_once() == 0

        assert await rig.received() == []
        assert await rig.admin.collections() == []
        latest = rig.latest()
        assert {i: (r.action, r.mode, r.state) for i, r in latest.items()} == {
            approve: (Action.APPROVE, "shadow", "shadow"),
            reject: (Action.REJECT, "shadow", "shadow"),
            hold: (Action.HOLD, "shadow", "shadow"),
        }

    async def test_going_live_after_shadow_decides_afresh(self, rig: Rig) -> None:
        """An enforce daemon after a shadow run decides and posts each item once."""
        approve, hold = await rig.add(item("5"), item("500"))
        assert await rig.build(shadow=True).run_once() == 0

        assert await rig.build().run_once() == 0
        assert await rig.build().run_once() == 0

        assert await rig.post_counts() == {approve: 1}
        assert [r.mode for r in rig.records()[hold]] == ["shadow", "enforce"]
