"""Signing a backlog off the event loop, in a worker process.

An RSA-2048 private-key operation costs ~0.7 ms and ``cryptography`` holds the
GIL while it runs, so a thread does not help.  For a large backlog the daemon
signs whole chunks in one worker process (started with ``spawn``; it loads the
shard itself from its file), while the event loop posts the previous chunk.
Small batches are signed inline: a cycle of a few items never waits for a
process to start.

The worker gets the shard's path and password through its own start-up pipe,
inside this process tree; nothing is written anywhere.

The worker holds the decrypted key, so it must never outlive the daemon: on
Linux it asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), and everywhere a watcher thread ends it when its
parent is gone (``getppid()`` changes).  Once the worker is gone, the
multiprocessing resource tracker loses its last writer and exits too.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from cosigner.errors import CosignerError, SigningError
from cosigner.signing.shard import Shard, SignScheme, load_shard

#: Below this many payloads a batch is signed inline.
POOL_THRESHOLD = 200

#: ``PR_SET_PDEATHSIG`` from ``<linux/prctl.h>``.
_PR_SET_PDEATHSIG = 1
#: How often the watcher thread checks that the parent is still there.
PARENT_CHECK_INTERVAL = 0.2

_worker_shard: Shard | None = None


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as ``parent_pid`` (its parent) is gone.

    Two mechanisms, because the key must never be left in an orphan: the Linux
    parent-death signal (immediate, but tied to the thread that started us), and
    a daemon thread polling ``getppid()`` (portable; an orphan's parent changes).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watcher thread still works
            pass
    # The parent may have died before the signal was armed.
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_INTERVAL)
    os._exit(1)  # no cleanup to run: the key dies with the process


def _init_worker(parent_pid: int, path: str, password: str, scheme: SignScheme,
                 fingerprint: str) -> None:
    global _worker_shard  # one shard per worker process, set once
    die_with_parent(parent_pid)
    # The parent checked the file's mode already; the worker must not fail on it again.
    shard = load_shard(path, password, scheme=scheme, check_mode=False)
    if shard.info.fingerprint_sha256 != fingerprint:
        raise SigningError(f"{path}: the shard changed since the daemon started")
    _worker_shard = shard


def _sign_batch(payloads: Sequence[bytes]) -> list[str | SigningError]:
    assert _worker_shard is not None
    out: list[str | SigningError] = []
    for payload in payloads:
        try:
            out.append(_worker_shard.sign(payload))
        except SigningError as exc:
            out.append(exc)
    return out


class BatchSigner:
    """Signs batches of payloads; big ones in a worker process, small ones inline."""

    def __init__(self, shard: Shard, *, path: str | os.PathLike[str] | None = None,
                 password: str | None = None, threshold: int = POOL_THRESHOLD) -> None:
        self.shard = shard
        self._path = str(path) if path is not None else None
        self._password = password
        self._threshold = threshold
        self._pool: ProcessPoolExecutor | None = None
        self._pool_failed = False

    def __repr__(self) -> str:
        return f"BatchSigner(shard={self.shard!r})"

    def sign_one(self, payload: bytes) -> str:
        """The ``data`` of one payload, signed inline (raises SigningError)."""
        return self.shard.sign(payload)

    def sign_inline(self, payloads: Sequence[bytes]) -> list[str | SigningError]:
        out: list[str | SigningError] = []
        for payload in payloads:
            try:
                out.append(self.shard.sign(payload))
            except SigningError as exc:
                out.append(exc)
        return out

    async def sign_many(self, payloads: Sequence[bytes]) -> list[str | SigningError]:
        """One ``data`` (or the SigningError) per payload, in order."""
        if len(payloads) < self._threshold or self._path is None or self._pool_failed:
            return self.sign_inline(payloads)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(os.getpid(), self._path, self._password or "", self.shard.scheme,
                          self.shard.info.fingerprint_sha256))
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _sign_batch, list(payloads))
        except (OSError, RuntimeError, CosignerError, EOFError):
            # The worker could not start or died: sign inline from now on.
            self._pool_failed = True
            await self.aclose()
            return self.sign_inline(payloads)

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
