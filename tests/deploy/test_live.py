"""The monitoring and the image, proven end to end (issue 11 item 7).

* A real Prometheus server (the Debian ``prometheus`` package) scrapes a real
  ``cosigner run`` process deciding against the sandbox, with the shipped rules loaded:
  its HTTP API shows ``up == 1``, decisions counted and every rule healthy.
  ``promtool check metrics`` lints the daemon's real ``/metrics``.
* The Dockerfile's install steps replayed outside Docker: the wheel built, the lock
  file installed with ``--require-hashes`` into a fresh venv without pip, then
  ``cosigner --help`` and ``cosigner run --once`` against the sandbox as uid 10001 with
  only the journal directory writable by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import require_tool
from tests.daemon.conftest import COSIGNER, Rig, item
from tests.deploy.conftest import DOCKERFILE, ROOT, RULES

UID = 10001


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def process(argv: list[str], *, env: dict[str, str] | None = None,
                  cwd: Path | None = None, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process with its output in ``log``, terminated and reaped on exit."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def until(check: Any, what: str, *, within: float = 60.0, log: Path | None = None) -> Any:
    """Poll the async ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            last = await check()
            if last:
                return last
        await asyncio.sleep(0.5)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log and log.exists() else ""


def promtool_lint(promtool: str, metrics: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, "check", "metrics"], input=metrics, text=True,
                          capture_output=True, timeout=30, check=False)


@pytest.mark.external_service
@pytest.mark.slow
class TestPrometheusScrapesTheDaemon:
    async def test_up_decisions_and_healthy_rules(self, rig: Rig, tmp_path: Path) -> None:
        """Prometheus sees up == 1, cosigner_decisions_total > 0, the daemon's build and
        mode, and every recording and alerting rule of rules.yml evaluates healthily;
        promtool check metrics accepts the daemon's /metrics."""
        prometheus = require_tool("prometheus", "the Prometheus server is not installed "
                                                "(apt-get install prometheus)")
        promtool = require_tool("promtool", "promtool is not installed (apt-get install "
                                            "prometheus)")
        assert prometheus is not None
        assert promtool is not None
        await rig.add(item("5"), item("500"), item("7"))
        daemon_port, prom_port = free_port(), free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "cosigner", "static_configs": [
                {"targets": [f"127.0.0.1:{daemon_port}"]}]}],
        }), encoding="utf-8")
        env = rig.env(HTTP_ADDR=f"127.0.0.1:{daemon_port}", POLL_INTERVAL="2",
                      COLLECT_INTERVAL="2")
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        async with process([str(COSIGNER), "run"], env=env, cwd=tmp_path,
                           log=tmp_path / "daemon.log"), \
                process([prometheus, f"--config.file={config}",
                         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                         f"--web.listen-address=127.0.0.1:{prom_port}"],
                        cwd=tmp_path, log=tmp_path / "prometheus.log"), \
                httpx.AsyncClient(trust_env=False, timeout=5) as http:

            async def query(expr: str) -> list[Any]:
                body = (await http.get(f"{api}/query", params={"query": expr})).json()
                assert body["status"] == "success", body
                return list(body["data"]["result"])

            async def scraped_decisions() -> list[Any]:
                return await query("sum(cosigner_decisions_total) > 0")

            async def rules_healthy() -> list[Any] | None:
                body = (await http.get(f"{api}/rules")).json()
                rules = [r for g in body["data"]["groups"] for r in g["rules"]]
                if not rules or any(r["health"] != "ok" for r in rules):
                    return None
                return rules

            up = await until(lambda: query('up{job="cosigner"} == 1'), "up == 1",
                             log=tmp_path / "prometheus.log")
            assert up[0]["metric"]["instance"] == f"127.0.0.1:{daemon_port}"
            decided = await until(scraped_decisions, "decisions in Prometheus",
                                  log=tmp_path / "daemon.log")
            assert float(decided[0]["value"][1]) >= 3
            rules = await until(rules_healthy, "every rule evaluated healthily")
            (doc,) = yaml.safe_load_all(RULES.read_text(encoding="utf-8"))
            assert len(rules) == sum(len(g["rules"]) for g in doc["groups"])
            assert await query('cosigner_build_info{version!=""} == 1')
            assert await query('cosigner_mode{mode="enforce"} == 1')
            assert await query("cosigner_poll_interval_seconds == 2")
            assert await query("process_start_time_seconds > 0")
            metrics = (await http.get(f"http://127.0.0.1:{daemon_port}/metrics")).text

        lint = promtool_lint(promtool, metrics)
        assert lint.returncode == 0, lint.stdout + lint.stderr


# -- the Dockerfile's install steps, outside Docker ------------------------------------


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="cosigner-image-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_uid(argv: list[str]) -> list[str]:
    """``argv`` run as uid/gid 10001 when we are root (as in the image), else as we are."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop to uid 10001")
    return [setpriv, f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *argv]


@pytest.fixture(scope="module")
def installed(image_root: Path) -> Path:
    """/opt/cosigner as the Dockerfile builds it: returns the venv's bin directory."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "python -m venv --without-pip /opt/cosigner" in text
    assert "install --no-deps --require-hashes" in text
    assert "pip wheel --no-deps --wheel-dir /wheels ." in text
    venv, wheels = image_root / "opt" / "cosigner", image_root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    steps = [
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-deps",
         "--require-hashes", "-r", str(ROOT / "requirements.lock")],
        [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)],
    ]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                check=False, cwd=image_root)
        assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    (wheel,) = wheels.glob("cosigner-*.whl")
    result = subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install",
                             "--quiet", "--no-deps", str(wheel)], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert not (venv / "bin" / "pip").exists()  # no installer in what ships
    return venv / "bin"


@pytest.mark.slow
class TestImageInstallReplayed:
    def test_help_runs_as_the_image_user(self, installed: Path, image_root: Path) -> None:
        """`cosigner --help` from the fresh venv, as uid 10001, lists the commands."""
        result = subprocess.run(as_uid([str(installed / "cosigner"), "--help"]),
                                capture_output=True, text=True, timeout=60, check=False,
                                cwd=image_root, env={"PATH": f"{installed}:/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        for command in ("run", "pause", "resume", "status", "shard", "audit"):
            assert command in result.stdout

    async def test_run_once_against_the_sandbox(self, installed: Path, image_root: Path,
                                                rig: Rig) -> None:
        """`cosigner journal init` then `cosigner run --once` decide and post as uid 10001
        with only the journal directory writable; the journal is 0600 in it."""
        (approvable,) = await rig.add(item("5"))
        work, journal_dir, shard, policy_dir = image_layout(image_root, rig)
        env = rig.env(PFX_PATH=shard, POLICY_PATH=policy_dir / rig.policy_path.name,
                      DATABASE_URL=f"sqlite://{journal_dir}/journal.db",
                      HTTP_ADDR="127.0.0.1:0")
        env.update(PATH=f"{installed}:/usr/bin:/bin", HOME=str(work))
        env = {k: v for k, v in env.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        for command in (["journal", "init"], ["run", "--once"]):  # run never creates one
            proc = await asyncio.create_subprocess_exec(
                *as_uid([str(installed / "cosigner"), *command]), env=env, cwd=work,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, (command, (out + err).decode(errors="replace")[-3000:])
        assert [int(d["id"]) for d in await rig.received()] == [approvable]
        assert owned_directories(work) == [journal_dir]
        database = (journal_dir / "journal.db").stat()
        assert database.st_mode & 0o777 == 0o600
        assert database.st_uid == (UID if os.geteuid() == 0 else os.geteuid())


def image_layout(image_root: Path, rig: Rig) -> tuple[Path, Path, Path, Path]:
    """The container's files: a journal directory 0700 owned by 10001 (the only place it
    may write), the shard 0400 owned by 10001, the policy read-only (root's)."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=image_root))
    work.chmod(0o755)
    journal_dir = work / "journal"
    journal_dir.mkdir(mode=0o700)
    secrets = work / "secrets"
    secrets.mkdir(mode=0o755)
    shard = secrets / "shard.pfx"
    shutil.copyfile(rig.shard.path, shard)
    shard.chmod(0o400)
    policy_dir = work / "policy"
    shutil.copytree(rig.policy_path.parent, policy_dir)
    if os.geteuid() == 0:
        os.chown(journal_dir, UID, UID)
        os.chown(shard, UID, UID)
    return work, journal_dir, shard, policy_dir


def owned_directories(work: Path) -> list[Path]:
    """Directories under ``work`` the daemon's user owns (so may write)."""
    uid = UID if os.geteuid() == 0 else os.geteuid()
    return sorted(p for p in work.rglob("*") if p.is_dir() and p.stat().st_uid == uid
                  and p.name != "__pycache__")
