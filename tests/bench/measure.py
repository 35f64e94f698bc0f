"""Measurements of the daemon as a process (docs/performance.md): never a pass/fail test.

    python -m tests.bench.measure startup [--runs 5]    time to /readyz with the big policy
    python -m tests.bench.measure idle [--polls 1000]   RSS growth over idle polls

Both start a sandbox process and ``cosigner run`` as a child process, exactly as an
operator would, and read the figures from /proc and the daemon's HTTP endpoints.
Every child is stopped (SIGTERM, then SIGKILL) before the command returns.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from cosigner.signing.throwaway import make_throwaway_shard
from tests.policy.test_benchmark import write_big_policy

MERCHANT_NO = "M-MEASURE-01"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


@contextmanager
def _process(argv: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(url: str, deadline: float, interval: float = 0.005) -> float:
    """Poll ``url`` until it answers 200; the perf_counter time it first did."""
    with httpx.Client(timeout=1) as http:
        while time.perf_counter() < deadline:
            try:
                if http.get(url).status_code == 200:
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            time.sleep(interval)
    raise SystemExit(f"{url} did not answer 200 in time")


@contextmanager
def _world(work: Path, policy: Path, poll_interval: float) -> Iterator[dict[str, str]]:
    """A sandbox process and the environment for ``cosigner run`` against it."""
    password = "1bitpay" + MERCHANT_NO
    make_throwaway_shard(work / "shard.pfx", password, common_name="measure shard")
    sandbox_port = _port()
    env = {**os.environ, "COSIGNER_MERCHANT_NO": MERCHANT_NO, "COSIGNER_API_KEY": "ak-measure",
           "COSIGNER_API_SECRET": secrets.token_urlsafe(24),
           "COSIGNER_PFX_PATH": str(work / "shard.pfx"), "COSIGNER_PFX_PASSWORD": password,
           "COSIGNER_API_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
           "COSIGNER_POLICY_PATH": str(policy),
           "COSIGNER_DATABASE_URL": f"sqlite://{work / 'journal.db'}",
           "COSIGNER_POLL_INTERVAL": str(poll_interval), "COSIGNER_COLLECT_INTERVAL": "3600",
           "COSIGNER_LOG_LEVEL": "warning", "COSIGNER_PAUSE_FILE": str(work / "pause")}
    with _process([sys.executable, "-m", "cosigner", "sandbox", "--port", str(sandbox_port),
                   "--seed-items", "20", "--seed", "7"], env, work):
        _wait(f"{env['COSIGNER_API_BASE_URL']}/sandbox/health", time.perf_counter() + 60)
        if subprocess.run([sys.executable, "-m", "cosigner", "journal", "init"], env=env,
                          cwd=work, capture_output=True, check=False).returncode not in (0, 2):
            raise SystemExit("cosigner journal init failed")
        yield env


def startup(runs: int, python: str = sys.executable) -> dict[str, object]:
    """Seconds from starting ``cosigner run`` to its first 200 on /readyz (big policy).

    ``python``: the interpreter that runs the daemon, e.g. a venv holding only the
    image's locked runtime dependencies and cosigner's wheel (no test or lint tools)."""
    with tempfile.TemporaryDirectory(prefix="cosigner-measure-") as tmp:
        work = Path(tmp)
        policy = write_big_policy(work)
        times: list[float] = []
        cpus: list[float] = []
        with _world(work, policy, 120) as env:
            for _ in range(runs):
                http_port = _port()
                run_env = {**env, "COSIGNER_HTTP_ADDR": f"127.0.0.1:{http_port}"}
                started = time.perf_counter()
                with _process([python, "-m", "cosigner", "run"], run_env, work) as proc:
                    ready = _wait(f"http://127.0.0.1:{http_port}/readyz", started + 120)
                    cpus.append(_cpu_seconds(proc.pid))
                times.append(ready - started)
    return {"ready_seconds": [round(t, 3) for t in times],
            "median": round(statistics.median(times), 3),
            "cpu_seconds_at_ready": [round(c, 2) for c in cpus],
            "load_average": os.getloadavg()[0]}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle(polls: int) -> dict[str, object]:
    """RSS of ``cosigner run`` after 10 idle polls and after ``polls`` more."""
    with tempfile.TemporaryDirectory(prefix="cosigner-measure-") as tmp:
        work = Path(tmp)
        policy = Path(__file__).resolve().parents[2] / "policies" / "treasury.yaml"
        with _world(work, policy, 0.01) as env:
            http_port = _port()
            run_env = {**env, "COSIGNER_HTTP_ADDR": f"127.0.0.1:{http_port}"}
            metrics = f"http://127.0.0.1:{http_port}/metrics"
            with _process([sys.executable, "-m", "cosigner", "run"], run_env, work) as proc, \
                    httpx.Client(timeout=5) as http:
                _wait(f"http://127.0.0.1:{http_port}/readyz", time.perf_counter() + 60)

                def polled() -> int:
                    text = http.get(metrics).text
                    match = re.search(r"^cosigner_poll_duration_seconds_count (\S+)$", text,
                                      re.MULTILINE)
                    return int(float(match.group(1))) if match else 0

                while polled() < 10:
                    time.sleep(0.05)
                first, rss_first = polled(), _rss_kb(proc.pid)
                while polled() < first + polls:
                    time.sleep(0.2)
                last, rss_last = polled(), _rss_kb(proc.pid)
                peak = _rss_kb(proc.pid, "VmHWM")
    return {"polls": last - first, "rss_mb_after_10": round(rss_first / 1024, 1),
            "rss_mb_after": round(rss_last / 1024, 1),
            "growth_mb": round((rss_last - rss_first) / 1024, 2),
            "peak_rss_mb": round(peak / 1024, 1), "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.measure")
    sub = parser.add_subparsers(dest="what", required=True)
    start = sub.add_parser("startup")
    start.add_argument("--runs", type=int, default=5)
    start.add_argument("--python", default=sys.executable,
                       help="interpreter running the daemon (default: this one)")
    sub.add_parser("idle").add_argument("--polls", type=int, default=1000)
    args = parser.parse_args()
    result = startup(args.runs, args.python) if args.what == "startup" else idle(args.polls)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
