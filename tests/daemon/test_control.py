"""The kill switch in every deployment (issue 11 item 1): a default pause file beside the
journal, ``cosigner pause|resume|status``, ``cosigner_paused``, and a pause location the
daemon cannot check refused at start (exit 2)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from cosigner.cli import main
from cosigner.daemon.control import check_pause_location, pause, read_pause, resume
from cosigner.errors import ConfigError
from cosigner.settings import Settings
from tests.daemon.conftest import Rig, item, wait_for
from tests.daemon.test_service import running

SetEnv = Callable[..., None]


class TestDefaultPauseFile:
    """Every deployment has a kill switch: PAUSE beside the journal unless set."""

    @pytest.mark.parametrize(("url", "expected"), [
        ("sqlite:///var/lib/cosigner/journal.db", "/var/lib/cosigner/PAUSE"),
        ("sqlite:////data/j.db", "//data/PAUSE"),
        ("sqlite:var/journal.db", "var/PAUSE"),
        ("postgresql://u:p@db/cosigner", "/var/lib/cosigner/PAUSE"),
        ("memory://", "/var/lib/cosigner/PAUSE"),
    ])
    def test_derived_from_the_journal(self, url: str, expected: str) -> None:
        """The default follows the SQLite journal's directory, else /var/lib/cosigner."""
        settings = Settings(database_url=SecretStr(url), _env_file=None)  # type: ignore[call-arg]
        assert settings.pause_path() == Path(expected)

    def test_the_setting_wins(self, tmp_path: Path) -> None:
        """COSIGNER_PAUSE_FILE names the file explicitly."""
        settings = Settings(pause_file=tmp_path / "STOP", _env_file=None)  # type: ignore[call-arg]
        assert settings.pause_path() == tmp_path / "STOP"


class TestPauseFile:
    """pause writes the reason atomically; resume removes it; a hand-made file counts."""

    def test_pause_records_reason_time_and_who(self, tmp_path: Path) -> None:
        """The file holds reason, paused_at and by; read_pause gives them back."""
        path = tmp_path / "PAUSE"
        written = pause(path, "incident\n42:  wrong\tdestination")
        state = read_pause(path)
        assert state.paused
        assert state.reason == "incident 42: wrong destination" == written.reason
        assert state.paused_at.endswith("Z")
        assert "@" in state.by
        assert path.stat().st_mode & 0o777 == 0o640
        assert [p.name for p in tmp_path.iterdir()] == ["PAUSE"]  # no temporary left

    def test_a_touched_file_pauses(self, tmp_path: Path) -> None:
        """`touch PAUSE` or `echo text > PAUSE` pauses, the text being the reason."""
        path = tmp_path / "PAUSE"
        path.touch()
        assert read_pause(path).paused
        path.write_text("maintenance window\n", encoding="utf-8")
        assert read_pause(path).reason == "maintenance window"

    def test_resume_removes_and_reports(self, tmp_path: Path) -> None:
        """resume is True when it removed the file, False when there was none."""
        path = tmp_path / "PAUSE"
        pause(path, "x")
        assert resume(path) is True
        assert resume(path) is False
        assert not read_pause(path).paused

    def test_pause_into_a_missing_directory_is_a_config_error(self, tmp_path: Path) -> None:
        """The message names COSIGNER_PAUSE_FILE and the path."""
        with pytest.raises(ConfigError, match="COSIGNER_PAUSE_FILE: cannot write"):
            pause(tmp_path / "nowhere" / "PAUSE", "x")


class TestPauseLocationAtStart:
    """A pause file the daemon cannot check is a configuration error, found at start."""

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A directory that does not exist: the kill switch could never be pulled."""
        with pytest.raises(ConfigError, match=r"COSIGNER_PAUSE_FILE: directory .* does not"):
            check_pause_location(tmp_path / "absent" / "PAUSE")

    def test_uncheckable_path(self, tmp_path: Path) -> None:
        """A path stat() cannot answer for (here: a name too long) is refused, not a
        traceback on every poll."""
        with pytest.raises(ConfigError, match="COSIGNER_PAUSE_FILE: cannot check"):
            check_pause_location(tmp_path / ("x" * 300) / "PAUSE")

    def test_writable_directory(self, tmp_path: Path) -> None:
        """A usable location reports whether `cosigner pause` can create the file."""
        assert check_pause_location(tmp_path / "PAUSE") is True

    async def test_run_exits_2_naming_the_setting(self, rig: Rig, cosigner_env: SetEnv,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        """`cosigner run --once` with an unusable COSIGNER_PAUSE_FILE exits 2 with one line."""
        env = rig.env(PAUSE_FILE=rig.tmp / "absent" / "PAUSE")
        cosigner_env(**{k.removeprefix("COSIGNER_"): v for k, v in env.items()
                        if k.startswith("COSIGNER_") and k != "COSIGNER_REQUIRE_ALL"})
        try:
            assert main(["run", "--once"]) == 2
        finally:
            structlog.reset_defaults()  # build_daemon configures logging for the process
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith("cosigner: COSIGNER_PAUSE_FILE: directory ")
        assert await rig.received() == []


class TestKillSwitchByDefault:
    """Regression (issue 11): with no COSIGNER_PAUSE_FILE set, PAUSE beside the journal
    used to be ignored and items were approved."""

    async def test_default_pause_file_holds_everything(self, rig: Rig) -> None:
        """PAUSE in the journal's directory: held with reason paused, nothing posted, no
        collection, cosigner_paused 1; after resume the next run approves."""
        assert rig.settings.pause_file is None
        (approvable,) = await rig.add(item("5"))
        rig.db_path.parent.mkdir(exist_ok=True)
        pause(rig.db_path.parent / "PAUSE", "test")
        daemon = rig.build()

        assert await daemon.run_once() == 0

        assert await rig.received() == []
        assert await rig.admin.collections() == []
        record = rig.latest()[approvable]
        assert record.action.value == "hold"
        assert "paused" in record.reasons
        assert daemon.metrics.registry.get_sample_value("cosigner_paused") == 1
        assert daemon.metrics.registry.get_sample_value(
            "cosigner_collections_total", {"is_main": "1", "outcome": "ok"}) == 0

        resume(rig.db_path.parent / "PAUSE")
        again = rig.build()
        assert again.metrics.registry.get_sample_value("cosigner_paused") == 0
        assert await again.run_once() == 0
        assert [int(d["id"]) for d in await rig.received()] == [approvable]


class TestCommands:
    """pause, resume and status from the command line, with the daemon's settings."""

    def test_pause_status_resume(self, tmp_path: Path, cosigner_env: SetEnv,
                                 capsys: pytest.CaptureFixture[str]) -> None:
        """pause writes the reason, status shows it (text and JSON), resume ends it."""
        state = tmp_path / "state"
        state.mkdir()
        cosigner_env(DATABASE_URL=f"sqlite://{state}/journal.db", HTTP_ADDR="127.0.0.1:9",
                     MODE="shadow")
        assert main(["pause", "--reason", "incident 7"]) == 0
        assert "paused" in capsys.readouterr().out
        assert main(["status"]) == 0
        out = capsys.readouterr().out
        assert "PAUSED (incident 7" in out
        assert "mode:    shadow" in out
        assert "daemon:  not reachable" in out
        assert "does not exist" in out  # the journal: not created by status
        assert main(["status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["paused"] is True
        assert report["pause"]["reason"] == "incident 7"
        assert report["pause"]["file"] == f"{state}/PAUSE"
        assert report["daemon"]["reachable"] is False
        assert main(["resume"]) == 0
        assert "resumed" in capsys.readouterr().out
        assert main(["resume"]) == 0
        assert "not paused" in capsys.readouterr().out
        assert not (state / "PAUSE").exists()
        assert not (state / "journal.db").exists()

    async def test_status_reads_the_running_daemon(self, rig: Rig, cosigner_env: SetEnv,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        """status shows the live mode, policy, readiness, last poll and the journal."""
        await rig.add(item("5"))
        daemon = rig.build()
        async with running(daemon):
            await wait_for(lambda: daemon.polls >= 1, what="the first poll")
            assert daemon.http is not None
            env = rig.env(HTTP_ADDR=f"127.0.0.1:{daemon.http.port}")
            cosigner_env(**{k.removeprefix("COSIGNER_"): v for k, v in env.items()
                            if k.startswith("COSIGNER_") and k != "COSIGNER_REQUIRE_ALL"})
            # urllib is blocking: run status in a thread so the daemon's loop can answer.
            code = await asyncio.to_thread(main, ["status", "--json"])
        assert code == 0
        out = capsys.readouterr().out  # the in-process daemon logs to stdout as well
        report = json.loads(out[out.index("{\n"):out.index("\n}\n") + 2])
        live = report["daemon"]
        assert live["reachable"] is True
        assert live["mode"] == "enforce"
        assert live["paused"] is False
        assert live["policy"]["name"] == daemon.pipeline.state.policy.name
        assert live["last_poll_seconds_ago"] is not None
        assert report["journal"]["records"] >= 1
        assert report["paused"] is False
