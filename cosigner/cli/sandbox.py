"""``cosigner sandbox``: the 1BitPay emulator on its own.

The merchant comes from the same settings as the daemon (``COSIGNER_MERCHANT_NO``,
``COSIGNER_API_KEY``, ``COSIGNER_API_SECRET``, ``COSIGNER_SIGN_SORT``,
``COSIGNER_SIGN_SCHEME`` and the certificate inside ``COSIGNER_PFX_PATH``), so
one ``.env`` serves both; the flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

from cosigner.api.auth import timestamp_ms
from cosigner.errors import SettingsError
from cosigner.logs import configure_logging, get_logger
from cosigner.sandbox.app import create_app
from cosigner.sandbox.generate import generate_items
from cosigner.sandbox.runtime import SandboxConfig
from cosigner.sandbox.server import UvicornServer
from cosigner.sandbox.state import Merchant, SqliteState
from cosigner.settings import Settings, load_settings
from cosigner.signing.shard import certificate_from_pfx, certificate_pem

_FLAG_SETTINGS = {"merchant_no": "--merchant-no", "api_key": "--api-key",
                  "api_secret": "--api-secret"}


def register(subparsers: Any) -> None:
    """Add the ``sandbox`` command."""
    p = subparsers.add_parser(
        "sandbox", help="run the local 1BitPay emulator",
        description="Run the local 1BitPay emulator (every API endpoint, admin routes under "
                    "/sandbox/). The merchant is read from the COSIGNER_* settings; flags "
                    "override them.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (8080; 0 picks a free one)")
    p.add_argument("--seed-items", type=int, default=0, metavar="N",
                   help="start with N generated pending items")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="random seed for --seed-items")
    p.add_argument("--state-file", type=Path, default=None, metavar="PATH",
                   help="keep the state in this SQLite file (default: in memory)")
    p.add_argument("--merchant-no", help="overrides COSIGNER_MERCHANT_NO")
    p.add_argument("--api-key", help="overrides COSIGNER_API_KEY")
    p.add_argument("--api-secret", help="overrides COSIGNER_API_SECRET")
    p.add_argument("--sign-sort", choices=("casefold", "ascii"),
                   help="overrides COSIGNER_SIGN_SORT")
    p.add_argument("--sign-scheme", choices=("java-rsa", "rsa-sha256"),
                   help="overrides COSIGNER_SIGN_SCHEME")
    p.add_argument("--pfx-path", type=Path, help="overrides COSIGNER_PFX_PATH (its "
                   "certificate is registered; the key is not used)")
    p.add_argument("--callback-time-scale", type=float, default=1.0, metavar="F",
                   help="multiply order steps and callback retry delays by F (1.0)")
    p.add_argument("--log-format", choices=("json", "console"), default=None,
                   help="overrides COSIGNER_LOG_FORMAT")
    p.set_defaults(func=run_sandbox)


def _merchant_values(settings: Settings, args: argparse.Namespace) -> tuple[str, str, str]:
    """Merchant number, API key and secret: the flags, else the settings; SettingsError
    naming each one missing."""
    secret = settings.api_secret.get_secret_value() if settings.api_secret else None
    found = {"merchant_no": getattr(args, "merchant_no", None) or settings.merchant_no,
             "api_key": getattr(args, "api_key", None) or settings.api_key,
             "api_secret": getattr(args, "api_secret", None) or secret}
    missing = [f"COSIGNER_{name.upper()} (or {_FLAG_SETTINGS[name]})"
               for name, value in found.items() if not value]
    if missing:
        raise SettingsError(f"{', '.join(missing)} must be set to run the sandbox")
    return found["merchant_no"] or "", found["api_key"] or "", found["api_secret"] or ""


def merchant_from(settings: Settings, args: argparse.Namespace) -> Merchant:
    """The merchant to register: the settings with the flags on top; SettingsError if missing."""
    merchant_no, api_key, secret = _merchant_values(settings, args)
    pfx_path = args.pfx_path or settings.pfx_path
    pem = None
    if pfx_path is not None:
        password = settings.model_copy(update={"merchant_no": merchant_no}).shard_password()
        pem = certificate_pem(certificate_from_pfx(pfx_path, password))
    return Merchant(merchant_no=merchant_no, api_key=api_key, api_secret=secret,
                    sign_sort=args.sign_sort or settings.sign_sort,
                    sign_scheme=args.sign_scheme or settings.sign_scheme,
                    certificate_pem=pem)


def run_sandbox(args: argparse.Namespace) -> int:
    """Handler of ``cosigner sandbox``: serves until SIGINT/SIGTERM, then exit code 0."""
    settings = load_settings()
    merchant = merchant_from(settings, args)
    if args.seed_items < 0:
        raise SettingsError("--seed-items must not be negative")
    if args.callback_time_scale < 0:
        raise SettingsError("--callback-time-scale must not be negative")
    configure_logging(args.log_format or settings.log_format, settings.log_level,
                      secrets=[merchant.api_secret])
    try:
        state = SqliteState(args.state_file)
    except (OSError, ValueError, sqlite3.Error) as exc:
        raise SettingsError(f"--state-file {args.state_file}: {exc}") from None
    try:
        state.put_merchant(merchant)
        if args.seed_items:
            state.add_items(merchant.merchant_no,
                            generate_items(args.seed_items, seed=args.seed), timestamp_ms())
        config = SandboxConfig(callback_time_scale=args.callback_time_scale)
        asyncio.run(_serve(UvicornServer(create_app(state, config=config), host=args.host,
                                         port=args.port),
                           state, merchant, args))
    finally:
        state.close()
    return 0


async def _serve(server: UvicornServer, state: SqliteState, merchant: Merchant,
                 args: argparse.Namespace) -> None:
    log = get_logger("cosigner.sandbox")
    try:
        await server.start()
    except OSError as exc:
        raise SettingsError(f"cannot listen on {args.host}:{args.port}: "
                            f"{exc.strerror or exc}") from None
    url = server.url
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("sandbox.started", url=url, merchant_no=merchant.merchant_no,
             sign_sort=merchant.sign_sort, sign_scheme=merchant.sign_scheme,
             certificate=merchant.certificate_pem is not None,
             pending_items=len(state.items(merchant.merchant_no, "pending")),
             state_file=str(args.state_file) if args.state_file else None)
    if merchant.certificate_pem is None:
        log.warning("sandbox.no_certificate", merchant_no=merchant.merchant_no,
                    hint="set COSIGNER_PFX_PATH or POST /sandbox/merchants/"
                         f"{merchant.merchant_no}/certificate; approve and collect "
                         "answer 4221 until then")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
    log.info("sandbox.stopped", url=url)
