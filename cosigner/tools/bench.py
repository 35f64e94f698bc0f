"""``cosigner bench``: end-to-end throughput of the daemon against the sandbox, and its ceiling.

The sandbox runs in its own process (so daemon and provider each get a core, as
they would in production), is seeded with N generated pending items, and the
real pipeline of ``cosigner run`` decides, journals (SQLite, ``synchronous=FULL``,
or the empty PostgreSQL database ``--database-url`` names), signs and posts every
one in one poll cycle.

Then the **ceiling**: the sandbox is reset and seeded with the same N items, and
a bare loop does only the unavoidable work at the same concurrency: read the
pending list (same page size), sign each approve with the shard, post it over
keep-alive HTTP/1.1 with the six public headers and the ``Sign``.  No policy, no
journal, no retries, no logging, no httpx: hand-formatted requests on asyncio
streams, one connection per worker.  Like the daemon, it signs chunks of 500 in
one worker process while posting the previous chunk (on two cores the RSA work
then overlaps the posts instead of adding to them).
``ratio`` = daemon items/s / ceiling items/s.

Every figure is a measurement, never a pass/fail: the exit code says only
whether every item was handled and verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from cosigner.api.auth import compute_sign, new_nonce, timestamp_ms
from cosigner.daemon.build import BuildOptions, DaemonSpec, build_daemon
from cosigner.daemon.pipeline import DecisionEvent
from cosigner.errors import ConfigError, CosignerError
from cosigner.models import loads_exact
from cosigner.sandbox import SandboxAdmin
from cosigner.sandbox.generate import eip55_address
from cosigner.signing import load_shard
from cosigner.signing.objects import approval_sign_object
from cosigner.signing.pool import BatchSigner
from cosigner.signing.throwaway import make_throwaway_shard
from cosigner.store import init_journal, open_journal
from cosigner.store.postgres import mask_url

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
    """The figures of one bench run (``--json`` prints them as one object)."""

    items: int
    seconds: float
    items_per_second: float
    ceiling_seconds: float | None
    ceiling_items_per_second: float | None
    ratio: float | None
    p50_ms: float | None              # decision (journal commit) to post answered, per item
    p99_ms: float | None
    peak_rss_mb: float                # the daemon's process (high-water mark)
    signer_peak_rss_mb: float | None  # the signing worker process, when one ran
    journal_bytes_per_decision: float | None
    approved: int
    rejected: int
    held: int
    posted: int
    received_by_sandbox: int
    verified_by_sandbox: int
    ceiling_posted: int | None
    concurrency: int
    page_size: int
    daemon_cpu_seconds: float
    sandbox_cpu_seconds: float | None
    ceiling_cpu_seconds: float | None
    ceiling_sandbox_cpu_seconds: float | None
    load_average: list[float] = field(default_factory=list)  # 1-min load before and after
    ok: bool = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_bench(items: int = 10000, concurrency: int | None = None, *,
              as_json: bool = False, database_url: str | None = None) -> int:
    """Run the benchmark and print its figures; exit 0 when every item was handled."""
    progress = Progress(sys.stderr) if sys.stderr.isatty() else None
    result = asyncio.run(bench(items, concurrency, progress=progress,
                               database_url=database_url))
    if as_json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.items} pending items decided and posted in {result.seconds:.2f} s "
              f"({result.items_per_second:.0f} items/s, concurrency {result.concurrency})")
        print(f"approved {result.approved}, rejected {result.rejected}, held {result.held}; "
              f"posted {result.posted}; the sandbox received {result.received_by_sandbox}, "
              f"{result.verified_by_sandbox} with a valid signature")
        if result.ceiling_items_per_second is not None:
            print(f"ceiling (bare sign-and-post loop, same items and concurrency): "
                  f"{result.ceiling_items_per_second:.0f} items/s; daemon/ceiling ratio "
                  f"{result.ratio:.2f}")
        print(f"decision-to-post latency p50 {result.p50_ms} ms, p99 {result.p99_ms} ms; "
              f"peak RSS {result.peak_rss_mb} MB (signing worker {result.signer_peak_rss_mb} "
              f"MB); journal {result.journal_bytes_per_decision} bytes per decision")
        print(f"CPU during the cycle: daemon {result.daemon_cpu_seconds} s, sandbox "
              f"{result.sandbox_cpu_seconds} s; during the ceiling: loop "
              f"{result.ceiling_cpu_seconds} s, sandbox {result.ceiling_sandbox_cpu_seconds} s; "
              f"load average {result.load_average}")
    return 0 if result.ok else 1


class Progress:
    """A one-line progress bar on a terminal: items done of the total, and the rate."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.label = ""
        self.total = 0
        self.done = 0
        self._started = 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self._started = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n

    def draw(self, final: bool = False) -> None:
        total = max(1, self.total)
        filled = min(self.width, self.width * self.done // total)
        elapsed = max(1e-9, time.perf_counter() - self._started)
        self.stream.write(f"\r{self.label:8} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{self.done}/{self.total} {self.done / elapsed:6.0f} items/s")
        if final:
            self.stream.write("\n")
        self.stream.flush()

    async def run(self, interval: float = 0.5) -> None:
        """Redraw every ``interval`` seconds until cancelled."""
        while True:
            self.draw()
            await asyncio.sleep(interval)


class _Latency:
    """Listener timing each item from its recorded decision to its post's answer."""

    def __init__(self, progress: Progress | None) -> None:
        self.decided: dict[int, float] = {}   # only items decided and not yet posted
        self.samples = array("d")              # compact: 8 bytes a sample
        self.progress = progress

    def __call__(self, event: DecisionEvent) -> None:
        if event.item_id is None:
            return
        if event.state == "decided":
            self.decided[event.item_id] = time.perf_counter()
            if event.action == "hold" and self.progress is not None:
                self.progress.advance()
        elif event.state in ("posted", "failed", "unknown"):
            started = self.decided.pop(event.item_id, None)
            if started is not None:
                self.samples.append(time.perf_counter() - started)
            if self.progress is not None:
                self.progress.advance()

    def percentile(self, q: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def bench(items: int, concurrency: int | None = None, *, ceiling: bool = True,
                progress: Progress | None = None,
                database_url: str | None = None) -> BenchResult:
    """Start a sandbox process with ``items`` items, run one poll cycle, then the ceiling.

    ``database_url``: an empty journal to use (created if absent), e.g. a PostgreSQL
    database; by default a temporary SQLite file."""
    if items < 1:
        raise CosignerError("--items must be at least 1")
    if database_url is not None:
        _require_empty_journal(database_url)
    with tempfile.TemporaryDirectory(prefix="cosigner-bench-") as tmp:
        work = Path(tmp)
        policy = work / "bench.yaml"
        policy.write_text(BENCH_POLICY.format(sanctioned=eip55_address(b"\x01" * 20)),
                          encoding="utf-8")
        secret, password, proc, url = start_sandbox(work, items, "cosigner bench shard")
        load = [round(os.getloadavg()[0], 2)]
        ceiling_figures: _CeilingFigures | None = None
        try:
            await _wait_ready(url, proc)
            journal_url = database_url or f"sqlite://{work / 'journal.db'}"
            if database_url is None:
                init_journal(journal_url)  # run never creates a journal
            settings = DaemonSpec(
                api_base_url=url, merchant_no=MERCHANT_NO, api_key=API_KEY,
                api_secret=secret, pfx_path=work / "shard.pfx", pfx_password=password,
                policy_path=policy, database_url=journal_url, pause_file=work / "pause",
                http_host="127.0.0.1", http_port=0, log_level="error",
                max_pending=max(items, 10000),
                concurrency=concurrency or int(os.environ.get("COSIGNER_CONCURRENCY", 8)),
                mode="enforce", request_timeout=30.0, leader_retry=0.2)
            latency = _Latency(progress)
            daemon = build_daemon(settings, BuildOptions(install_signals=False,
                                                         listeners=[latency]))
            await daemon.await_leadership()  # PostgreSQL: the only replica leads
            drawing = _start_progress(progress, "daemon", items)
            cpu0, sandbox0 = time.process_time(), _cpu_of(proc.pid)
            started = time.perf_counter()
            try:
                result = await daemon.pipeline.poll()
            finally:
                seconds = time.perf_counter() - started
                cpu = time.process_time() - cpu0
                sandbox1 = _cpu_of(proc.pid)
                await _stop_progress(progress, drawing)
                peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                signer_rss = _children_peak_rss_mb(exclude={proc.pid})
                await daemon.close()
            journal_bytes = _journal_bytes(work) if database_url is None else None
            async with SandboxAdmin(url, timeout=120) as admin:
                received = await admin.decisions()
                if ceiling:
                    await admin.reset()
                    await _generate(url, items)
                    signer = BatchSigner(load_shard(work / "shard.pfx", password),
                                         path=work / "shard.pfx", password=password)
                    try:
                        ceiling_figures = await _ceiling(
                            url, signer, secret, settings.page_size, settings.concurrency,
                            proc.pid, progress)
                    finally:
                        await signer.aclose()
        finally:
            stop_sandbox(proc)
    load.append(round(os.getloadavg()[0], 2))
    return _bench_result(
        items, settings, result, received, latency, load, ceiling_figures,
        seconds=seconds, cpu=cpu, sandbox_cpu=_delta(sandbox0, sandbox1), peak_rss=peak_rss,
        signer_rss=signer_rss, journal_bytes=journal_bytes)


def _require_empty_journal(database_url: str) -> None:
    init_journal(database_url)
    journal = open_journal(database_url)
    try:
        if journal.head().seq:
            raise ConfigError(f"--database-url {mask_url(database_url)}: the journal is "
                              "not empty; bench needs an empty one")
    finally:
        journal.close()


def start_sandbox(work: Path, items: int, common_name: str
                  ) -> tuple[str, str, subprocess.Popen[bytes], str]:
    """A throwaway shard in ``work`` and a sandbox process seeded with ``items`` items:
    the API secret, the shard's password, the process (stop it with :func:`stop_sandbox`)
    and its URL.  The sandbox seeds the items itself: the caller's process never holds
    them, so its peak RSS is its own."""
    secret = secrets.token_urlsafe(24)
    password = "1bitpay" + MERCHANT_NO
    make_throwaway_shard(work / "shard.pfx", password, common_name=common_name)
    port = _free_port()
    env = {**os.environ, "COSIGNER_MERCHANT_NO": MERCHANT_NO, "COSIGNER_API_KEY": API_KEY,
           "COSIGNER_API_SECRET": secret, "COSIGNER_PFX_PATH": str(work / "shard.pfx"),
           "COSIGNER_PFX_PASSWORD": password, "COSIGNER_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosigner", "sandbox", "--port", str(port),
         "--seed-items", str(items), "--seed", str(SEED)],
        env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return secret, password, proc, f"http://127.0.0.1:{port}"


def stop_sandbox(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def _bench_result(items: int, settings: DaemonSpec, result: Any, received: list[dict[str, Any]],
                  latency: _Latency, load: list[float],
                  ceiling_figures: _CeilingFigures | None, *, seconds: float, cpu: float,
                  sandbox_cpu: float | None, peak_rss: float, signer_rss: float | None,
                  journal_bytes: int | None) -> BenchResult:
    """The figures of one run, and whether every item was handled and verified."""
    verified = sum(1 for d in received if d.get("verified") is True)
    handled = result.approved + result.rejected + result.held
    ok = (result.ok and handled == items and result.posted == result.approved + result.rejected
          and verified == result.posted
          and (ceiling_figures is None or ceiling_figures.posted == items))
    rate = items / seconds
    per_decision = None
    if result.decided and journal_bytes is not None:
        per_decision = round(journal_bytes / result.decided, 1)
    return BenchResult(
        items=items, seconds=round(seconds, 3), items_per_second=round(rate, 1),
        **_ceiling_fields(items, rate, ceiling_figures),
        p50_ms=latency.percentile(0.5), p99_ms=latency.percentile(0.99),
        peak_rss_mb=round(peak_rss, 1), signer_peak_rss_mb=signer_rss,
        journal_bytes_per_decision=per_decision,
        approved=result.approved, rejected=result.rejected, held=result.held,
        posted=result.posted, received_by_sandbox=len(received),
        verified_by_sandbox=verified,
        concurrency=settings.concurrency, page_size=settings.page_size,
        daemon_cpu_seconds=round(cpu, 2), sandbox_cpu_seconds=sandbox_cpu,
        load_average=load, ok=ok)


def _ceiling_fields(items: int, rate: float,
                    figures: _CeilingFigures | None) -> dict[str, Any]:
    """The BenchResult fields of the ceiling run (None when it did not run)."""
    if figures is None:
        return dict.fromkeys(("ceiling_seconds", "ceiling_items_per_second", "ratio",
                              "ceiling_posted", "ceiling_cpu_seconds",
                              "ceiling_sandbox_cpu_seconds"))
    ceiling_rate = items / figures.seconds
    return {"ceiling_seconds": round(figures.seconds, 3),
            "ceiling_items_per_second": round(ceiling_rate, 1),
            "ratio": round(rate / ceiling_rate, 3), "ceiling_posted": figures.posted,
            "ceiling_cpu_seconds": round(figures.cpu, 2),
            "ceiling_sandbox_cpu_seconds": figures.sandbox_cpu}


SEED = 42
CEILING_CHUNK = 500  # as the daemon's pipeline: signed in one go, posted while the next is signed


def _delta(before: float | None, after: float | None) -> float | None:
    return round(after - before, 2) if before is not None and after is not None else None


def _start_progress(progress: Progress | None, label: str, total: int
                    ) -> asyncio.Task[None] | None:
    if progress is None:
        return None
    progress.start(label, total)
    return asyncio.create_task(progress.run())


async def _stop_progress(progress: Progress | None, task: asyncio.Task[None] | None) -> None:
    if progress is None or task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    progress.draw(final=True)


async def _generate(url: str, items: int) -> None:
    """Seed the sandbox with the bench's items again (the answer is not parsed)."""
    async with httpx.AsyncClient(timeout=300) as http:
        response = await http.post(f"{url}/sandbox/items",
                                   json={"generate": items, "seed": SEED})
        if not response.is_success:
            raise CosignerError(f"the sandbox refused to generate items: {response.status_code}")


# -- the ceiling: the unavoidable work only ---------------------------------------------

@dataclass
class _CeilingFigures:
    seconds: float
    posted: int
    cpu: float
    sandbox_cpu: float | None


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


class _Wire:
    """One keep-alive connection: hand-formatted POSTs, answers framed by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: bytes) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    async def post(self, path: bytes, fields: dict[str, Any], public: dict[str, str]) -> bytes:
        body = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
        head = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in public.items())
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n%s\r\n%s"
                          % (path, self.host, len(body), head, body))
        answer = await self.reader.readuntil(b"\r\n\r\n")
        match = _CONTENT_LENGTH.search(answer)
        if match is None:
            raise CosignerError("the sandbox answered without Content-Length")
        return await self.reader.readexactly(int(match.group(1)))


_FIXED_HEADERS = {"MerchantNo": MERCHANT_NO, "SignType": "1", "Lang": "en", "ApiKey": API_KEY}


def public_headers(fields: dict[str, Any], secret: str) -> dict[str, str]:
    """The ceiling's public headers of one request, ``Sign`` over ``fields`` included."""
    headers = {"Nonce": new_nonce(), "TimeStamp": str(timestamp_ms()), **_FIXED_HEADERS}
    headers["Sign"] = compute_sign({**fields, **headers}, secret)
    return headers


async def _ceiling(url: str, signer: BatchSigner, secret: str, page_size: int,
                   concurrency: int, sandbox_pid: int, progress: Progress | None
                   ) -> _CeilingFigures:
    """Read the pending list, then sign and post an approve for every item, nothing else."""
    host, port = url.removeprefix("http://").split(":")

    async def connect() -> _Wire:
        reader, writer = await asyncio.open_connection(host, int(port))
        return _Wire(reader, writer, f"{host}:{port}".encode())

    cpu0, sandbox0 = time.process_time(), _cpu_of(sandbox_pid)
    started = time.perf_counter()
    wires: list[_Wire] = []
    pending: list[dict[str, Any]] = []
    first = await connect()
    wires.append(first)
    page = 1
    while True:
        fields = {"pageNum": page, "pageSize": page_size}
        data = loads_exact(await first.post(b"/api/transaction/pending", fields,
                                            public_headers(fields, secret)))["data"]
        pending += data["list"]
        if not data["list"] or len(pending) >= data["total"]:
            break
        page += 1
    drawing = _start_progress(progress, "ceiling", len(pending))
    signed: asyncio.Queue[tuple[dict[str, Any], str] | None] = asyncio.Queue(CEILING_CHUNK)
    posted = 0

    async def sign() -> None:
        for start in range(0, len(pending), CEILING_CHUNK):
            chunk = pending[start:start + CEILING_CHUNK]
            datas = await signer.sign_many([approval_sign_object(
                i["id"], i["fromAddress"], i["toAddress"], str(i["amount"]), i["chainId"], 1)
                for i in chunk])
            for item, data in zip(chunk, datas, strict=True):
                if isinstance(data, str):
                    await signed.put((item, data))
        for _ in wires:
            await signed.put(None)

    async def worker(slot: int) -> None:
        nonlocal posted
        while (next_item := await signed.get()) is not None:
            item, data = next_item
            wire = wires[slot]
            if wire.reader.at_eof() or wire.writer.is_closing():
                # The server closed it while idle (its keep-alive timeout): a new one.
                wire.writer.close()
                wire = wires[slot] = await connect()
            fields = {"id": item["id"], "from": item["fromAddress"], "to": item["toAddress"],
                      "value": str(item["amount"]), "chainId": item["chainId"], "status": 1,
                      "data": data}
            answer = await wire.post(b"/api/transaction/approve", fields,
                                    public_headers(fields, secret))
            if answer.startswith(b'{"code":200'):
                posted += 1
            if progress is not None:
                progress.advance()

    try:
        wires += [await connect() for _ in range(concurrency - 1)]
        await asyncio.gather(sign(), *(worker(slot) for slot in range(len(wires))))
    finally:
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        sandbox1 = _cpu_of(sandbox_pid)
        await _stop_progress(progress, drawing)
        for wire in wires:
            wire.writer.close()
    return _CeilingFigures(seconds, posted, cpu, _delta(sandbox0, sandbox1))


# -- process figures ---------------------------------------------------------------------

def _journal_bytes(work: Path) -> int:
    """Bytes of the journal database with its WAL."""
    return sum(f.stat().st_size for f in work.glob("journal.db*"))


def _cpu_of(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_peak_rss_mb(exclude: set[int]) -> float | None:
    """The largest peak RSS among this process's children (the signing worker), from /proc."""
    peaks: list[float] = []
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            if pid in exclude:
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            if match:
                peaks.append(int(match.group(1)) / 1024)
    return round(max(peaks), 1) if peaks else None


async def _wait_ready(url: str, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 120
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
    raise CosignerError("the sandbox did not start within 120 s")
