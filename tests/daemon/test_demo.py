"""``cosigner demo``: the real daemon against the embedded sandbox, with its summary."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
import structlog

from cosigner.tools.demo import run_demo
from tests.daemon.conftest import COSIGNER, REPO

SUMMARY = re.compile(
    r"^summary: (\d+) approved, (\d+) rejected, (\d+) held \((\d+) mutations\); the sandbox "
    r"received (\d+) decisions \((\d+) with a valid signature\) and (\d+) collections\.$",
    re.MULTILINE)


@pytest.fixture
def reset_logging() -> Iterator[None]:
    """The demo configures structlog for the process; put the defaults back afterwards."""
    yield
    structlog.reset_defaults()


class TestDemoInProcess:
    """``run_demo`` with short intervals shows decisions and a consistent summary."""

    def test_the_demo_decides_posts_and_summarises(self, reset_logging: None) -> None:
        """Approvals, rejections and holds appear, and every posted data verifies."""
        out = StringIO()

        code = run_demo(duration=6, policy=str(REPO / "policies" / "treasury.yaml"),
                        out=out, interval=0.3)

        assert code == 0
        text = out.getvalue()
        match = SUMMARY.search(text)
        assert match, text
        approved, rejected, held, _mutations, received, verified, collections = map(
            int, match.groups())
        assert approved > 0
        assert rejected > 0
        assert held > 0
        assert 0 < received == verified <= approved + rejected
        assert collections >= 2
        assert "block-sanctioned" in text
        assert "<invalid>" in text

    def test_a_missing_policy_is_a_config_error(self, tmp_path: Path) -> None:
        """Run outside a checkout without --policy, the demo names the file it needs."""
        from cosigner.errors import ConfigError

        with pytest.raises(ConfigError, match="policy not found"):
            run_demo(duration=1, policy=str(tmp_path / "nope.yaml"))


@pytest.mark.slow
class TestDemoCommand:
    """``cosigner demo --duration 20`` from the checkout, as a new user runs it."""

    def test_the_demo_command_exits_zero_with_its_summary(self) -> None:
        """The command shows decisions within seconds and ends with the summary line."""
        done = subprocess.run([str(COSIGNER), "demo", "--duration", "20"], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)

        assert done.returncode == 0, done.stderr
        match = SUMMARY.search(done.stdout)
        assert match, done.stdout
        approved, rejected, held, mutations, received, verified, _ = map(int, match.groups())
        assert approved > 0
        assert rejected > 0
        assert held > 0
        assert mutations == 1
        assert received == verified
        assert "Traceback" not in done.stderr
