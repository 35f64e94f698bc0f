"""``POST /callbacks/order``: the ASGI app receiving 1BitPay's C2C order callbacks.

Served on its own address (``COSIGNER_CALLBACK_ADDR``), never on the metrics port.
Every request is checked (:mod:`cosigner.callbacks.verify`) before anything else;
a verified one is recorded in the journal *before* the answer, so a ``200`` always
means "durably recorded".  Answers (``{"code": ..., "message": ...}``, the code also
as the HTTP status):

====  ==============================================  ==========================
code  when                                            metric outcome
====  ==============================================  ==========================
200   recorded and applied / already recorded /       accepted / duplicate /
      recorded as late                                late
400   not one JSON object of the doc's fields         malformed
401   signature does not match                        bad_signature
403   source not in ``COSIGNER_CALLBACK_ALLOW_IPS``   forbidden
413   body over 64 KiB                                malformed
503   the journal cannot record it now                error
====  ==============================================  ==========================

Only 200 stops the provider's retries, so a callback refused for a passing reason
(503) comes again.  The reason of a refusal goes to the log, never to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cosigner.api.auth import SignSort
from cosigner.errors import StoreError
from cosigner.store.orders import LATE, NewCallback, OrderJournal

from .verify import MAX_BODY, OrderCallback, Outcome, Rejection, SourcePolicy, verify

ROUTE = "/callbacks/order"

_MESSAGES = {200: "Success", 400: "Bad request", 401: "Unauthorized", 403: "Forbidden",
             413: "Payload too large", 503: "Unavailable"}


class CallbackObserver(Protocol):
    """Where the listener reports (the daemon's metrics)."""

    def order_callback(self, outcome: str) -> None:
        """One request, by :class:`~cosigner.callbacks.verify.Outcome`."""


def answer(code: int) -> Response:
    """The answer body the provider reads: ``{"code": code, "message": ...}``."""
    return JSONResponse({"code": code, "message": _MESSAGES[code]}, status_code=code)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes
    (nothing beyond ``limit + 1`` bytes is kept)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(journal: OrderJournal, *, secret: str, sort: SignSort, source: SourcePolicy,
               observer: CallbackObserver, log: Any, forward: bool = False,
               on_event: Callable[[], None] = lambda: None) -> Starlette:
    """The callback app.  ``forward``: add an outbox event per applied callback, then
    call ``on_event`` (the forwarder's wake-up)."""

    def refuse(rejection: Rejection, client: str | None) -> Response:
        observer.order_callback(rejection.outcome)
        log.warning("callback.rejected", outcome=rejection.outcome.value,
                    reason=rejection.reason, source=client)
        return answer(rejection.http_status)

    async def order_callback(request: Request) -> Response:
        peer = request.client.host if request.client else None
        forwarded_for = request.headers.get("x-forwarded-for")
        client = source.client(peer, forwarded_for)
        denied = source.check(peer, forwarded_for)
        if denied is not None:
            return refuse(denied, client)
        body = await read_body(request)
        if body is None:
            return refuse(Rejection(Outcome.MALFORMED, f"body over {MAX_BODY} bytes", 413),
                          client)
        verified = verify(body, secret, sort)
        if isinstance(verified, Rejection):
            return refuse(verified, client)
        return await record(verified, client)

    async def record(callback: OrderCallback, client: str | None) -> Response:
        new = NewCallback(callback.order_no, callback.merchant_order_no, callback.status,
                          callback.deal_amount, callback.order_type, callback.content_hash,
                          callback.body, client)
        try:
            result = await asyncio.to_thread(journal.record, new, forward=forward)
        except StoreError as exc:
            observer.order_callback(Outcome.ERROR)
            log.error("callback.store_failed", order_no=callback.order_no,
                      status=callback.status, error=str(exc))
            return answer(503)
        if result.record is None:
            observer.order_callback(Outcome.DUPLICATE)
            log.info("callback.duplicate", order_no=callback.order_no, status=callback.status)
            return answer(200)
        record = result.record
        outcome = Outcome.LATE if record.outcome == LATE else Outcome.ACCEPTED
        observer.order_callback(outcome)
        log.info("callback.recorded", order_no=record.order_no, status=record.status,
                 previous_status=record.previous_status, outcome=outcome.value,
                 seq=record.seq, event_id=record.event_id)
        if record.event_id is not None:
            on_event()
        return answer(200)

    return Starlette(routes=[Route(ROUTE, order_callback, methods=["POST"])])
