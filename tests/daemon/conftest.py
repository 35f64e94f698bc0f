"""Fixtures of the daemon tests: the real daemon, built from settings, against a real
sandbox on a loopback socket, with a throwaway shard, a small policy and a SQLite journal.

:class:`Rig` holds everything one test needs; ``rig.build()`` makes a daemon the way
``cosigner run`` does (``build_daemon``), ``rig.env()`` gives the same settings as
``COSIGNER_*`` variables for a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from cosigner.cli.daemon import daemon_spec
from cosigner.daemon.build import BuildOptions, build_daemon
from cosigner.daemon.service import Daemon
from cosigner.sandbox import Merchant, SandboxAdmin, SandboxServer
from cosigner.sandbox.generate import eip55_address
from cosigner.settings import Settings
from cosigner.signing.shard import certificate_pem
from cosigner.store import DecisionRecord, SqliteJournal, init_journal
from tests.conftest import SHARD_PASSWORD, ShardFactory, ThrowawayShard

MERCHANT_NO = "M-TEST-0001"  # the default shard password is "1bitpay" + this: SHARD_PASSWORD
API_KEY = "ak-daemon-test"
API_SECRET = "daemon-test-api-secret-Zq81"
COSIGNER = Path(sys.executable).with_name("cosigner")
REPO = Path(__file__).resolve().parents[2]

HOT = eip55_address(bytes([0x11]) * 20)
SANCTIONED = eip55_address(bytes([0x5A]) * 20)
POLICY_NAME = "daemon-test"
LIMIT = "bsc-count"
MAX_COUNT = 3

POLICY = f"""\
version: 1
name: {POLICY_NAME}
default: hold
on_invalid: hold
on_limit: hold
chains:
  "56": {{name: bsc, address: evm, decimals: 18}}
lists:
  sanctioned: ["{SANCTIONED}"]
limits:
  - name: {LIMIT}
    chain: "56"
    window: 24h
    max_count: {MAX_COUNT}
    per: chain
rules:
  - name: block-sanctioned
    to: {{in: [sanctioned]}}
    action: reject
  - name: small
    chain: "56"
    amount: {{max: "100"}}
    action: approve
"""


def address(n: int) -> str:
    """A valid EIP-55 address, distinct for each ``n`` (0..255)."""
    return eip55_address(bytes([n]) * 20)


def item(amount: str = "5", *, to: str | None = None, chain: str = "56",
         **extra: Any) -> dict[str, Any]:
    """The fields of a pending item (the sandbox numbers it)."""
    return {"fromAddress": HOT, "toAddress": to or address(0x22), "amount": amount,
            "chainId": chain, **extra}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text as ``{(sample name, labels): value}``."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(values: Mapping[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /,
           **labels: str) -> float | None:
    """One sample of :func:`samples` (labels may include ``name``, as policy_info's do)."""
    return values.get((metric, frozenset(labels.items())))


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0,
                   what: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Rig:
    """One test's world: shard, sandbox, policy, settings and the journal's path."""

    tmp: Path
    shard: ThrowawayShard
    server: SandboxServer
    admin: SandboxAdmin
    policy_path: Path
    db_path: Path
    settings: Settings
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return f"sqlite://{self.db_path}"

    def build(self, settings: Settings | None = None, **options: Any) -> Daemon:
        """``build_daemon`` as ``cosigner run`` does, for in-process use (no signals, no
        global logging setup, a fast policy watch); every daemon is closed at teardown."""
        opts: dict[str, Any] = {"install_signals": False, "configure_logs": False,
                                "watch_interval": 0.2}
        opts.update(options)
        daemon = build_daemon(daemon_spec(settings or self.settings), BuildOptions(**opts))
        self.daemons.append(daemon)
        return daemon

    def with_settings(self, **changes: Any) -> Settings:
        return self.settings.model_copy(update=changes)

    async def add(self, *items: Mapping[str, Any]) -> list[int]:
        """Queue pending items in the sandbox; their ids, in order."""
        added = await self.admin.add_items(list(items))
        return [int(a["id"]) for a in added]

    async def statuses(self) -> dict[int, str]:
        """Each sandbox item's status: pending, approved or rejected."""
        return {int(i["item"]["id"]): i["status"] for i in await self.admin.items()}

    async def received(self) -> list[dict[str, Any]]:
        """Every approve the sandbox received."""
        return await self.admin.decisions()

    async def post_counts(self) -> Counter[int]:
        """How many approves the sandbox received per item id."""
        return Counter(int(d["id"]) for d in await self.received())

    @contextlib.contextmanager
    def journal(self) -> Iterator[SqliteJournal]:
        """The journal file opened for reading (never created here)."""
        journal = SqliteJournal(self.db_path)
        journal.open()
        try:
            yield journal
        finally:
            journal.close()

    def records(self) -> dict[int, list[DecisionRecord]]:
        """Every decision in the journal, by item id, oldest first."""
        out: dict[int, list[DecisionRecord]] = {}
        with self.journal() as journal:
            for record in journal.records():
                out.setdefault(record.item_id, []).append(record)
        return out

    def latest(self) -> dict[int, DecisionRecord]:
        return {item_id: recs[-1] for item_id, recs in self.records().items()}

    def env(self, **overrides: str | os.PathLike[str]) -> dict[str, str]:
        """The process environment with these settings as ``COSIGNER_*`` (and nothing else
        of cosigner's), for ``cosigner`` subprocesses."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("COSIGNER_") or k == "COSIGNER_REQUIRE_ALL"}
        values: dict[str, str | os.PathLike[str]] = {
            "API_BASE_URL": self.server.url, "MERCHANT_NO": MERCHANT_NO, "API_KEY": API_KEY,
            "API_SECRET": API_SECRET, "PFX_PATH": self.shard.path,
            "POLICY_PATH": self.policy_path, "DATABASE_URL": self.database_url,
            "HTTP_ADDR": "127.0.0.1:0", "POLL_INTERVAL": "0.3", "COLLECT_INTERVAL": "0.5",
            "REQUEST_TIMEOUT": "3", "LOG_FORMAT": "json", "LOG_LEVEL": "info"}
        values.update(overrides)
        for name, value in values.items():
            env[f"COSIGNER_{name}"] = os.fspath(value)
        return {k: v for k, v in env.items() if v != ""}


@pytest.fixture
def test_policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy" / "test.yaml"
    path.parent.mkdir()
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
async def rig(tmp_path: Path, shard_factory: ShardFactory, test_policy: Path,
              cosigner_env: Callable[..., None]) -> AsyncIterator[Rig]:
    """A sandbox in the test's loop with the merchant and certificate registered, and
    settings for a daemon against it (short intervals, HTTP on a free port)."""
    shard = shard_factory("shard.pfx", password=SHARD_PASSWORD, mode=0o600)
    merchant = Merchant(MERCHANT_NO, API_KEY, API_SECRET,
                        certificate_pem=certificate_pem(shard.certificate))
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    db_path = state_dir / "journal.db"
    init_journal(f"sqlite://{db_path}")  # run never creates a journal
    async with SandboxServer(merchants=[merchant]) as server, \
            SandboxAdmin(server.url) as admin:
        settings = Settings(
            api_base_url=server.url, merchant_no=MERCHANT_NO, api_key=API_KEY,
            api_secret=SecretStr(API_SECRET), pfx_path=shard.path,
            policy_path=test_policy, database_url=SecretStr(f"sqlite://{db_path}"),
            http_addr="127.0.0.1:0", poll_interval=0.3, collect_interval=0.5,
            request_timeout=3.0, log_format="json", log_level="info",
            # Each API connection is its own httpx client with its own TLS context
            # (~25 ms to make); a few are plenty for a test's handful of items.
            concurrency=2)
        world = Rig(tmp_path, shard, server, admin, test_policy, db_path, settings)
        try:
            yield world
        finally:
            for daemon in world.daemons:
                daemon.request_stop()
                await daemon.close()
            server.state.close()

