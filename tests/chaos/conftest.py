"""The chaos suites (issue 10): shared world, profiles and the figures each suite reports.

Two profiles:

* **short** (default, part of ``make test``): every suite with small counts, a few
  minutes at most on a busy CI machine;
* **long** (``make chaos``, ``COSIGNER_CHAOS=long``): the same suites with bigger counts
  (50 kills, more examples, more fault rounds) plus the cases marked ``chaos_long``
  (the soak).

Every suite records what it tried and what it measured with the ``figures`` fixture
(``figures.add("crash", kills=1)``, ``figures.high("crash", max_limit_ratio=0.8)``); the
totals are printed at the end of the run and, with ``COSIGNER_CHAOS_REPORT=FILE``,
written there as JSON (``docs/reliability.md`` quotes them).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr

from cosigner.sandbox import Merchant, SandboxServer
from cosigner.sandbox.generate import eip55_address
from cosigner.settings import Settings
from cosigner.signing.shard import certificate_pem
from tests.conftest import SHARD_PASSWORD, ShardFactory, ThrowawayShard

LONG = os.environ.get("COSIGNER_CHAOS") == "long"
REPORT_ENV = "COSIGNER_CHAOS_REPORT"

MERCHANT_NO = "M-TEST-0001"  # the default shard password is "1bitpay" + this
API_KEY = "ak-chaos"
API_SECRET = "chaos-api-secret-Pz41kq"
COSIGNER = Path(sys.executable).with_name("cosigner")
REPO = Path(__file__).resolve().parents[2]

HOT = eip55_address(bytes([0x11]) * 20)
SANCTIONED = eip55_address(bytes([0x5A]) * 20)
LIMIT_NAME = "bsc-window"
LIMIT_WINDOW_S = 3600
MAX_COUNT = 400
MAX_AMOUNT = Decimal("15000")
APPROVE_MAX = Decimal("100")

POLICY = f"""\
version: 1
name: chaos
default: hold
on_invalid: hold
on_limit: hold
chains:
  "56": {{name: bsc, address: evm, decimals: 18}}
lists:
  sanctioned: ["{SANCTIONED}"]
limits:
  - name: {LIMIT_NAME}
    chain: "56"
    window: 1h
    max_amount: "{MAX_AMOUNT}"
    max_count: {MAX_COUNT}
    per: chain
rules:
  - name: block-sanctioned
    to: {{in: [sanctioned]}}
    action: reject
  - name: small
    chain: "56"
    amount: {{max: "{APPROVE_MAX}"}}
    action: approve
"""


def scale(short: int, long: int) -> int:
    """A count for the profile in force."""
    return long if LONG else short


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LONG:
        return
    skip = pytest.mark.skip(reason="long chaos profile only (make chaos)")
    for item in items:
        if "chaos_long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """``cosigner run`` in-process configures structlog for its stderr; undo it after."""
    yield
    structlog.reset_defaults()


# -- figures ----------------------------------------------------------------------------

@dataclass
class Figures:
    """Counts and measurements per suite, summed (``add``) or maximised (``high``)."""

    suites: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, suite: str, **counts: float) -> None:
        entry = self.suites.setdefault(suite, {})
        for name, value in counts.items():
            entry[name] = entry.get(name, 0) + value

    def high(self, suite: str, **values: float) -> None:
        entry = self.suites.setdefault(suite, {})
        for name, value in values.items():
            entry[name] = max(entry.get(name, value), value)

    def lines(self) -> list[str]:
        out = []
        for suite in sorted(self.suites):
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.suites[suite].items()))
            out.append(f"{suite}: {values}")
        return out


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES.suites:
        return
    profile = "long" if LONG else "short"
    terminalreporter.write_sep("-", f"chaos figures ({profile} profile)")
    for line in _FIGURES.lines():
        terminalreporter.write_line(line)
    target = os.environ.get(REPORT_ENV)
    if target:
        Path(target).write_text(json.dumps({"profile": profile, "suites": _FIGURES.suites},
                                           indent=2, sort_keys=True) + "\n")


# -- items ------------------------------------------------------------------------------

def address(n: int) -> str:
    return eip55_address(n.to_bytes(20, "big"))


def backlog(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Pending items: mostly approvable payouts, some sanctioned (reject), some too large
    or on an unknown chain (hold)."""
    items = []
    for _ in range(count):
        roll = rng.random()
        to = address(rng.randrange(1, 2**32))
        amount = f"{rng.randrange(1, 10_000) / 100:.2f}"
        chain = "56"
        if roll < 0.1:
            to = SANCTIONED
        elif roll < 0.2:
            amount = str(rng.randrange(101, 100_000))
        elif roll < 0.25:
            chain = "1"
        items.append({"fromAddress": HOT, "toAddress": to, "amount": amount, "chainId": chain})
    return items


def allowed(body: Mapping[str, Any]) -> bool:
    """The chaos policy's approve rule, written independently of the policy engine."""
    try:
        amount = Decimal(str(body.get("value")))
    except ArithmeticError:
        return False
    return (str(body.get("chainId")) == "56" and body.get("to") != SANCTIONED
            and str(body.get("to", "")).lower() != SANCTIONED.lower()
            and amount.is_finite() and Decimal(0) < amount <= APPROVE_MAX)


# -- the world --------------------------------------------------------------------------

class Clock:
    """The sandbox's clock in ms, movable with the daemon's (``offset_s``)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> int:
        import time
        return int((time.time() + self.offset_s) * 1000)


@dataclass
class World:
    """A sandbox with the merchant registered, a shard, the chaos policy, a journal path."""

    tmp: Path
    shard: ThrowawayShard
    server: SandboxServer
    admin: Admin
    policy_path: Path
    db_path: Path
    clock: Clock

    @property
    def database_url(self) -> str:
        return f"sqlite://{self.db_path}"

    def settings(self, **changes: Any) -> Settings:
        values: dict[str, Any] = dict(
            api_base_url=self.server.url, merchant_no=MERCHANT_NO, api_key=API_KEY,
            api_secret=SecretStr(API_SECRET), pfx_path=self.shard.path,
            policy_path=self.policy_path, database_url=SecretStr(self.database_url),
            http_addr="127.0.0.1:0", poll_interval=0.3, collect_interval=0.5,
            request_timeout=2.0, log_format="json", log_level="info", concurrency=4)
        values.update(changes)
        return Settings(**values)

    def env(self, **overrides: str | os.PathLike[str]) -> dict[str, str]:
        """``COSIGNER_*`` settings for a ``cosigner`` subprocess (nothing else of ours)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("COSIGNER_") or k == "COSIGNER_REQUIRE_ALL"}
        values: dict[str, str | os.PathLike[str]] = {
            "API_BASE_URL": self.server.url, "MERCHANT_NO": MERCHANT_NO, "API_KEY": API_KEY,
            "API_SECRET": API_SECRET, "PFX_PATH": self.shard.path,
            "POLICY_PATH": self.policy_path, "DATABASE_URL": self.database_url,
            "HTTP_ADDR": "127.0.0.1:0", "POLL_INTERVAL": "0.3", "COLLECT_INTERVAL": "0.5",
            "REQUEST_TIMEOUT": "2", "LOG_FORMAT": "json", "LOG_LEVEL": "info",
            "CONCURRENCY": "4", "PAUSE_FILE": self.tmp / "pause"}
        values.update(overrides)
        for name, value in values.items():
            env[f"COSIGNER_{name}"] = os.fspath(value)
        env["PYTHONPATH"] = str(REPO)
        return {k: v for k, v in env.items() if v != ""}


class Admin:
    """A synchronous client of the sandbox's ``/sandbox/`` routes (usable from any thread)."""

    def __init__(self, url: str) -> None:
        self._http = httpx.Client(base_url=url + "/sandbox", timeout=30)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def add_items(self, items: list[dict[str, Any]]) -> list[int]:
        return [int(i["id"]) for i in self._call("POST", "/items", {"items": items})["items"]]

    def items(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/items")["items"])

    def pending_ids(self) -> set[int]:
        return {int(i["item"]["id"]) for i in self.items() if i["status"] == "pending"}

    def decisions(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/decisions")["decisions"])

    def collections(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/collections")["collections"])

    def set_faults(self, **config: Any) -> None:
        self._call("POST", "/faults", config)

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")


@pytest.fixture
def world(tmp_path: Path, shard_factory: ShardFactory,
          cosigner_env: Callable[..., None]) -> Iterator[World]:
    """The sandbox runs in its own thread, so tests may block (wait for a process)."""
    # Valid from two days back: the crash suite moves the daemon's clock back by up to
    # 30 minutes, which must not make the shard "not yet valid".
    now = datetime.now(UTC)
    shard = shard_factory("shard.pfx", password=SHARD_PASSWORD, mode=0o600,
                          not_before=now - timedelta(days=2), not_after=now + timedelta(days=365))
    merchant = Merchant(MERCHANT_NO, API_KEY, API_SECRET,
                        certificate_pem=certificate_pem(shard.certificate))
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    policy_path = policy_dir / "chaos.yaml"
    policy_path.write_text(POLICY, encoding="utf-8")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    clock = Clock()
    with SandboxServer(merchants=[merchant], clock=clock) as server:
        admin = Admin(server.url)
        try:
            yield World(tmp_path, shard, server, admin, policy_path,
                        state_dir / "journal.db", clock)
        finally:
            admin.close()
            server.state.close()
