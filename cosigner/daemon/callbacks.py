"""Wiring the C2C order callbacks into the daemon (DESIGN section 10).

With ``COSIGNER_CALLBACK_ADDR`` set, the daemon also serves ``POST /callbacks/order``
on that address (its own listener, not the metrics port) and, with
``COSIGNER_CALLBACK_FORWARD_URL``, runs the outbox forwarder.  Both live as long as
the daemon's ``run``; ``run --once`` starts neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cosigner.store import redact_url

from .http import HttpServer
from .metrics import Metrics

# The listener, the forwarder and the order journal are imported by build_callbacks, when
# COSIGNER_CALLBACK_ADDR is set: a daemon without callbacks does not load them at start.
if TYPE_CHECKING:
    import httpx

    from cosigner.callbacks.forwarder import Backoff, Forwarder
    from cosigner.settings import Settings
    from cosigner.store.orders import OrderJournal


@dataclass
class CallbackOptions:
    """What a test may change beyond the settings."""

    forward_backoff: Backoff | None = None
    forward_idle: float = 5.0
    forward_transport: httpx.AsyncBaseTransport | None = None
    #: In HA, whether this instance may forward now (the leader election's hook).
    forward_gate: Callable[[], bool] | None = None


class CallbackService:
    """The callback listener and (optionally) the forwarder, started and stopped with
    the daemon.  Owns the order journal it was given (closes it on :meth:`stop`)."""

    def __init__(self, journal: OrderJournal, server: HttpServer, forwarder: Forwarder | None,
                 log: Any, *, forward_url: str | None = None) -> None:
        self.journal = journal
        self.server = server
        self.forwarder = forwarder
        self.log = log
        self._forward_url = forward_url
        self._started = False

    @property
    def listening(self) -> bool:
        return self._started

    @property
    def port(self) -> int:
        """The bound port (the chosen one with port 0); RuntimeError before start."""
        return self.server.port

    async def start(self) -> None:
        """Listen and start forwarding.

        Raises:
            ConfigError: ``COSIGNER_CALLBACK_ADDR`` cannot be listened on.
        """
        await self.server.start()
        self._started = True
        if self.forwarder is not None:
            await self.forwarder.start()
        from cosigner.callbacks.listener import ROUTE
        self.log.info("callbacks.started", route=ROUTE, port=self.server.port,
                      forward=redact_url(self._forward_url) if self._forward_url else None)

    async def stop(self) -> None:
        """Stop listening, let the forward in flight finish, close the order journal."""
        if self._started:
            await self.server.stop()
            self._started = False
        if self.forwarder is not None:
            await self.forwarder.stop()
        await asyncio.to_thread(self.journal.close)


def build_callbacks(settings: Settings, metrics: Metrics, log: Any, database_url: str,
                    options: CallbackOptions | None = None,
                    port: int | None = None, fence: object | None = None) -> CallbackService:
    """The callback service the settings describe (``CALLBACK_ADDR`` must be set).
    ``fence``: the daemon's decision journal (on PostgreSQL only the leader records).

    Raises:
        SettingsError: a callback setting is unusable; JournalUnavailableError: the
            order tables cannot be opened or their chain does not verify.
    """
    from cosigner.callbacks.forwarder import Forwarder
    from cosigner.callbacks.listener import create_app
    from cosigner.callbacks.verify import SourcePolicy, parse_networks, transition
    from cosigner.store.orders import order_journal_from_url

    opts = options or CallbackOptions()
    address = settings.callback_host_port
    assert address is not None  # the caller checks CALLBACK_ADDR
    settings.require("api_secret", why="to verify order callbacks")
    assert settings.api_secret is not None
    source = SourcePolicy(
        allow=parse_networks(settings.callback_allow_ips, "COSIGNER_CALLBACK_ALLOW_IPS"),
        trusted_proxies=parse_networks(settings.callback_trusted_proxies,
                                       "COSIGNER_CALLBACK_TRUSTED_PROXIES"))
    journal = order_journal_from_url(database_url, transition, writer=True, fence=fence)
    journal.open()
    forwarder: Forwarder | None = None
    if settings.callback_forward_url:
        assert settings.callback_forward_secret is not None  # the settings check it
        forwarder = Forwarder(
            journal, settings.callback_forward_url,
            settings.callback_forward_secret.get_secret_value(), observer=metrics, log=log,
            timeout=settings.request_timeout, backoff=opts.forward_backoff,
            gate=opts.forward_gate or (lambda: True), idle=opts.forward_idle,
            transport=opts.forward_transport)
    metrics.start_order_callbacks(forwarding=forwarder is not None)
    app = create_app(journal, secret=settings.api_secret.get_secret_value(),
                     sort=settings.sign_sort, source=source, observer=metrics, log=log,
                     forward=forwarder is not None,
                     on_event=forwarder.notify if forwarder is not None else lambda: None)
    host, configured_port = address
    server = HttpServer(app, host, configured_port if port is None else port,
                        setting="COSIGNER_CALLBACK_ADDR")
    return CallbackService(journal, server, forwarder, log,
                           forward_url=settings.callback_forward_url)
