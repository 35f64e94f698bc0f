"""Suite 3, storage faults: the journal missing, truncated, unreadable, read-only, rolled
back, on a full disk; ``memory://`` and a journal never created.

Each case damages the journal of a daemon that already decided and posted, queues new
items, starts ``cosigner run --once`` and asserts: it refuses to start (exit 2) or holds
everything, and the provider never accepts an approval without a durable record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cosigner.cli.daemon import daemon_spec
from cosigner.daemon.build import BuildOptions, build_daemon
from cosigner.errors import StoreError
from tests.chaos.checks import verdict
from tests.chaos.conftest import Figures, World, backlog
from tests.chaos.daemons import init_journal, journal_rows, run


def _first_run(world: World) -> dict[str, str]:
    env = world.env()
    init_journal(env, world.tmp)
    world.admin.add_items(backlog(20, random.Random(1)))
    done = run(["run", "--once"], env, world.tmp)
    assert done.returncode in (0, 1), done.stderr
    assert world.admin.decisions(), "the first run posted nothing"
    return env


def _second_run(world: World, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """New items, then ``run --once`` on the damaged journal; no approval may go out."""
    before = len(world.admin.decisions())
    world.admin.add_items(backlog(20, random.Random(2)))
    done = run(["run", "--once"], env, world.tmp)
    after = world.admin.decisions()
    assert len(after) == before, f"{len(after) - before} decisions posted on a damaged journal"
    return done


def _refused(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    # Log lines are JSON objects; the refusal itself is one plain line.
    plain = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert len(plain) == 1, ("one line naming the problem", plain)


def _record(figures: Figures, case: str, done: subprocess.CompletedProcess[str]) -> None:
    figures.add("storage", cases=1, refused_exit_2=int(done.returncode == 2),
                approvals_without_record=0)


@pytest.mark.timeout(900)  # several cosigner processes per case on a busy machine
class TestDamagedJournal:
    def test_missing(self, world: World, figures: Figures) -> None:
        """The journal deleted after decisions were made: refused, never a fresh start."""
        env = _first_run(world)
        world.db_path.unlink()
        for extra in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                world.db_path.with_name(world.db_path.name + extra).unlink()
        done = _second_run(world, env)
        _refused(done)
        _record(figures, "missing", done)

    def test_truncated(self, world: World, figures: Figures) -> None:
        env = _first_run(world)
        size = world.db_path.stat().st_size
        with world.db_path.open("r+b") as f:
            f.truncate(size // 2)
        for extra in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                world.db_path.with_name(world.db_path.name + extra).unlink()
        done = _second_run(world, env)
        _refused(done)
        _record(figures, "truncated", done)

    def test_unreadable(self, world: World, figures: Figures) -> None:
        """Garbage where the database was (root reads any mode, so bytes stand for it)."""
        env = _first_run(world)
        world.db_path.write_bytes(os.urandom(8192))
        for extra in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                world.db_path.with_name(world.db_path.name + extra).unlink()
        done = _second_run(world, env)
        _refused(done)
        _record(figures, "unreadable", done)

    def test_read_only(self, world: World, figures: Figures) -> None:
        """A read-only journal: refused at start, or every decision held (none posted)."""
        env = _first_run(world)
        with _read_only(world.db_path.parent) as how:
            done = _second_run(world, env)
        assert done.returncode != 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        figures.add("storage", cases=1, refused_exit_2=int(done.returncode == 2),
                    approvals_without_record=0)
        figures.add("storage", **{f"read_only_by_{how}": 1})

    def test_rolled_back(self, world: World, figures: Figures) -> None:
        """An older copy of the journal put back: its head is behind the witness: exit 2."""
        witness = world.tmp / "witness" / "head"
        witness.parent.mkdir()
        env = world.env(JOURNAL_WITNESS=witness)
        init_journal(env, world.tmp)
        world.admin.add_items(backlog(10, random.Random(3)))
        assert run(["run", "--once"], env, world.tmp).returncode in (0, 1)
        copy = world.tmp / "old"
        copy.mkdir()
        for path in world.db_path.parent.iterdir():
            shutil.copy2(path, copy / path.name)
        world.admin.add_items(backlog(10, random.Random(4)))
        assert run(["run", "--once"], env, world.tmp).returncode in (0, 1)
        for path in world.db_path.parent.iterdir():
            path.unlink()
        for path in copy.iterdir():
            shutil.copy2(path, world.db_path.parent / path.name)
        done = _second_run(world, env)
        _refused(done)
        _record(figures, "rolled_back", done)

    def test_memory_journal_refused(self, world: World, figures: Figures) -> None:
        env = world.env(DATABASE_URL="memory://")
        done = _second_run(world, env)
        _refused(done)
        _record(figures, "memory", done)

    def test_never_created(self, world: World, figures: Figures) -> None:
        """No journal and no init: run refuses instead of starting from empty."""
        done = _second_run(world, world.env())
        _refused(done)
        _record(figures, "never_created", done)


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[str]:
    """Make ``folder`` read-only: by mode when that binds us (not root), else by a
    read-only bind mount; skip when neither is possible."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in folder.iterdir()}
        for path in folder.iterdir():
            path.chmod(0o400)
        folder.chmod(0o500)
        try:
            yield "mode"
        finally:
            folder.chmod(0o700)
            for path, mode in modes.items():
                path.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)],
                             capture_output=True, check=False).returncode == 0
    if mounted and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)],
                                  capture_output=True, check=False).returncode == 0:
        try:
            yield "bind_mount"
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)
    pytest.skip("root and no read-only bind mount possible: read-only cannot be staged")


class FailingJournal:
    """The real journal, whose writes fail like a full disk after ``after`` commits."""

    def __init__(self, inner: Any, after: int) -> None:
        self._inner = inner
        self._left = after
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _spend(self) -> None:
        if self._left <= 0:
            self.failed += 1
            raise StoreError("journal: database or disk is full")
        self._left -= 1

    def record_decisions(self, *args: Any, **kwargs: Any) -> Any:
        self._spend()
        return self._inner.record_decisions(*args, **kwargs)

    def record_outcomes(self, *args: Any, **kwargs: Any) -> Any:
        self._spend()
        return self._inner.record_outcomes(*args, **kwargs)


class TestDiskFull:
    @pytest.mark.parametrize("after", [0, 1, pytest.param(3, marks=pytest.mark.chaos_long)])
    async def test_injected_full_disk(self, world: World, figures: Figures,
                                      after: int) -> None:
        """Writes fail after ``after`` commits: nothing is posted that was not recorded."""
        env = world.env()
        await asyncio.to_thread(init_journal, env, world.tmp)
        await asyncio.to_thread(world.admin.add_items, backlog(30, random.Random(after)))
        daemon = build_daemon(daemon_spec(world.settings()), BuildOptions(
            install_signals=False, configure_logs=False, watch_interval=0))
        failing = FailingJournal(daemon.pipeline.journal, after)
        daemon.pipeline.journal = failing  # type: ignore[assignment]
        try:
            for n in range(3):  # new items every poll: every poll has writes to make
                await asyncio.to_thread(world.admin.add_items,
                                        backlog(5, random.Random(100 + n)))
                await daemon.poll_job()
        finally:
            daemon.request_stop()
            await daemon.close()
        received = await asyncio.to_thread(world.admin.decisions)
        rows = await asyncio.to_thread(journal_rows, env, world.tmp)
        result = verdict(received, rows)
        figures.add("storage", cases=1, disk_full_write_failures=failing.failed,
                    approvals_without_record=result.unrecorded_posts)
        result.assert_clean()
        assert failing.failed > 0, "the injected fault never fired"
        if after == 0:
            assert received == []

    def test_small_tmpfs(self, world: World, figures: Figures) -> None:
        """A real full file system (a tiny tmpfs; root only): refused or nothing unrecorded."""
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        mount = world.tmp / "tiny"
        mount.mkdir(mode=0o700)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, check=False).returncode != 0:
            pytest.skip("tmpfs cannot be mounted here")
        try:
            env = world.env(DATABASE_URL=f"sqlite://{mount / 'journal.db'}")
            init_journal(env, world.tmp)
            filler = mount / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            world.admin.add_items(backlog(200, random.Random(9)))
            done = run(["run", "--once"], env, world.tmp)
            assert "Traceback" not in done.stderr
            filler.unlink()  # room again, so the journal can be read back
            received = world.admin.decisions()
            # Nothing posted: the journal may not even exist to be read.
            rows = journal_rows(env, world.tmp) if received else []
            result = verdict(received, rows)
            figures.add("storage", cases=1, tmpfs_full=1,
                        refused_exit_2=int(done.returncode == 2),
                        approvals_without_record=result.unrecorded_posts)
            result.assert_clean()
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
