"""C2C orders after ``/api/otc/create``: status progression and callbacks to ``asyncUrl``.

An order starts at status 0 (initialized) and moves through ``steps`` (by
default 2 "in progress" after 60 s, then 1 "completed" 300 s later).  Entering
a status in ``callback_statuses`` (by default the final ones: -2, -1, 1, 9)
sends the API doc's callback, a JSON POST of ``status``, ``dealAmount`` (the
order's amount as a JSON number literal), ``orderNo``, ``merchantOrderNo``,
``orderType`` and ``signature`` (:func:`~cosigner.api.auth.sign_callback` over
the other fields with the merchant's API secret and sort mode).

A delivery succeeds when the receiver answers JSON with ``code`` 200 (the
number, or the string ``"200"``).  Anything else (another code, a non-JSON
body, an HTTP error, a refused connection, a timeout) is retried at the API
doc's times, counted from the first attempt: 2, 5, 10, 30, 60, 90 minutes,
then every hour from 2 h to 12 h, and never after.  Every attempt is recorded
in the state.  ``time_scale`` multiplies every delay, so ``0.001`` runs the
12-hour schedule in 43 seconds and ``0.00001`` in under half a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Sequence
from typing import Any

import httpx

from cosigner.api.auth import sign_callback
from cosigner.models import JsonNumber, dumps_exact, loads_exact
from cosigner.sandbox.state import Order, SandboxState

#: Retry times in seconds after the first attempt (the API doc's "Callback rules").
CALLBACK_SCHEDULE_S: tuple[float, ...] = (
    120, 300, 600, 1800, 3600, 5400,
    *(hours * 3600 for hours in range(2, 13)),
)
FINAL_STATUSES = frozenset({-2, -1, 1, 9})
#: (status, seconds after the previous status) an order goes through after creation.
ORDER_STEPS: tuple[tuple[int, float], ...] = ((2, 60.0), (1, 300.0))
ORDER_STATUSES = frozenset({-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9})


def callback_body(order: Order, status: int, secret: str, sort: Any = "casefold") -> bytes:
    """The signed callback for ``order`` entering ``status``."""
    fields: dict[str, Any] = {
        "status": status,
        "dealAmount": JsonNumber(order.crypto_amount),
        "orderNo": order.order_no,
        "merchantOrderNo": order.merchant_order_no,
        "orderType": order.order_type,
    }
    fields["signature"] = sign_callback(fields, secret, sort)
    return dumps_exact(fields).encode("utf-8")


def answer_ok(body: bytes) -> bool:
    """True when a receiver's answer says success (``code`` 200)."""
    try:
        data = loads_exact(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("code") in (200, "200")


class OrderDriver:
    """Moves orders through their statuses and delivers their callbacks, in the current loop.

    Start it with :meth:`start` (the app's lifespan does) and close it with
    :meth:`aclose`, which cancels every pending step and retry.
    """

    def __init__(self, state: SandboxState, *, clock: Callable[[], int],
                 time_scale: float = 1.0,
                 steps: Sequence[tuple[int, float]] = ORDER_STEPS,
                 schedule: Sequence[float] = CALLBACK_SCHEDULE_S,
                 callback_statuses: Collection[int] = FINAL_STATUSES,
                 timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must not be negative")
        self.state = state
        self.clock = clock
        self.time_scale = time_scale
        self.steps = tuple(steps)
        self.schedule = tuple(schedule)
        self.callback_statuses = frozenset(callback_statuses)
        self.timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._progressions: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the HTTP client and resume orders that had not reached their last step."""
        self._client = httpx.AsyncClient(timeout=self.timeout, transport=self._transport,
                                         follow_redirects=False, trust_env=False)
        step_statuses = [status for status, _ in self.steps]
        for order in self.state.orders():
            if order.status == 0:
                self.drive(order.order_no)
            elif order.status in step_statuses[:-1]:
                self.drive(order.order_no, from_step=step_statuses.index(order.status) + 1)

    async def aclose(self) -> None:
        """Cancel pending steps and retries and close the HTTP client."""
        tasks = [*self._tasks, *self._progressions.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._progressions.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def idle(self) -> None:
        """Wait until no step or delivery is pending (tests)."""
        while self._tasks or self._progressions:
            await asyncio.gather(*self._tasks, *self._progressions.values(),
                                 return_exceptions=True)
            await asyncio.sleep(0)  # let the done-callbacks forget the finished tasks

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def drive(self, order_no: str, *, from_step: int = 0) -> None:
        """Start moving ``order_no`` through the steps (from step ``from_step``)."""
        task = asyncio.get_running_loop().create_task(self._progress(order_no, from_step))
        self._progressions[order_no] = task
        task.add_done_callback(lambda _t: self._progressions.pop(order_no, None))

    async def _progress(self, order_no: str, from_step: int) -> None:
        for status, delay in self.steps[from_step:]:
            await asyncio.sleep(delay * self.time_scale)
            self._enter(order_no, status)

    def set_status(self, order_no: str, status: int) -> Order:
        """Force ``status`` (admin), stopping the automatic progression; KeyError if unknown."""
        if status not in ORDER_STATUSES:
            raise ValueError(f"order status must be one of -2..9, not {status!r}")
        task = self._progressions.pop(order_no, None)
        if task is not None:
            task.cancel()
        return self._enter(order_no, status)

    def _enter(self, order_no: str, status: int) -> Order:
        order = self.state.set_order_status(order_no, status, self.clock())
        if status in self.callback_statuses and order.async_url:
            self._spawn(self.deliver(order, status))
        return order

    async def deliver(self, order: Order, status: int) -> bool:
        """Send the callback, retrying on the schedule; True once the receiver took it."""
        merchant = self.state.merchant(order.merchant_no)
        if merchant is None or not order.async_url:
            return False
        body = callback_body(order, status, merchant.api_secret, merchant.sign_sort)
        loop = asyncio.get_running_loop()
        first = loop.time()
        for attempt in range(1, len(self.schedule) + 2):
            if attempt > 1:
                due = first + self.schedule[attempt - 2] * self.time_scale
                await asyncio.sleep(max(0.0, due - loop.time()))
            if await self._attempt(order, status, body, attempt):
                return True
        return False

    async def _attempt(self, order: Order, status: int, body: bytes, attempt: int) -> bool:
        assert order.async_url is not None
        if self._client is None:
            raise RuntimeError("OrderDriver.start() was not called")
        sent_ms = self.clock()
        http_status: int | None = None
        answer: str | None = None
        error: str | None = None
        ok = False
        try:
            response = await self._client.post(
                order.async_url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            http_status = response.status_code
            answer = response.text[:500]
            ok = response.is_success and answer_ok(response.content)
            if not ok:
                error = "answer is not code 200"
        self.state.record_callback(order_no=order.order_no, attempt=attempt, sent_ms=sent_ms,
                                   order_status=status, body=body.decode("utf-8"),
                                   http_status=http_status, answer=answer, ok=ok, error=error)
        return ok
