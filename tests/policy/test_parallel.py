"""A big list file's entries checked on two cores give the one-core verdicts, whatever the
forked child does (cosigner.policy.parallel)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from cosigner.policy import addresses, parallel

ALPHABET = b"et-"
PARENT = os.getpid()


def _entries(n: int) -> list[str]:
    out = []
    for i in range(n):
        payload = i.to_bytes(20, "big")
        out.append(addresses.eip55("0x" + payload.hex()) if i % 3 else
                   addresses.tron_from_bytes(payload))
        if i % 97 == 0:
            out[-1] = out[-1][:-1] + ("0" if out[-1][-1] != "0" else "1")  # a typo
    return out


ENTRIES = _entries(4000)
SERIAL = b"".join(addresses.list_entry_verdict(e) for e in ENTRIES)
CHECK = addresses.list_verdicts


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads other tests left in this process (executors, servers) would stop the fork,
    as they should in a daemon: here only the threads a test starts itself count."""
    baseline = threading.active_count()
    monkeypatch.setattr(parallel, "_threads", lambda: threading.active_count() - baseline + 1)


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch, alone: None) -> Iterator[list[int]]:
    """The pids of the children forked meanwhile (each must be gone at the end)."""
    made: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    yield made
    for pid in made:
        with pytest.raises(ChildProcessError):  # reaped by verdicts() itself
            os.waitpid(pid, os.WNOHANG)


def _in_child() -> bool:
    return os.getpid() != PARENT


def test_two_cores_give_the_one_core_verdicts(forks: list[int]) -> None:
    assert SERIAL.count(b"-") > 10  # the typos
    got = parallel.verdicts(CHECK, ENTRIES, ALPHABET, min_entries=100)
    assert got == SERIAL
    assert len(forks) == 1


def test_a_small_file_is_checked_here(forks: list[int]) -> None:
    got = parallel.verdicts(CHECK, ENTRIES[:50], ALPHABET,
                            min_entries=100)
    assert got == SERIAL[:50]
    assert forks == []


def test_no_fork_while_another_thread_runs(forks: list[int]) -> None:
    """A reload inside the running daemon (threads everywhere) checks on one core."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        got = parallel.verdicts(CHECK, ENTRIES, ALPHABET,
                                min_entries=100)
    finally:
        stop.set()
        thread.join()
    assert got == SERIAL
    assert forks == []


def test_a_refused_fork_costs_time_only(monkeypatch: pytest.MonkeyPatch, alone: None) -> None:
    tried: list[bool] = []

    def refuse() -> int:
        tried.append(True)
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    assert parallel.verdicts(CHECK, ENTRIES, ALPHABET,
                             min_entries=100) == SERIAL
    assert tried == [True]


def _each(check: Callable[[str], bytes]) -> Callable[[Sequence[str]], bytes]:
    """A check of all entries made of a check of one."""
    return lambda entries: b"".join(check(entry) for entry in entries)


def _crashes_in_child(entry: str) -> bytes:
    if _in_child():
        raise RuntimeError("the child fails")
    return addresses.list_entry_verdict(entry)


def _lies_in_child(entry: str) -> bytes:
    return b"e" if _in_child() else addresses.list_entry_verdict(entry)


def _garbles_in_child(entry: str) -> bytes:
    return b"x" if _in_child() else addresses.list_entry_verdict(entry)


def _short_in_child(entry: str) -> bytes:
    return b"" if _in_child() and entry.startswith("T") else addresses.list_entry_verdict(entry)


@pytest.mark.parametrize("check", [_crashes_in_child, _garbles_in_child, _short_in_child])
def test_a_failing_child_is_replaced_by_the_parent(forks: list[int],
                                                    check: Callable[[str], bytes]) -> None:
    """A child that dies, sends a byte outside the alphabet or too few bytes: its half is
    checked here, and the answer is the one-core answer."""
    got = parallel.verdicts(_each(check), ENTRIES, ALPHABET, min_entries=100)
    assert got == SERIAL
    assert len(forks) == 1


def test_the_child_is_trusted_only_with_well_formed_verdicts(forks: list[int]) -> None:
    """What the child says is taken as its check's result (it is this process, forked):
    the guarantee is the form, checked here (a lying check is not a failing child)."""
    got = parallel.verdicts(_each(_lies_in_child), ENTRIES, ALPHABET, min_entries=100)
    half = len(ENTRIES) // 2
    assert got == SERIAL[:half] + b"e" * (len(ENTRIES) - half)


def _stalls_in_child(entry: str) -> bytes:
    if _in_child():
        time.sleep(30)
    return addresses.list_entry_verdict(entry)


def test_a_stalled_child_is_killed_and_its_half_checked_here(forks: list[int]) -> None:
    started = time.monotonic()
    got = parallel.verdicts(_each(_stalls_in_child), ENTRIES, ALPHABET, min_entries=100,
                            timeout=0.5)
    assert got == SERIAL
    assert time.monotonic() - started < 20
    assert len(forks) == 1  # and the fixture checks it was reaped
