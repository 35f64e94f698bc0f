"""``cosigner audit`` run in-process through ``cosigner.cli.main``."""

from __future__ import annotations

import csv
import io
import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine

from cosigner.cli import main
from cosigner.store import NewOutcome, SqliteJournal
from cosigner.store.audit import EXPORT_COLUMNS
from tests.store.conftest import T0, FakeClock, decision
from tests.store.test_sqlite import tamper


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite://{db_path}"


@pytest.fixture
def filled(db_path: Path) -> Path:
    """A journal with four decisions an hour apart (approve posted, reject, hold, approve)."""
    clock = FakeClock()
    journal = SqliteJournal(db_path, writer=True, clock=clock)
    journal.init()
    journal.open()
    for item_id, action in [(1001, "approve"), (1002, "reject"), (1003, "hold"),
                            (1004, "approve")]:
        journal.record_decisions([decision(item_id, action, rule=f"rule-{action}",
                                           reasons=(f"rule:rule-{action}", "why, really"))])
        clock.advance(hours=1)
    journal.record_outcomes([NewOutcome(1, 1001, "posted", 200, "success")])
    journal.close()
    return db_path


def audit(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv, "--database-url", url])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class TestAuditList:
    def test_table_of_every_decision(self, filled: Path, url: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """list shows a row per decision: seq, time, item, action, rule, state, amount, chain."""
        code, out, _ = audit(capsys, url, "list")
        lines = out.splitlines()
        assert code == 0
        assert lines[0].split() == ["seq", "time", "item", "action", "rule", "state", "amount",
                                    "chain"]
        assert lines[1].split() == ["1", "2025-03-03T12:00:00Z", "1001", "approve",
                                    "rule-approve", "posted", "4.10", "56"]
        assert [line.split()[2] for line in lines[1:]] == ["1001", "1002", "1003", "1004"]

    def test_filters(self, filled: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """--since (a time or a duration), --action and --limit narrow the list."""
        def items(*argv: str) -> list[str]:
            code, out, _ = audit(capsys, url, "list", *argv)
            assert code == 0
            return [line.split()[2] for line in out.splitlines()[1:]
                    if not line.startswith("no ")]

        assert items("--action", "approve") == ["1001", "1004"]
        assert items("--since", "2025-03-03T14:00:00Z") == ["1003", "1004"]
        assert items("--since", "2025-03-03T14:00:00") == ["1003", "1004"]
        assert items("--limit", "1") == ["1001"]
        with time_machine.travel(T0 + timedelta(hours=3, minutes=30), tick=False):
            assert items("--since", "90m") == ["1003", "1004"]
            assert items("--since", "1d", "--action", "reject") == ["1002"]
        assert items("--action", "reject", "--since", "2030-01-01T00:00:00+00:00") == []

    def test_database_url_from_the_environment(self, filled: Path, url: str,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --database-url the journal comes from COSIGNER_DATABASE_URL."""
        monkeypatch.setenv("COSIGNER_DATABASE_URL", url)
        assert main(["audit", "list", "--limit", "1"]) == 0
        assert "1001" in capsys.readouterr().out

    def test_option_before_the_subcommand(self, filled: Path, url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
        """--database-url may also come right after ``audit``."""
        assert main(["audit", "--database-url", url, "verify"]) == 0
        assert capsys.readouterr().out == "journal OK: 5 entries\n"

    def test_bad_since_is_a_usage_error(self, filled: Path, url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """An unparsable --since exits 2 with one line naming the option."""
        code, _, err = audit(capsys, url, "list", "--since", "yesterday")
        assert code == 2
        assert err.startswith("cosigner: --since: 'yesterday' is neither")

    def test_bad_limit_is_a_usage_error(self, url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """A --limit that is not a count is refused by the parser (exit 2)."""
        for bad in ("-1", "ten"):
            with pytest.raises(SystemExit) as caught:
                main(["audit", "list", "--limit", bad, "--database-url", url])
            assert caught.value.code == 2
            assert "is not a count" in capsys.readouterr().err

    def test_untrusted_text_is_escaped(self, db_path: Path, url: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """Terminal escape sequences in an item's fields never reach the screen."""
        journal = SqliteJournal(db_path, writer=True)
        journal.init()
        journal.open()
        journal.record_decisions([decision(1, "hold", amount_text="1\x1b[2J", chain_id="5\u200b")])
        journal.close()
        code, out, _ = audit(capsys, url, "list")
        assert code == 0
        assert "\x1b" not in out
        assert "1\\u001b[2J" in out
        assert "5\\u200b" in out


class TestAuditExport:
    def test_jsonl(self, filled: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """JSONL has every decision, its state and hashes, columns in a stable order."""
        code, out, _ = audit(capsys, url, "export", "--format", "jsonl")
        rows = [json.loads(line) for line in out.splitlines()]
        assert code == 0
        assert [list(row) for row in rows] == [list(EXPORT_COLUMNS)] * 4
        assert rows[0]["state"] == "posted"
        assert rows[0]["outcome_code"] == 200
        assert rows[0]["reasons"] == ["rule:rule-approve", "why, really"]
        assert rows[1]["prev_hash"] == rows[0]["record_hash"]
        assert rows[2]["state"] == "decided"

    def test_csv_to_a_file(self, filled: Path, url: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
        """CSV goes to --output, created 0600, header first."""
        target = tmp_path / "out" / "export.csv"
        target.parent.mkdir()
        code, out, _ = audit(capsys, url, "export", "--format", "csv", "--output", str(target))
        assert (code, out) == (0, "")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        rows = list(csv.reader(io.StringIO(target.read_text())))
        assert tuple(rows[0]) == EXPORT_COLUMNS
        assert len(rows) == 5
        assert json.loads(rows[1][EXPORT_COLUMNS.index("reasons")]) == [
            "rule:rule-approve", "why, really"]
        assert rows[3][EXPORT_COLUMNS.index("outcome_code")] == ""

    def test_csv_defuses_formulas(self, db_path: Path, url: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """A field a spreadsheet would run as a formula is prefixed with a quote."""
        journal = SqliteJournal(db_path, writer=True)
        journal.init()
        journal.open()
        journal.record_decisions([decision(1, "hold", to_address="=HYPERLINK(\"x\")")])
        journal.close()
        _, out, _ = audit(capsys, url, "export", "--format", "csv")
        row = list(csv.reader(io.StringIO(out)))[1]
        assert row[EXPORT_COLUMNS.index("to_address")] == "'=HYPERLINK(\"x\")"

    def test_unwritable_output(self, filled: Path, url: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
        """An --output that cannot be written exits 2 naming it."""
        code, _, err = audit(capsys, url, "export", "--format", "csv", "--output",
                             str(tmp_path / "no" / "such" / "dir.csv"))
        assert code == 2
        assert "--output" in err


class TestAuditVerify:
    def test_good_journal(self, filled: Path, url: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
        """An intact journal exits 0 with its entry count."""
        assert audit(capsys, url, "verify") == (0, "journal OK: 5 entries\n", "")

    def test_edited_record(self, filled: Path, url: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
        """An edited record exits 1 naming it."""
        tamper(filled, "UPDATE entries SET action = 'approve' WHERE seq = 3")
        code, out, _ = audit(capsys, url, "verify")
        assert code == 1
        assert "record seq 3 (item 1003) was edited: hash mismatch" in out

    def test_deleted_record(self, filled: Path, url: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
        """A deleted record exits 1 naming the missing seq."""
        tamper(filled, "DELETE FROM entries WHERE seq = 2")
        code, out, _ = audit(capsys, url, "verify")
        assert code == 1
        assert "record seq 2 is missing" in out

    def test_never_creates_a_journal(self, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """A journal that does not exist exits 2 and is not created."""
        path = tmp_path / "absent.db"
        code, out, err = audit(capsys, f"sqlite://{path}", "verify")
        assert (code, out) == (2, "")
        assert err == (f"cosigner: journal {path} does not exist; create it with "
                       "`cosigner journal init`\n")
        assert not path.exists()
        assert not Path(f"{path}.marker").exists()

    def test_newer_schema_exits_2(self, filled: Path, url: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """A journal from a newer schema is a configuration error."""
        tamper(filled, "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        code, _, err = audit(capsys, url, "list")
        assert code == 2
        assert "schema version 7" in err

    def test_unreachable_postgres_exits_2_without_userinfo(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        """A PostgreSQL server that cannot be reached is exit 2, the URL's userinfo masked."""
        code, _, err = audit(capsys, "postgresql://u:hunter2@db.invalid/cosigner", "verify")
        assert code == 2
        assert err.startswith("cosigner: journal postgresql://***@db.invalid/cosigner cannot "
                              "be reached")
        assert "hunter2" not in err
        assert "u:" not in err

