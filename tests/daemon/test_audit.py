"""``cosigner audit`` on the journal a real daemon run wrote: verify finds an edited
and a deleted record, list and export show the run's decisions."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cosigner.cli import main
from tests.daemon.conftest import SANCTIONED, Rig, item


def tamper(path: Path, statement: str, *args: object) -> None:
    """Change the journal as an attacker with file access would: drop the append-only
    triggers, then run ``statement`` with ``args``."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
        conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
        conn.execute(statement, args)
        conn.commit()
    finally:
        conn.close()


def entries(path: Path) -> list[tuple[int, str, int]]:
    """(seq, kind, item id) of every journal entry."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT seq, kind, item_id FROM entries ORDER BY seq"))
    finally:
        conn.close()


@pytest.fixture
async def journaled(rig: Rig) -> Rig:
    """A journal written by one real daemon run: approvals, a reject and holds."""
    await rig.add(item("5"), item("5", to=SANCTIONED), item("500"), item("7"), item("-2"))
    assert await rig.build().run_once() == 0
    return rig


class TestAuditVerify:
    """``audit verify`` exits 1 naming the first broken record, 0 on an intact journal."""

    async def test_an_intact_journal_verifies(self, journaled: Rig,
                                              capsys: pytest.CaptureFixture[str]) -> None:
        """The journal of a clean run verifies with every entry counted."""
        count = len(entries(journaled.db_path))

        assert main(["audit", "verify", "--database-url", journaled.database_url]) == 0

        assert capsys.readouterr().out == f"journal OK: {count} entries\n"

    async def test_an_edited_amount_is_detected(self, journaled: Rig,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        """Raising a decision's amount breaks its hash; verify names that record."""
        seq, _, item_id = next(e for e in entries(journaled.db_path) if e[1] == "decision")
        tamper(journaled.db_path, "UPDATE entries SET amount_text = '5000' WHERE seq = ?", seq)

        assert main(["audit", "verify", "--database-url", journaled.database_url]) == 1

        out = capsys.readouterr().out
        assert f"record seq {seq} (item {item_id}) was edited" in out
        assert out.startswith("journal verification FAILED:")

    async def test_an_edited_action_is_detected(self, journaled: Rig,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        """Turning a recorded hold into an approve is detected."""
        seq, _, item_id = next(e for e in entries(journaled.db_path)
                               if e[1] == "decision" and e[2] == 3)
        tamper(journaled.db_path, "UPDATE entries SET action = 'approve' WHERE seq = ?", seq)

        assert main(["audit", "verify", "--database-url", journaled.database_url]) == 1

        assert f"record seq {seq} (item {item_id}) was edited" in capsys.readouterr().out

    async def test_a_deleted_middle_record_is_detected(self, journaled: Rig,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
        """Deleting a record in the middle of the chain is reported as missing."""
        rows = entries(journaled.db_path)
        seq = rows[len(rows) // 2][0]
        tamper(journaled.db_path, "DELETE FROM entries WHERE seq = ?", seq)

        assert main(["audit", "verify", "--database-url", journaled.database_url]) == 1

        assert f"record seq {seq} is missing" in capsys.readouterr().out

    async def test_a_deleted_last_record_is_detected(self, journaled: Rig,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
        """Cutting the newest record off the end is detected through the journal's head."""
        last = entries(journaled.db_path)[-1][0]
        tamper(journaled.db_path, "DELETE FROM entries WHERE seq = ?", last)

        assert main(["audit", "verify", "--database-url", journaled.database_url]) == 1

        assert f"record seq {last} is missing" in capsys.readouterr().out


class TestAuditReadsTheRun:
    """``audit list`` and ``audit export`` show the daemon's decisions with their states."""

    async def test_export_shows_every_decision_and_state(
            self, journaled: Rig, capsys: pytest.CaptureFixture[str]) -> None:
        """The JSONL export has one line per decision with action, rule and state."""
        assert main(["audit", "export", "--format", "jsonl",
                     "--database-url", journaled.database_url]) == 0

        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        summary = sorted((r["item_id"], r["action"], r["state"]) for r in rows)
        assert summary == [(1, "approve", "posted"), (2, "reject", "posted"),
                           (3, "hold", "decided"), (4, "approve", "posted"),
                           (5, "hold", "decided")]

    async def test_list_filters_by_action(self, journaled: Rig,
                                          capsys: pytest.CaptureFixture[str]) -> None:
        """``audit list --action hold`` shows only the held items."""
        assert main(["audit", "list", "--action", "hold",
                     "--database-url", journaled.database_url]) == 0

        out = capsys.readouterr().out
        assert "<default>" in out
        assert "<invalid>" in out
        assert "block-sanctioned" not in out
