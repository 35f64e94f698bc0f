"""A big list file checked on two cores (start-up time, docs/performance.md).

Checking 100,000 addresses (keccak for each EIP-55 spelling, base58check for each
tron one) is most of the start-up time of a daemon with a big policy, and it holds
the GIL: a thread would not help.  :func:`verdicts` forks a child that checks the
second half of the entries while this process checks the first half, when that is
safe: a POSIX system, no other thread in this process (so no lock can be held
across the fork; a policy reload inside the running daemon never forks), and enough
entries to be worth a fork.

The child sends one byte per entry over a pipe only the two processes hold.  The
result is the same list of verdicts either way: a fork that is refused, a child that
fails, is killed, stalls past :data:`CHILD_TIMEOUT` or sends anything but a verdict
for each of its entries costs time only, since this process then checks those
entries itself.  Nothing is ever accepted that the check did not accept.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence

#: Below this many entries one process checks them all (a fork costs a few ms).
MIN_ENTRIES = 20_000
#: How long the child may take before its half is checked here instead.
CHILD_TIMEOUT = 60.0


def verdicts(check: Callable[[Sequence[str]], bytes], entries: Sequence[str],
             alphabet: bytes, *, min_entries: int = MIN_ENTRIES,
             timeout: float = CHILD_TIMEOUT) -> bytes:
    """``check(entries)``, where ``check`` gives one byte of ``alphabet`` per entry and
    the verdict on an entry does not depend on the others (the child's answer is
    refused unless it is exactly one byte of ``alphabet`` per entry of its half)."""
    if len(entries) < min_entries or not _can_fork():
        return check(entries)
    half = len(entries) // 2
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return check(entries)
    try:
        pid = os.fork()
    except OSError:  # a pids limit, no memory: the same work, on one core
        os.close(read_end)
        os.close(write_end)
        return check(entries)
    if pid == 0:  # pragma: no cover - the child (its work is checked by the parent's use)
        _child(check, entries[half:], read_end, write_end)
    os.close(write_end)
    try:
        first = check(entries[:half])
        second = _collect(read_end, len(entries) - half, timeout)
    finally:
        os.close(read_end)
        _reap(pid)
    if second is None or not _well_formed(second, len(entries) - half, alphabet):
        second = check(entries[half:])
    return first + second


def _can_fork() -> bool:
    return hasattr(os, "fork") and _threads() == 1


_threads = threading.active_count  # the threads of this process (tests count their own)


def _child(check: Callable[[Sequence[str]], bytes], entries: Sequence[str], read_end: int,
           write_end: int) -> None:  # pragma: no cover - runs in the forked child
    code = 1
    try:
        os.close(read_end)
        data = memoryview(check(entries))
        while data:
            data = data[os.write(write_end, data):]
        code = 0
    finally:
        os._exit(code)  # no atexit handler, no buffered output flushed twice


def _collect(read_end: int, expected: int, timeout: float) -> bytes | None:
    """The child's bytes, or None when it does not send them all in time."""
    chunks: list[bytes] = []
    received = 0
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select.select: no limit on the descriptor's number
    poller.register(read_end, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        chunk = os.read(read_end, max(65536, expected - received + 1))
        if not chunk:  # the child closed its end (done, or dead)
            return b"".join(chunks)
        chunks.append(chunk)
        received += len(chunk)
        if received > expected:
            return None


def _well_formed(data: bytes, expected: int, alphabet: bytes) -> bool:
    return len(data) == expected and not data.translate(None, alphabet)


def _reap(pid: int) -> None:
    """The child is gone once this returns (killed if it still runs)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass
