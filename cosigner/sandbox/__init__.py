"""A faithful local 1BitPay: the sandbox emulator (DESIGN section 8).

Every endpoint of the API doc with its checks, admin routes under ``/sandbox/``
and faults on purpose.  See ``cosigner/sandbox/README.md`` for the routes, the
answer codes and a walkthrough.

* :func:`create_app` - the Starlette app over a :class:`SandboxState`
* :class:`SandboxServer` - that app on a loopback socket (in this loop or a thread)
* :class:`SandboxAdmin` - the admin routes from Python
* :class:`SqliteState` - the state, in memory or in a SQLite file
"""

from cosigner.sandbox.admin import SandboxAdmin, SandboxAdminError
from cosigner.sandbox.app import create_app
from cosigner.sandbox.codes import Code
from cosigner.sandbox.faults import FaultConfig
from cosigner.sandbox.generate import generate_items
from cosigner.sandbox.runtime import Sandbox, SandboxConfig
from cosigner.sandbox.server import SandboxServer, UvicornServer
from cosigner.sandbox.state import Merchant, SandboxState, SqliteState

__all__ = [
    "Code",
    "FaultConfig",
    "Merchant",
    "Sandbox",
    "SandboxAdmin",
    "SandboxAdminError",
    "SandboxConfig",
    "SandboxServer",
    "SandboxState",
    "SqliteState",
    "UvicornServer",
    "create_app",
    "generate_items",
]
