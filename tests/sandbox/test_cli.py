"""``cosigner sandbox``: started as a subprocess from the venv, and its configuration errors."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from cosigner.api.client import ApiClient
from cosigner.cli import main
from cosigner.signing import Shard
from tests.conftest import ThrowawayShard
from tests.sandbox.conftest import API_KEY, API_SECRET, MERCHANT_NO, approval, make_client
from tests.sandbox.test_endpoints import ORDER

COSIGNER = Path(sys.executable).with_name("cosigner")


class Sandbox:
    """A ``cosigner sandbox`` process and the JSON log lines it wrote to stderr."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen([str(COSIGNER), "sandbox", *args], env=env, cwd=cwd,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_event(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                return dict(record)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=20)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code


@pytest.fixture
def sandbox_env(shard: ThrowawayShard) -> dict[str, str]:
    """The daemon's settings for the test merchant, nothing else of COSIGNER_* inherited.

    No COSIGNER_PFX_PASSWORD: the shard's password is the default, "1bitpay" + merchant no.
    """
    assert shard.password == "1bitpay" + MERCHANT_NO
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSIGNER_")}
    env.update(COSIGNER_MERCHANT_NO=MERCHANT_NO, COSIGNER_API_KEY=API_KEY,
               COSIGNER_API_SECRET=API_SECRET, COSIGNER_PFX_PATH=str(shard.path))
    return env


@pytest.fixture
def run_sandbox(tmp_path: Path, sandbox_env: dict[str, str]
                ) -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    def start(*args: str, env: dict[str, str] | None = None) -> Sandbox:
        process = Sandbox(list(args), env or sandbox_env, workdir)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
        if process.process.stderr is not None:
            process.process.stderr.close()


class TestSubprocess:
    async def test_starts_and_answers(self, run_sandbox: Callable[..., Sandbox],
                                      signer: Shard) -> None:
        """The command serves on a free port with seeded items and the PFX certificate."""
        sandbox = run_sandbox("--port", "0", "--seed-items", "5", "--seed", "1")
        started = sandbox.wait_event("sandbox.started")
        assert started["pending_items"] == 5
        assert started["certificate"] is True
        async with make_client(started["url"]) as api:
            snapshot = await api.pending()
            assert snapshot.total == 5
            fields, data = approval(signer, dict(snapshot.items[0].raw))
            await api.approve(fields, data)
        assert sandbox.stop() == 0
        output = "".join(sandbox.seen)
        assert "sandbox.stopped" in output
        assert API_SECRET not in output
        assert "1bitpayM-TEST-0001" not in output

    def test_readme_walkthrough(self, run_sandbox: Callable[..., Sandbox],
                                sandbox_env: dict[str, str], tmp_path: Path) -> None:
        """`cosigner otc rate` and `otc create` (twice) answer from a running sandbox."""
        sandbox = run_sandbox("--port", "0")
        url = sandbox.wait_event("sandbox.started")["url"]
        env = {**sandbox_env, "COSIGNER_API_BASE_URL": url}
        order = tmp_path / "order.json"
        order.write_text(json.dumps({**ORDER, "merchantOrderNo": "demo-1"}))

        def cosigner(*args: str) -> str:
            done = subprocess.run([str(COSIGNER), *args], env=env, cwd=tmp_path, text=True,
                                  capture_output=True, timeout=30, check=True)
            return done.stdout

        assert cosigner("otc", "rate", "USDT", "CNY").strip() == "USDT/CNY buy 6.47 sell 6.9"
        assert "isNew   true" in cosigner("otc", "create", "--file", str(order))
        assert "isNew   false" in cosigner("otc", "create", "--file", str(order))
        assert sandbox.stop() == 0

    async def test_state_file_survives_restart(self, run_sandbox: Callable[..., Sandbox],
                                               tmp_path: Path) -> None:
        """--state-file keeps the seeded items across two runs of the command."""
        db = str(tmp_path / "state.db")
        first = run_sandbox("--port", "0", "--state-file", db, "--seed-items", "3")
        first.wait_event("sandbox.started")
        assert first.stop() == 0
        second = run_sandbox("--port", "0", "--state-file", db)
        started = second.wait_event("sandbox.started")
        assert started["pending_items"] == 3
        async with make_client(started["url"]) as api:
            assert (await api.pending()).total == 3
        assert second.stop() == 0

    async def test_flags_override_settings(self, run_sandbox: Callable[..., Sandbox],
                                           sandbox_env: dict[str, str]) -> None:
        """--merchant-no/--api-key/--api-secret/--sign-sort replace the settings."""
        env = {k: v for k, v in sandbox_env.items() if k != "COSIGNER_PFX_PATH"}
        sandbox = run_sandbox("--port", "0", "--merchant-no", "M-FLAG", "--api-key", "K-FLAG",
                              "--api-secret", "flag-secret", "--sign-sort", "ascii", env=env)
        started = sandbox.wait_event("sandbox.started")
        assert (started["merchant_no"], started["sign_sort"]) == ("M-FLAG", "ascii")
        assert started["certificate"] is False
        async with ApiClient(started["url"], "M-FLAG", "K-FLAG", "flag-secret", sort="ascii",
                             retries=1) as api:
            assert (await api.rate("USDT", "CNY")).buy_rate_text == "6.47"
        assert sandbox.stop() == 0


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """The command configures structlog for the process: undo that after the test."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


class TestConfiguration:
    def test_missing_merchant_settings_exit_2(self, cosigner_env: Callable[..., None],
                                              capsys: pytest.CaptureFixture[str]) -> None:
        """Without merchant settings the command exits 2 naming every missing one."""
        cosigner_env(API_KEY="k")
        assert main(["sandbox", "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert "COSIGNER_MERCHANT_NO" in err
        assert "COSIGNER_API_SECRET" in err
        assert "COSIGNER_API_KEY" not in err

    def test_unreadable_pfx_exit_2(self, cosigner_env: Callable[..., None], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
        """A PFX that cannot be opened is a configuration error naming the file."""
        cosigner_env(MERCHANT_NO="M", API_KEY="K", API_SECRET="S",
                     PFX_PATH=tmp_path / "missing.pfx")
        assert main(["sandbox", "--port", "0"]) == 2
        assert "missing.pfx" in capsys.readouterr().err

    def test_port_in_use_exit_2(self, cosigner_env: Callable[..., None],
                                capsys: pytest.CaptureFixture[str],
                                restore_structlog: None) -> None:
        """A port that cannot be bound is reported with exit code 2."""
        cosigner_env(MERCHANT_NO="M", API_KEY="K", API_SECRET="S")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            assert main(["sandbox", "--port", str(port), "--log-format", "console"]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
