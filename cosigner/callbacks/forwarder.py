"""Forwarding applied order callbacks to the merchant's backend from the durable outbox.

Each outbox event is POSTed with its stored body (the same bytes on every attempt)
and the headers::

    Content-Type: application/json
    X-Cosigner-Event-Id: <event_id>
    Idempotency-Key: <event_id>
    X-Cosigner-Signature: sha256=<hex HMAC-SHA256 of the exact body>

(the HMAC key is ``COSIGNER_CALLBACK_FORWARD_SECRET``).

An answer with a 2xx status delivers it; anything else (another status, a refused
connection, a timeout) is an attempt that failed, retried after an exponential
backoff (``base`` doubling to ``cap``).  The outbox is in the journal, so events
survive restarts; events of one order go out in order (a later one waits for the
earlier).  ``gate`` decides whether this instance may forward now (in HA only the
leader does); by default it always may.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx

from cosigner.errors import StoreError
from cosigner.redact import mask_url
from cosigner.store.base import Clock, utc_now
from cosigner.store.orders import OrderJournal, OutboxEvent

SIGNATURE_HEADER = "X-Cosigner-Signature"
EVENT_ID_HEADER = "X-Cosigner-Event-Id"


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Cosigner-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class ForwardObserver(Protocol):
    """Where the forwarder reports (the daemon's metrics)."""

    def order_forward(self, outcome: str) -> None:
        """One attempt: ``delivered``, ``rejected`` (non-2xx answer) or ``error``."""

    def order_forward_queue(self, size: int) -> None:
        """Undelivered events now."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n + 1`` after ``n`` failed ones: ``base * 2**(n-1)``, at
    most ``cap`` seconds."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2 ** min(max(failures - 1, 0), 32)))


class Forwarder:
    """The outbox worker: run it with :meth:`start`, stop it with :meth:`stop`."""

    def __init__(self, journal: OrderJournal, url: str, secret: str, *,
                 observer: ForwardObserver, log: Any, timeout: float = 10.0,
                 backoff: Backoff | None = None, gate: Callable[[], bool] = lambda: True,
                 clock: Clock = utc_now, idle: float = 5.0, batch: int = 100,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.journal = journal
        self.url = url
        self._secret = secret.encode("utf-8")
        self.observer = observer
        self.log = log
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self.gate = gate
        self.clock = clock
        self.idle = idle
        self.batch = batch
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()  # one pass at a time: an event is never sent twice at once

    def __repr__(self) -> str:
        return f"Forwarder(url={mask_url(self.url)!r}, secret=**********)"

    def notify(self) -> None:
        """A new event is in the outbox: look now rather than at the next tick."""
        self._wake.set()

    async def start(self, *, background: bool = True) -> None:
        """Open the HTTP client and (``background``) start the worker loop; without it
        the caller drives :meth:`run_once` (tests)."""
        self._client = httpx.AsyncClient(timeout=self.timeout, transport=self._transport,
                                         follow_redirects=False, trust_env=False)
        self._stop.clear()
        if background:
            self._task = asyncio.create_task(self._loop(), name="order-forwarder")

    async def stop(self, grace: float = 2.0) -> None:
        """Stop, letting the attempt in flight finish within ``grace`` seconds (the daemon
        exits within 10 s).  An attempt cut short is not recorded, so the event is sent
        again later with the same id: the backend deduplicates on it."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            wait = self.idle
            try:
                if self.gate():
                    await self.run_once()
                    wait = await self._until_next_due()
                else:
                    await self._report_queue()
            except StoreError as exc:
                self.log.error("order.forward_store_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _until_next_due(self) -> float:
        due = await asyncio.to_thread(self.journal.next_due)
        if due is None:
            return self.idle
        return max(0.0, min(self.idle, (due - self.clock()).total_seconds()))

    async def _report_queue(self) -> int:
        size = await asyncio.to_thread(self.journal.queue_size)
        self.observer.order_forward_queue(size)
        return size

    async def run_once(self) -> int:
        """Attempt every due event once; the number delivered."""
        async with self._busy:
            delivered = 0
            events = await asyncio.to_thread(self.journal.due_events, self.clock(), self.batch)
            for event in events:
                if self._stop.is_set():
                    break
                if await self.attempt(event):
                    delivered += 1
            await self._report_queue()
            return delivered

    async def attempt(self, event: OutboxEvent) -> bool:
        """POST one event and record the result; True when it was delivered."""
        if self._client is None:
            raise RuntimeError("Forwarder.start() was not called")
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id,
                   "Idempotency-Key": event.event_id,
                   SIGNATURE_HEADER: signature(self._secret, event.body)}
        error: str | None
        try:
            response = await self._client.post(self.url, content=event.body, headers=headers)
        except httpx.HTTPError as exc:
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                outcome, error = "delivered", None
            else:
                outcome, error = "rejected", f"HTTP {response.status_code}"
        at = self.clock()
        self.observer.order_forward(outcome)
        if error is None:
            await asyncio.to_thread(self.journal.delivered, event.event_id, at)
            self.log.info("order.forwarded", event_id=event.event_id, order_no=event.order_no,
                          attempts=event.attempts + 1)
            return True
        retry_at = at + timedelta(seconds=self.backoff.delay(event.attempts + 1))
        await asyncio.to_thread(self.journal.attempt_failed, event.event_id, at, retry_at,
                                error)
        self.log.warning("order.forward_failed", event_id=event.event_id,
                         order_no=event.order_no, attempts=event.attempts + 1, error=error,
                         retry_at=_iso(retry_at))
        return False


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")
