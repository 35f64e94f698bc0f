"""Real ``cosigner`` processes for the chaos suites: start, watch the log, kill -9, reap.

A :class:`DaemonProcess` runs ``cosigner run`` (optionally with its clock moved by
``offset_s`` through ``time-machine``), reads its JSON log lines as they come and
counts their events, so a test can kill it right after a given event (an item
decided = after the journal write, an item posted = mid-post, a collection).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.chaos.procs import descendants, kill_all, reap, wait_gone

COSIGNER = Path(sys.executable).with_name("cosigner")

# ``cosigner`` with the wall clock moved by argv[1] seconds (time-machine patches
# time.time and datetime.now; time.monotonic and so the event loop are untouched).
_SHIFTED = """
import datetime, sys, time_machine
offset = float(sys.argv[1])
time_machine.travel(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset),
                    tick=True).start()
from cosigner.cli import main
sys.exit(main(sys.argv[2:]))
"""


def command(args: Sequence[str], offset_s: float = 0.0) -> list[str]:
    if offset_s:
        return [sys.executable, "-c", _SHIFTED, str(offset_s), *args]
    return [str(COSIGNER), *args]


class DaemonProcess:
    """One ``cosigner`` process with its log read and its events counted."""

    def __init__(self, env: dict[str, str], cwd: Path, *, args: Sequence[str] = ("run",),
                 offset_s: float = 0.0) -> None:
        self.events: Counter[str] = Counter()
        self.children_at_kill = 0
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(command(args, offset_s), env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self._readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                         for stream in (self.proc.stderr, self.proc.stdout)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            event = None
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    event = parsed.get("event")
            with self._cond:
                self.lines.append(line)
                if isinstance(event, str):
                    self.events[event] += 1
                self._cond.notify_all()

    def wait_event(self, name: str, count: int = 1, within: float = 30.0) -> bool:
        """Wait until ``name`` was logged ``count`` times (False on timeout or exit)."""
        deadline = time.monotonic() + within
        with self._cond:
            while self.events[name] < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return self.events[name] >= count
                self._cond.wait(min(left, 0.05))
        return True

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def kill9(self, within: float = 30.0) -> list[int]:
        """``kill -9`` the process; return the descendants still running after ``within``
        seconds (orphans), after reaping everything that ended."""
        children = descendants(self.proc.pid)
        self.children_at_kill = len(children)
        self.proc.kill()
        self.proc.wait(timeout=within)
        left = wait_gone(children, within)
        kill_all(left)
        wait_gone(left, 5)
        reap(children)
        self._close()
        return left

    def stop(self, within: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=within)
        self._close()
        return code

    def wait(self, within: float = 60.0) -> int:
        code = self.proc.wait(timeout=within)
        self._close()
        return code

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def run(args: Sequence[str], env: dict[str, str], cwd: Path,
        timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """A ``cosigner`` command to completion."""
    return subprocess.run([str(COSIGNER), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def init_journal(env: dict[str, str], cwd: Path) -> None:
    """``cosigner journal init`` where the command exists (issue 8); before it, ``run``
    created the journal itself."""
    done = run(["journal", "init"], env, cwd)
    if done.returncode != 0 and "invalid choice" not in done.stderr:
        raise AssertionError(f"journal init failed: {done.stderr}")


def journal_rows(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """Every journal record through ``cosigner audit export --format jsonl``."""
    done = run(["audit", "export", "--format", "jsonl"], env, cwd)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def journal_verifies(env: dict[str, str], cwd: Path) -> bool:
    return run(["audit", "verify"], env, cwd).returncode == 0
