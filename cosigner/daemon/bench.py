"""``cosigner bench``: end-to-end throughput of the daemon against the sandbox.

The sandbox runs in its own process (so daemon and provider each get a core, as
they would in production), is given N generated pending items, and the real
pipeline of ``cosigner run`` decides, journals (SQLite, ``synchronous=FULL``, or
the empty PostgreSQL database ``--database-url`` names), signs and posts every one.
The figure that matters is the wall time of that one poll cycle; the target is
10,000 items in under 30 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from cosigner.errors import ConfigError, CosignerError
from cosigner.sandbox import SandboxAdmin
from cosigner.sandbox.generate import eip55_address
from cosigner.settings import Settings
from cosigner.signing.throwaway import make_throwaway_shard
from cosigner.store import init_journal, open_journal
from cosigner.store.postgres import mask_url

from .build import BuildOptions, build_daemon

MERCHANT_NO = "M-BENCH-0001"
API_KEY = "ak-bench"

BENCH_POLICY = """\
version: 1
name: bench
default: hold
on_invalid: hold
on_limit: hold
chains:
  "56":  {{name: bsc, address: evm, decimals: 18}}
  "1":   {{name: ethereum, address: evm, decimals: 18}}
  "195": {{name: tron, address: tron, decimals: 6}}
lists:
  sanctioned: ["{sanctioned}"]
limits:
  - name: per-chain-daily
    window: 24h
    max_amount: "1000000000"
    max_count: 1000000
    per: chain
rules:
  - name: block-sanctioned
    to: {{in: [sanctioned]}}
    action: reject
  - name: reject-huge
    amount: {{min: "20000"}}
    action: reject
  - name: payouts
    amount: {{max: "19999.99"}}
    action: approve
"""


@dataclass
class BenchResult:
    """The figures of one bench run."""

    items: int
    seconds: float
    items_per_second: float
    approved: int
    rejected: int
    held: int
    posted: int
    received_by_sandbox: int
    verified_by_sandbox: int
    concurrency: int
    daemon_cpu_seconds: float
    sandbox_cpu_seconds: float | None
    ok: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_bench(items: int = 10000, concurrency: int | None = None, *,
              as_json: bool = False, database_url: str | None = None) -> int:
    """Run the benchmark and print its figures; exit 0 when every item was handled."""
    result = asyncio.run(bench(items, concurrency, database_url=database_url))
    if as_json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.items} pending items decided and posted in {result.seconds:.2f} s "
              f"({result.items_per_second:.0f} items/s, concurrency {result.concurrency})")
        print(f"approved {result.approved}, rejected {result.rejected}, held {result.held}; "
              f"posted {result.posted}; the sandbox received {result.received_by_sandbox}, "
              f"{result.verified_by_sandbox} with a valid signature")
        print(f"CPU during the cycle: daemon {result.daemon_cpu_seconds} s, sandbox "
              f"{result.sandbox_cpu_seconds} s")
    return 0 if result.ok else 1


async def bench(items: int, concurrency: int | None = None, *,
                database_url: str | None = None) -> BenchResult:
    """Start a sandbox process, queue ``items`` items, run one poll cycle, measure it.

    ``database_url``: an empty journal to use (created if absent), e.g. a PostgreSQL
    database; by default a temporary SQLite file."""
    if items < 1:
        raise CosignerError("--items must be at least 1")
    if database_url is not None:
        init_journal(database_url)
        journal = open_journal(database_url)
        try:
            if journal.head().seq:
                raise ConfigError(f"--database-url {mask_url(database_url)}: the journal is "
                                  "not empty; bench needs an empty one")
        finally:
            journal.close()
    with tempfile.TemporaryDirectory(prefix="cosigner-bench-") as tmp:
        work = Path(tmp)
        secret = secrets.token_urlsafe(24)
        password = "1bitpay" + MERCHANT_NO
        make_throwaway_shard(work / "shard.pfx", password, common_name="cosigner bench shard")
        policy = work / "bench.yaml"
        policy.write_text(BENCH_POLICY.format(sanctioned=eip55_address(b"\x01" * 20)),
                          encoding="utf-8")
        port = _free_port()
        env = {**os.environ, "COSIGNER_MERCHANT_NO": MERCHANT_NO, "COSIGNER_API_KEY": API_KEY,
               "COSIGNER_API_SECRET": secret, "COSIGNER_PFX_PATH": str(work / "shard.pfx"),
               "COSIGNER_PFX_PASSWORD": password, "COSIGNER_LOG_LEVEL": "warning"}
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured part
            [sys.executable, "-m", "cosigner", "sandbox", "--port", str(port)],
            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(url, proc)
            async with SandboxAdmin(url, timeout=120) as admin:
                await admin.generate_items(items, seed=42)
                journal_url = database_url or f"sqlite://{work / 'journal.db'}"
                if database_url is None:
                    init_journal(journal_url)  # run never creates a journal
                settings = Settings(
                    api_base_url=url, merchant_no=MERCHANT_NO, api_key=API_KEY,
                    api_secret=SecretStr(secret), pfx_path=work / "shard.pfx",
                    pfx_password=SecretStr(password), policy_path=policy,
                    database_url=SecretStr(journal_url),
                    http_addr="127.0.0.1:0", log_level="error",
                    max_pending=max(items, 10000),
                    concurrency=concurrency or int(os.environ.get("COSIGNER_CONCURRENCY", 8)),
                    mode="enforce", pause_file=None, request_timeout=30.0, leader_retry=0.2)
                daemon = build_daemon(settings, BuildOptions(install_signals=False))
                await daemon.await_leadership()  # PostgreSQL: the only replica leads
                cpu0, sandbox0 = time.process_time(), _cpu_of(proc.pid)
                started = time.perf_counter()
                try:
                    result = await daemon.pipeline.poll()
                finally:
                    seconds = time.perf_counter() - started
                    cpu = time.process_time() - cpu0
                    sandbox1 = _cpu_of(proc.pid)
                    await daemon.close()
                received = await admin.decisions()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
    verified = sum(1 for d in received if d.get("verified") is True)
    handled = result.approved + result.rejected + result.held
    ok = (result.ok and handled == items and result.posted == result.approved + result.rejected
          and verified == result.posted)
    return BenchResult(items=items, seconds=round(seconds, 3),
                       items_per_second=round(items / seconds, 1), approved=result.approved,
                       rejected=result.rejected, held=result.held, posted=result.posted,
                       received_by_sandbox=len(received), verified_by_sandbox=verified,
                       concurrency=settings.concurrency, daemon_cpu_seconds=round(cpu, 2),
                       sandbox_cpu_seconds=(round(sandbox1 - sandbox0, 2)
                                            if sandbox0 is not None and sandbox1 is not None
                                            else None),
                       ok=ok)


def _cpu_of(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_ready(url: str, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
                raise CosignerError(f"the sandbox exited with {proc.returncode}: {err}")
            try:
                if (await http.get(f"{url}/sandbox/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise CosignerError("the sandbox did not start within 30 s")
