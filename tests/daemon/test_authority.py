"""One decision, one authority, end to end: two writers on one journal never break a limit
or post an id twice, and a journal that is missing, volatile, rolled back or edited stops
the start with exit 2 and one line."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cosigner.daemon.pipeline import Pipeline, PolicyState, ledger_from_journal
from tests.daemon.conftest import LIMIT, MAX_COUNT, Rig, address, item
from tests.daemon.test_once import Done, cosigner, run_in_process

REPO = Path(__file__).parents[2]


async def approvals_by_id(rig: Rig) -> dict[int, int]:
    """How many approves (status 1) the sandbox accepted per id."""
    counts: dict[int, int] = {}
    for d in await rig.received():
        if int(d["status"]) == 1:
            counts[int(d["id"])] = counts.get(int(d["id"]), 0) + 1
    return counts


class TestTwoWriters:
    async def test_two_run_once_together(self, rig: Rig) -> None:
        """Two `run --once` started together on one journal, with a slow pending list: the
        second exits 2 naming the lock and its holder; the limit holds; no id twice."""
        await rig.add(*(item("1", to=address(0x40 + n)) for n in range(MAX_COUNT + 5)))
        await rig.admin.set_faults({"latencyMs": 700})
        env = rig.env()
        first, second = await asyncio.gather(
            cosigner("run", "--once", env=env, cwd=rig.tmp, within=90),
            cosigner("run", "--once", env=env, cwd=rig.tmp, within=90))
        await rig.admin.clear_faults()
        refused = [d for d in (first, second) if d.code == 2]
        ran = [d for d in (first, second) if d.code != 2]
        assert len(refused) == 1, (first, second)
        assert len(ran) == 1
        [line] = refused[0].stderr.strip().splitlines()
        assert line.startswith(f"cosigner: journal {rig.db_path} is locked by another writer "
                               "(pid ")
        assert line.endswith(f"lock {rig.db_path}.lock); only one process may write a journal")
        approved = await approvals_by_id(rig)
        assert len(approved) == MAX_COUNT
        assert set(approved.values()) == {1}

    async def test_a_daemon_and_a_run_once(self, rig: Rig) -> None:
        """While a daemon holds the journal, `run --once` exits 2 and `audit list` works."""
        daemon = rig.build()
        done = await cosigner("run", "--once", env=rig.env(), cwd=rig.tmp, within=60)
        assert done.code == 2
        assert "is locked by another writer" in done.stderr
        listing = await cosigner("audit", "list", env=rig.env(), cwd=rig.tmp, within=60)
        assert listing.code == 0
        assert listing.stdout.strip().endswith("no decisions match")
        await daemon.close()

    async def test_a_stale_ledger_cannot_exceed_a_limit(self, rig: Rig) -> None:
        """Two pipelines on one journal (as two writers that each believe they may decide):
        the second's in-memory ledger is stale, the journal refuses its approvals inside
        the write, it re-decides from the journal and holds them."""
        daemon = rig.build()
        first = daemon.pipeline
        policy = first.state.policy
        # Built now, before the first decides: its ledger will be stale.
        second = Pipeline(first.client, first.shard, first.journal,
                          PolicyState(policy, ledger_from_journal(policy, first.journal,
                                                                  first.clock())),
                          first.metrics, first.log, concurrency=2, signer=first.signer)
        await rig.add(*(item("1", to=address(0x50 + n)) for n in range(MAX_COUNT)))
        assert (await first.poll()).approved == MAX_COUNT
        await rig.add(*(item("1", to=address(0x60 + n)) for n in range(3)))
        result = await second.poll()
        assert result.approved == 0
        approved = await approvals_by_id(rig)
        assert len(approved) == MAX_COUNT
        assert set(approved.values()) == {1}
        holds = [r for r in rig.latest().values() if r.action.value == "hold"]
        assert {r.reasons for r in holds} == {(f"limit:{LIMIT}",)}
        await daemon.close()


def one_line(done: Done) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


class TestRefusedAtStart:
    """Each is refused with exit 2 and one line, before anything touches the network."""

    def test_missing_journal(self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
        """A journal that was never created (no init) is refused, not created."""
        path = rig.tmp / "fresh" / "journal.db"
        done = run_in_process(rig, monkeypatch, capsys, DATABASE_URL=f"sqlite://{path}")
        assert done.code == 2
        assert one_line(done) == (f"cosigner: journal {path} does not exist; create it with "
                                  "`cosigner journal init`")
        assert not path.parent.exists()

    def test_missing_directory(self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
        """The journal's directory removed (database, marker and witness together, as a
        re-provisioned volume) is refused: run never starts from empty."""
        shutil.rmtree(rig.db_path.parent)
        done = run_in_process(rig, monkeypatch, capsys)
        assert done.code == 2
        assert "does not exist; create it with `cosigner journal init`" in one_line(done)
        assert not rig.db_path.exists()

    def test_memory_journal(self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
        """memory:// would forget every decision at each restart: refused."""
        done = run_in_process(rig, monkeypatch, capsys, DATABASE_URL="memory://")
        assert done.code == 2
        assert one_line(done).startswith("cosigner: COSIGNER_DATABASE_URL: memory:// keeps "
                                         "nothing across restarts")

    async def test_restored_older_copy(self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """An older journal.db and marker copied back (the witness stays) is refused."""
        backup = rig.tmp / "backup"
        backup.mkdir()
        for name in ("journal.db", "journal.db.marker"):
            shutil.copy2(rig.db_path.parent / name, backup / name)
        await rig.add(item("1"))
        assert await rig.build().run_once() == 0
        for daemon in rig.daemons:
            await daemon.close()
        for name in ("journal.db", "journal.db.marker"):
            shutil.copy2(backup / name, rig.db_path.parent / name)
        done = await asyncio.to_thread(run_in_process, rig, monkeypatch, capsys)
        assert done.code == 2
        assert "is behind its witness" in one_line(done)

    def test_lost_wal(self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
        """The -wal of a killed writer deleted: its commits are gone, the witness knows."""
        code = (f"import os\nfrom cosigner.store import SqliteJournal\n"
                f"from tests.store.conftest import decision\n"
                f"j = SqliteJournal({str(rig.db_path)!r}, writer=True); j.open()\n"
                f"j.record_decisions([decision(1)])\nos._exit(0)\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=REPO)
        for suffix in ("-wal", "-shm"):
            Path(f"{rig.db_path}{suffix}").unlink()
        done = run_in_process(rig, monkeypatch, capsys)
        assert done.code == 2
        assert "is behind its witness" in one_line(done)

    async def test_edited_row(self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
        """An approval edited in place (trigger dropped, amount lowered) is refused."""
        await rig.add(item("50"))
        assert await rig.build().run_once() == 0
        for daemon in rig.daemons:
            await daemon.close()
        with sqlite3.connect(rig.db_path) as conn:
            conn.execute("DROP TRIGGER entries_no_update")
            conn.execute("UPDATE entries SET amount_text = '0.5' WHERE kind = 'decision'")
        conn.close()
        done = await asyncio.to_thread(run_in_process, rig, monkeypatch, capsys)
        assert done.code == 2
        assert "was edited" in one_line(done)
