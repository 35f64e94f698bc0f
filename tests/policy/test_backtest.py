"""``cosigner policy backtest``: replay a generated journal whose answer is known (DESIGN
sections 5 and 11)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cosigner.cli import main
from cosigner.models import Action, PendingItem
from cosigner.store import Journal, SqliteJournal, init_journal
from cosigner.store.base import NewDecision
from tests.policy.conftest import BAD, CUSTOMER, HEADER, HOT, TREASURY

SINCE = datetime(2024, 5, 1, tzinfo=UTC)
CANDIDATE = HEADER + f"""\
lists:
  treasury: ["{TREASURY}"]
  sanctioned: ["{BAD}"]
limits:
  - {{name: daily, chain: "56", window: 24h, max_count: 3, per: chain}}
rules:
  - {{name: block, to: {{in: [sanctioned]}}, action: reject}}
  - {{name: sweeps, to: {{in: [treasury]}}, action: approve}}
  - {{name: small, chain: "56", amount: {{max: "10"}}, action: approve}}
"""

# (id, at, to, amount or None, recorded action, rule): what the "old" daemon decided.
HISTORY: list[tuple[int, datetime, str, str | None, Action, str]] = [
    (90, SINCE - timedelta(days=2), CUSTOMER, "500", Action.HOLD, "<default>"),  # outside
    (91, SINCE - timedelta(hours=1), TREASURY, "1", Action.APPROVE, "sweeps"),   # counts
    (92, SINCE - timedelta(minutes=50), TREASURY, "1", Action.APPROVE, "sweeps"),  # counts
    (1, SINCE + timedelta(hours=1), TREASURY, "50", Action.APPROVE, "sweeps"),
    (2, SINCE + timedelta(hours=1, minutes=10), TREASURY, "50", Action.APPROVE, "sweeps"),
    (3, SINCE + timedelta(hours=2), BAD, "20", Action.APPROVE, "old-allow"),
    (5, SINCE + timedelta(days=2), CUSTOMER, "5", Action.HOLD, "<default>"),
    (6, SINCE + timedelta(days=3), TREASURY, "10", Action.HOLD, "sweeps"),  # paused, then:
    (6, SINCE + timedelta(days=3, hours=1), TREASURY, "10", Action.APPROVE, "sweeps"),
    (4, SINCE + timedelta(days=5), CUSTOMER, "500", Action.HOLD, "<default>"),
    (7, SINCE + timedelta(days=6), CUSTOMER, None, Action.HOLD, "<invalid>"),
]
EXPECTED_TRANSITIONS = {"approve->approve": 2, "approve->hold": 1, "approve->reject": 1,
                        "hold->approve": 1, "hold->hold": 2}


class Clock:
    def __init__(self) -> None:
        self.now = SINCE

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres",
                                     marks=pytest.mark.external_service)])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A journal (SQLite, PostgreSQL) holding HISTORY, its writer open during the test as
    the daemon's would be: backtest reads beside it."""
    clock = Clock()
    with contextlib.ExitStack() as stack:
        journal: Journal
        if request.param == "postgres":
            from cosigner.store.postgres import PostgresJournal
            from tests.postgres import scratch_database
            url = stack.enter_context(scratch_database("backtest"))
            journal = PostgresJournal(url, writer=True, clock=clock)
            journal.init()
        else:
            state = tmp_path / "state"
            state.mkdir(mode=0o700)
            url = f"sqlite://{state / 'journal.db'}"
            init_journal(url)
            journal = SqliteJournal(state / "journal.db", writer=True, clock=clock)
        journal.open()
        stack.callback(journal.close)
        _record_history(journal, clock)
        yield url


def _record_history(journal: Journal, clock: Clock) -> None:
    for item_id, at, to, amount, action, rule in HISTORY:
        raw: dict[str, Any] = {"id": item_id, "fromAddress": HOT, "toAddress": to,
                               "chainId": "56"}
        if amount is not None:
            raw["amount"] = amount
        clock.now = at
        journal.record_decisions([NewDecision(
            item_id=item_id, content_hash=PendingItem(raw).content_hash, chain_id="56",
            from_address=HOT, to_address=to, amount_text=amount, action=action, rule=rule,
            reasons=(f"rule:{rule}",), policy_name="old", policy_sha256="0" * 64,
            mode="enforce")])


@pytest.fixture
def candidate(write: Callable[..., Path]) -> Path:
    return write(CANDIDATE, "candidate.yaml")


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main(["policy", "backtest", *map(str, args)])
    return code, capsys.readouterr().out


class TestBacktest:
    """Exact counts over a journal whose answer the test knows."""

    def test_json_counts(self, journal_url: str, candidate: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
        """7 distinct items; 3 change: a limit hit, a sanctioned address, a new rule."""
        code, out = run(capsys, candidate, "--since", SINCE.isoformat(), "--json",
                        "--database-url", journal_url)
        report = json.loads(out)
        assert code == 1
        assert report["items"] == 7
        assert report["changed"] == 3
        assert report["transitions"] == EXPECTED_TRANSITIONS
        assert report["limits"] == {"daily": 1}
        changes = {c["id"]: c for c in report["changes"]}
        assert sorted(changes) == [2, 3, 5]
        assert changes[2]["current"] == {"action": "approve", "rule": "sweeps"}
        assert changes[2]["candidate"]["action"] == "hold"
        assert changes[2]["candidate"]["reasons"] == ["limit:daily"]
        assert changes[3]["candidate"]["rule"] == "block"
        assert changes[5]["candidate"] == {"action": "approve", "rule": "small",
                                           "reasons": ["rule:small"]}

    def test_nothing_changes_exits_0(self, journal_url: str, candidate: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """A window with only holds the candidate also holds: exit 0, readable report."""
        code, out = run(capsys, candidate, "--since", (SINCE + timedelta(days=4)).isoformat(),
                        "--database-url", journal_url)
        assert code == 0
        assert "2 items replayed, 0 would change" in out
        assert "hold->hold" in out

    def test_text_report_names_the_changes(self, journal_url: str, candidate: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """The human report lists each changed item with both rules."""
        code, out = run(capsys, candidate, "--since", SINCE.isoformat(),
                        "--database-url", journal_url)
        assert code == 1
        assert "item 3 " in out
        assert "approve (old-allow) -> reject (block" in out
        assert "daily (1x)" in out

    def test_a_missing_journal_is_a_config_error(self, tmp_path: Path, candidate: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        """Backtest never creates a journal."""
        code = main(["policy", "backtest", str(candidate), "--database-url",
                     f"sqlite://{tmp_path}/none/journal.db"])
        assert code == 2
        assert not (tmp_path / "none").exists()
