"""The sandbox as an ASGI application: :func:`create_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from cosigner.api.auth import timestamp_ms
from cosigner.sandbox.admin_routes import ADMIN_ROUTES
from cosigner.sandbox.endpoints import API_ROUTES
from cosigner.sandbox.faults import FaultMiddleware
from cosigner.sandbox.runtime import Sandbox, SandboxConfig
from cosigner.sandbox.state import SandboxState


def create_app(state: SandboxState, *, clock: Callable[[], int] = timestamp_ms,
               config: SandboxConfig | None = None) -> Starlette:
    """A 1BitPay emulator over ``state``.

    ``clock`` returns the time in milliseconds (checked against ``TimeStamp``
    and stamped on every record).  The running parts are at
    ``app.state.sandbox`` (a :class:`~cosigner.sandbox.runtime.Sandbox`).  Order
    progression and callbacks run while the app's lifespan is active, so
    serve it with a server that runs the lifespan (uvicorn does).
    """
    sandbox = Sandbox(state, clock=clock, config=config or SandboxConfig())

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await sandbox.orders.start()
        try:
            yield
        finally:
            sandbox.faults.release()
            await sandbox.orders.aclose()

    app = Starlette(routes=[*API_ROUTES, *ADMIN_ROUTES], lifespan=lifespan,
                    middleware=[Middleware(FaultMiddleware, injector=sandbox.faults)])
    app.state.sandbox = sandbox
    return app
