"""Process bookkeeping for crash tests: find a process's descendants, wait (by polling,
never by a fixed sleep) until they are gone, and reap every one of them.

``kill -9`` of a daemon orphans its children (the signing worker, the multiprocessing
resource tracker).  An orphan is re-parented to the nearest *subreaper*; while
:func:`subreaper` is active that is this test process, so the test can reap them
itself instead of leaving zombies behind.  Linux only (``/proc`` and ``prctl``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

LINUX = sys.platform.startswith("linux")
_PR_SET_CHILD_SUBREAPER = 36


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of ``pid`` from ``/proc``, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) S ppid ...": comm may contain spaces and parentheses.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has stopped running and counts as gone)."""
    if LINUX:
        stat = _stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children(pid: int) -> list[int]:
    """Every live process whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid``."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [c for p in frontier for c in children(p)]
        found += kids
        frontier = kids
    return found


def wait_gone(pids: Iterable[int], within: float) -> list[int]:
    """Poll until none of ``pids`` runs; return those still running after ``within`` s."""
    pending = set(pids)
    deadline = time.monotonic() + within
    while pending:
        pending = {p for p in pending if alive(p)}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return sorted(pending)


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of each pid that is our child (orphans re-parented to us)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL whatever still runs (cleanup after a failed assertion)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Make this process the subreaper of its descendants for the duration."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
