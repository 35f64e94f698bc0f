"""``cosigner run --once``: one poll and one collection; 0 when every step succeeded,
1 when one failed, 2 (one line naming the problem) when the configuration is bad."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from cosigner.cli import main
from cosigner.errors import ConfigError
from tests.conftest import SHARD_PASSWORD
from tests.daemon.conftest import API_SECRET, COSIGNER, SANCTIONED, Rig, item


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str


async def cosigner(*args: str, env: dict[str, str], cwd: Path, within: float = 30.0) -> Done:
    """Run the installed ``cosigner`` command without blocking the sandbox's loop."""
    process = await asyncio.create_subprocess_exec(
        str(COSIGNER), *args, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def remove_database(path: Path) -> None:
    """Delete a SQLite database with its WAL files, leaving its marker behind."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_in_process(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str], **overrides: str | Path) -> Done:
    """``cosigner run --once`` through :func:`cosigner.cli.main` with the rig's settings
    as ``COSIGNER_*`` variables; for configuration errors, raised before any event loop."""
    for name, value in rig.env(**overrides).items():
        if name.startswith("COSIGNER_"):
            monkeypatch.setenv(name, value)
    for name in ("API_KEY", "API_SECRET"):
        if overrides.get(name) == "":
            monkeypatch.delenv(f"COSIGNER_{name}", raising=False)
    try:
        code = main(["run", "--once"])
    finally:
        structlog.reset_defaults()  # build_daemon configures logging for the process
    out, err = capsys.readouterr()
    return Done(code, out, err)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestOnceInProcess:
    """``Daemon.run_once()`` reports whether the poll and the collection both succeeded."""

    async def test_all_steps_succeeding_give_zero(self, rig: Rig) -> None:
        """A clean poll and collection round return 0 and close the journal."""
        await rig.add(item("5"), item("500"))
        daemon = rig.build()

        assert await daemon.run_once() == 0

        assert daemon.polls == 1
        assert daemon.collections == 1
        assert daemon.readiness()["journal_writable"] is False

    async def test_a_sandbox_that_is_down_gives_one(self, rig: Rig) -> None:
        """Nothing listening at the API address fails the poll and the collection."""
        daemon = rig.build(rig.with_settings(api_base_url=f"http://127.0.0.1:{free_port()}"),
                           client_retries=1)

        assert await daemon.run_once() == 1

        assert daemon.metrics.registry.get_sample_value(
            "cosigner_api_errors_total", {"endpoint": "pending", "kind": "connect"}) == 1
        assert daemon.metrics.registry.get_sample_value(
            "cosigner_last_poll_success_timestamp_seconds") == 0

    @pytest.mark.parametrize("faults", [
        {"errorRate": 1.0, "endpoints": ["pending"]},
        {"nonJsonRate": 1.0, "endpoints": ["pending"]},
        {"dropRate": 1.0, "endpoints": ["pending"]},
        {"errorRate": 1.0, "endpoints": ["collect"]},
    ], ids=["pending-5xx", "pending-html", "pending-dropped", "collect-5xx"])
    async def test_a_failing_step_gives_one(self, rig: Rig, faults: dict[str, object]) -> None:
        """A poll or a collection that fails (after retries) makes the exit code 1."""
        (held,) = await rig.add(item("5"))
        await rig.admin.set_faults(faults)

        assert await rig.build(client_retries=1).run_once() == 1

        if "pending" in faults["endpoints"]:  # type: ignore[operator]
            assert await rig.received() == []
            assert held not in rig.latest()

    async def test_an_unsettled_post_gives_one(self, rig: Rig) -> None:
        """A post whose answer was lost (its outcome unknown) is not a step that succeeded."""
        await rig.add(item("5"))
        await rig.admin.set_faults({"dropRate": 1.0, "endpoints": ["approve"]})

        assert await rig.build().run_once() == 1

        assert rig.latest()[1].state == "decided"

    async def test_a_transient_pending_fault_is_retried(self, rig: Rig) -> None:
        """One 5xx on the pending list is retried and the cycle still succeeds."""
        (approve,) = await rig.add(item("5"))
        await rig.admin.set_faults({"errorRate": 1.0, "endpoints": ["pending"], "limit": 1})

        assert await rig.build().run_once() == 0

        assert await rig.post_counts() == {approve: 1}


class TestOnceCli:
    """``cosigner run --once`` as a subprocess, configured through the environment."""

    async def test_a_clean_run_exits_zero(self, rig: Rig) -> None:
        """With every setting in place the command decides, posts, collects and exits 0."""
        approve, reject, hold = await rig.add(item("5"), item("5", to=SANCTIONED),
                                              item("500"))

        done = await cosigner("run", "--once", env=rig.env(LOG_LEVEL="debug"), cwd=rig.tmp)

        assert done.code == 0, done.stderr
        assert sorted((d["id"], d["status"]) for d in await rig.received()) == [
            (approve, 1), (reject, 2)]
        assert len(await rig.admin.collections()) == 2
        assert rig.latest()[hold].state == "decided"
        for event in ("poll.done", "item.decided", "item.posted", "collect.done"):
            assert f'"event": "{event}"' in done.stderr
        for secret in (API_SECRET, SHARD_PASSWORD):
            assert secret not in done.stdout + done.stderr

    async def test_a_failing_poll_exits_one(self, rig: Rig) -> None:
        """A sandbox that answers the pending list with errors makes the command exit 1."""
        await rig.admin.set_faults({"errorRate": 1.0, "endpoints": ["pending"]})

        done = await cosigner("run", "--once", env=rig.env(), cwd=rig.tmp)

        assert done.code == 1
        assert '"event": "poll.failed"' in done.stderr

    async def test_a_missing_journal_where_one_existed_exits_two(self, rig: Rig) -> None:
        """With the marker left behind and the database gone, the daemon refuses to start
        from empty."""
        assert await rig.build().run_once() == 0
        remove_database(rig.db_path)
        (approve,) = await rig.add(item("5"))

        done = await cosigner("run", "--once", env=rig.env(), cwd=rig.tmp)

        assert done.code == 2
        assert str(rig.db_path) in done.stderr
        assert not rig.db_path.exists()
        assert approve not in await rig.post_counts()

    async def test_an_http_address_in_use_exits_two(self, rig: Rig) -> None:
        """``cosigner run`` whose metrics port is taken exits 2 naming COSIGNER_HTTP_ADDR."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]

            done = await cosigner("run", env=rig.env(HTTP_ADDR=f"127.0.0.1:{port}"),
                                  cwd=rig.tmp)

        assert done.code == 2
        assert done.stderr.strip().splitlines()[-1].startswith(
            f"cosigner: COSIGNER_HTTP_ADDR 127.0.0.1:{port}: cannot listen")
        assert "Traceback" not in done.stderr


class TestOnceConfigErrors:
    """Configuration problems stop ``cosigner run --once`` before anything is posted: exit 2
    with one line naming the setting or file.  They fail before ``main`` starts an event
    loop, so it runs in-process here (the subprocess tests cover the console script)."""

    async def test_missing_settings_exit_two_naming_them(
            self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        """Without API key and secret the command exits 2 naming both settings."""
        done = run_in_process(rig, monkeypatch, capsys, API_KEY="", API_SECRET="")

        assert done.code == 2
        assert done.stderr.strip().splitlines() == [
            "cosigner: COSIGNER_API_KEY, COSIGNER_API_SECRET must be set to run the daemon"]
        assert rig.latest() == {}

    async def test_a_bad_policy_exits_two_with_file_and_line(
            self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        """A policy that does not load is never used: exit 2 with file:line."""
        bad = rig.tmp / "bad.yaml"
        bad.write_text(rig.policy_path.read_text().replace("default: hold", "default: approve"),
                       encoding="utf-8")

        done = run_in_process(rig, monkeypatch, capsys, POLICY_PATH=bad)

        assert done.code == 2
        assert done.stderr == (f"cosigner: {bad}:3: default: approve is refused: only an "
                               "explicit rule may approve\n")
        assert await rig.received() == []

    async def test_a_bad_shard_password_exits_two_without_the_password(
            self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        """A wrong PFX password is refused and never printed."""
        wrong = "not-the-shard-password-93Xk"

        done = run_in_process(rig, monkeypatch, capsys, PFX_PASSWORD=wrong)

        assert done.code == 2
        assert done.stderr.startswith(f"cosigner: {rig.shard.path}: wrong password")
        assert "COSIGNER_PFX_PASSWORD" in done.stderr
        assert wrong not in done.stdout + done.stderr
        assert len(done.stderr.strip().splitlines()) == 1

    async def test_a_shard_readable_by_others_exits_two(
            self, rig: Rig, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        """A PFX readable by group or others is refused before anything is posted."""
        (approve,) = await rig.add(item("5"))
        rig.shard.path.chmod(0o644)

        done = run_in_process(rig, monkeypatch, capsys)

        assert done.code == 2
        assert "shard file mode is 0644" in done.stderr
        assert approve not in await rig.post_counts()


class TestHttpAddressInUse:
    """The daemon refuses to run without its observability endpoint."""

    async def test_run_raises_a_config_error_and_closes_the_journal(self, rig: Rig) -> None:
        """A taken HTTP port raises ConfigError (exit 2) and leaves nothing open."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            daemon = rig.build(rig.with_settings(http_addr=f"127.0.0.1:{port}"))

            with pytest.raises(ConfigError, match=f"COSIGNER_HTTP_ADDR 127.0.0.1:{port}"):
                await daemon.run()

        assert daemon.readiness()["journal_writable"] is False
        assert daemon.http is None


def test_the_cosigner_command_is_installed() -> None:
    """The subprocess tests run the venv's own ``cosigner`` entry point."""
    assert os.access(COSIGNER, os.X_OK)
