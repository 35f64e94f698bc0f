"""The sandbox's configuration and the running parts one app instance shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.responses import Response

from cosigner.models import dumps_exact
from cosigner.sandbox.auth import DEFAULT_WINDOW_MS
from cosigner.sandbox.callbacks import (
    CALLBACK_SCHEDULE_S,
    FINAL_STATUSES,
    ORDER_STEPS,
    OrderDriver,
)
from cosigner.sandbox.faults import FaultConfig, FaultInjector
from cosigner.sandbox.state import SandboxState


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the emulated provider behaves (everything has the real provider's default)."""

    #: TimeStamp tolerance and Nonce memory, +- this many milliseconds.
    window_ms: int = DEFAULT_WINDOW_MS
    #: Multiplies every order step and callback retry delay (0.001: 1000 times faster).
    callback_time_scale: float = 1.0
    order_steps: tuple[tuple[int, float], ...] = ORDER_STEPS
    callback_schedule: tuple[float, ...] = CALLBACK_SCHEDULE_S
    callback_statuses: frozenset[int] = FINAL_STATUSES
    callback_timeout: float = 10.0
    #: For tests: where callbacks go instead of the network.
    callback_transport: httpx.AsyncBaseTransport | None = field(default=None, compare=False)
    max_page_size: int = 1000
    #: Faults active from the start (``POST /sandbox/faults`` changes them).
    faults: FaultConfig = field(default_factory=FaultConfig)
    #: Base of the cashier ``url`` of created orders; None: this server's own base URL.
    cashier_url: str | None = None


class Sandbox:
    """State, clock, configuration, fault injector and order driver of one app."""

    def __init__(self, state: SandboxState, *, clock: Callable[[], int],
                 config: SandboxConfig) -> None:
        self.state = state
        self.clock = clock
        self.config = config
        self.faults = FaultInjector(config.faults)
        self.orders = OrderDriver(
            state, clock=clock, time_scale=config.callback_time_scale,
            steps=config.order_steps, schedule=config.callback_schedule,
            callback_statuses=config.callback_statuses, timeout=config.callback_timeout,
            transport=config.callback_transport)


class ExactJSONResponse(Response):
    """JSON written with :func:`~cosigner.models.dumps_exact` (number literals kept)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps_exact(content).encode("utf-8")
