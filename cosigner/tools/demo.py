"""``cosigner demo``: the real daemon against the embedded sandbox, with a live table.

Everything a merchant would set up is made on the spot and thrown away at the
end: a sandbox on 127.0.0.1, a throwaway shard whose certificate the sandbox
verifies every ``data`` against, a journal in a temporary directory, and the
example policy ``policies/treasury.yaml``.  A feeder queues a realistic stream
of withdrawals (payouts, treasury sweeps, a sanctioned destination, amounts
over the limits, malformed items, an item whose content changes under the same
id) and the daemon decides them through exactly the code of ``cosigner run``.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from cosigner.daemon.build import BuildOptions, DaemonSpec, build_daemon
from cosigner.daemon.pipeline import DecisionEvent
from cosigner.errors import ConfigError
from cosigner.sandbox import Merchant, SandboxAdmin, SandboxServer
from cosigner.sandbox.generate import eip55_address, tron_address
from cosigner.signing.shard import certificate_pem
from cosigner.signing.throwaway import make_throwaway_shard
from cosigner.store import init_journal

MERCHANT_NO = "M-DEMO-0001"
API_KEY = "ak-demo"
DEFAULT_POLICY = Path("policies/treasury.yaml")
TREASURY = "0x268cA167F7014588d08eEda38110721E7b8422Ca"
SANCTIONED = "0x61371bed4a6b90951F9f3F5673a2D5C393E2Fb20"
TRON_TREASURY = "TDV39XVLtRkWZzmAg11cc8PLQoREm6vCaz"


def evm_address(rng: Any) -> str:
    return eip55_address(rng.randbytes(20))


def tron_addr(rng: Any) -> str:
    return tron_address(rng.randbytes(20))


def scenario(step: int, rng: Any) -> tuple[str, dict[str, Any]]:
    """The ``step``-th withdrawal of the demo stream: (what it shows, the item's fields)."""
    hot = evm_address(rng)
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("payout", {"fromAddress": hot, "toAddress": evm_address(rng),
                    "amount": f"{rng.randint(5, 900)}.{rng.randint(0, 99):02d}",
                    "chainId": "56"}),
        ("treasury sweep", {"fromAddress": hot, "toAddress": TREASURY,
                            "amount": f"{rng.randint(20_000, 90_000)}", "chainId": "56"}),
        ("tron payout", {"fromAddress": tron_addr(rng), "toAddress": tron_addr(rng),
                         "amount": f"{rng.randint(10, 950)}.5", "chainId": "195"}),
        ("sanctioned", {"fromAddress": hot, "toAddress": SANCTIONED, "amount": "120",
                        "chainId": "56"}),
        ("large payout", {"fromAddress": hot, "toAddress": evm_address(rng),
                          "amount": f"{rng.randint(60_000, 99_000)}", "chainId": "1"}),
        ("malformed", {"fromAddress": hot, "toAddress": evm_address(rng) + "\u200b",
                       "amount": "12.5", "chainId": "56"}),
        ("over limit", {"fromAddress": hot, "toAddress": TREASURY, "amount": "300000",
                        "chainId": "56"}),
        ("bad amount", {"fromAddress": hot, "toAddress": evm_address(rng), "amount": "-3",
                        "chainId": "56"}),
        ("tron sweep", {"fromAddress": tron_addr(rng), "toAddress": TRON_TREASURY,
                        "amount": "5000", "chainId": "195"}),
    ]
    return kinds[step % len(kinds)]


class LiveTable:
    """Prints one line per event and a running total; a summary at the end."""

    HEADER = (f"{'time':8}  {'id':>5}  {'chain':5}  {'amount':>12}  {'to':14}  "
              f"{'action':7}  {'rule':22}  {'state':8}  reason")

    def __init__(self, out: TextIO, kinds: dict[int, str]) -> None:
        self.out = out
        self.kinds = kinds
        self.actions: Counter[str] = Counter()
        self.states: Counter[str] = Counter()
        self.rows = 0

    def __call__(self, e: DecisionEvent) -> None:
        if self.rows % 20 == 0:
            print(self.HEADER, file=self.out)
        self.rows += 1
        if e.state in ("decided", "shadow", "mutated"):
            self.actions[e.action] += 1
        self.states[e.state] += 1
        to = e.to.encode("ascii", "backslashreplace").decode()  # show hidden characters
        to = to if len(to) <= 14 else to[:6] + ".." + to[-6:]
        reason = ", ".join(e.reasons) + (f" ({e.detail})" if e.detail else "")
        kind = self.kinds.get(e.item_id or -1, "")
        print(f"{datetime.now():%H:%M:%S}  {e.item_id!s:>5}  {e.chain[:5]:5}  "
              f"{e.amount[:12]:>12}  {to:14}  {e.action:7}  {e.rule[:22]:22}  "
              f"{e.state:8}  {reason}" + (f"   [{kind}]" if kind else ""), file=self.out,
              flush=True)
        if self.rows % 10 == 0:
            self.totals()

    def totals(self) -> None:
        a, s = self.actions, self.states
        print(f"-- totals: approve {a['approve']}  reject {a['reject']}  hold {a['hold']}  "
              f"(mutations {s['mutated']})  posted {s['posted']}  failed {s['failed']}  "
              f"unknown {s['unknown']}", file=self.out, flush=True)


def run_demo(duration: float | None = None, policy: str | None = None, *,
             out: TextIO = sys.stdout, interval: float = 1.0) -> int:
    """Run the demo until ``duration`` seconds have passed or Ctrl-C; exit code."""
    policy_path = Path(policy) if policy else DEFAULT_POLICY
    if not policy_path.is_file():
        raise ConfigError(f"{policy_path}: policy not found (run the demo from the cosigner "
                          f"checkout, or pass --policy FILE)")
    return asyncio.run(_demo(duration, policy_path.resolve(), out, interval))


async def _demo(duration: float | None, policy_path: Path, out: TextIO,
                interval: float) -> int:
    import random
    rng = random.Random(7)  # noqa: S311 - demo data, not secrets
    with tempfile.TemporaryDirectory(prefix="cosigner-demo-") as tmp:
        work = Path(tmp)
        work.chmod(0o700)  # noqa: ASYNC240 - once, before anything runs
        secret = secrets.token_urlsafe(24)
        password = "1bitpay" + MERCHANT_NO
        cert = make_throwaway_shard(work / "shard.pfx", password,
                                    common_name="cosigner demo shard")
        merchant = Merchant(MERCHANT_NO, API_KEY, secret,
                            certificate_pem=certificate_pem(cert))
        async with SandboxServer(merchants=[merchant]) as server, \
                SandboxAdmin(server.url) as admin:
            journal_url = f"sqlite://{work / 'journal.db'}"
            init_journal(journal_url)  # run never creates a journal
            spec = DaemonSpec(
                api_base_url=server.url, merchant_no=MERCHANT_NO, api_key=API_KEY,
                api_secret=secret, pfx_path=work / "shard.pfx", pfx_password=password,
                policy_path=policy_path, database_url=journal_url, pause_file=work / "pause",
                poll_interval=2.0, collect_interval=10.0, http_host="127.0.0.1", http_port=0,
                log_format="console", log_level="error", request_timeout=5.0)
            kinds: dict[int, str] = {}
            table = LiveTable(out, kinds)
            daemon = build_daemon(spec, BuildOptions(listeners=[table], watch_interval=0))
            print(f"cosigner demo: sandbox {server.url}, policy {policy_path.name} "
                  f"({daemon.pipeline.state.policy.name}), throwaway shard "
                  f"{daemon.pipeline.shard.info.fingerprint_sha256[:23]}…", file=out)
            print("decisions appear below as the daemon polls every 2 s; Ctrl-C ends the demo",
                  file=out, flush=True)
            feeder = asyncio.create_task(_feed(admin, rng, kinds, interval))
            runner = asyncio.create_task(daemon.run())
            timer = _stop_after(duration, daemon.request_stop)
            try:
                code = await runner
            finally:
                feeder.cancel()
                if timer is not None:
                    timer.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            received = await admin.decisions()
            collections = await admin.collections()
        verified = sum(1 for d in received if d.get("verified") is True)
        table.totals()
        print(f"\nsummary: {table.actions['approve']} approved, {table.actions['reject']} "
              f"rejected, {table.actions['hold']} held ({table.states['mutated']} mutations); "
              f"the sandbox received {len(received)} decisions ({verified} with a valid "
              f"signature) and {len(collections)} collections.", file=out, flush=True)
        return code


def _stop_after(duration: float | None, stop: Callable[[], None]) -> asyncio.TimerHandle | None:
    if duration is None:
        return None
    return asyncio.get_running_loop().call_later(duration, stop)


async def _feed(admin: SandboxAdmin, rng: Any, kinds: dict[int, str], interval: float) -> None:
    """Queue the demo stream; once, change a held item's amount under its id."""
    step = 0
    held_large: int | None = None
    while True:
        kind, fields = scenario(step, rng)
        added = await admin.add_item(fields)
        kinds[int(added["id"])] = kind
        if kind == "large payout" and held_large is None:
            held_large = int(added["id"])
        step += 1
        if step == 12 and held_large is not None:
            kinds[held_large] = "mutated"
            await admin.change_item(held_large, {"amount": "1", "toAddress": SANCTIONED})
        await asyncio.sleep(interval)
