"""``cosigner otc rate|create``: the C2C endpoints of the API doc."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from cosigner.api.client import ApiClient
from cosigner.api.tls import tls_context
from cosigner.errors import ConfigError
from cosigner.models import loads_exact
from cosigner.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    otc = subparsers.add_parser("otc", help="C2C endpoints: rates and orders")
    sub = otc.add_subparsers(dest="otc_command", metavar="SUBCOMMAND", required=True)
    rate = sub.add_parser("rate", help="latest buy/sell rate for a currency pair")
    rate.add_argument("crypto", metavar="CRYPTO", help="transaction currency, e.g. USDT")
    rate.add_argument("legal", metavar="LEGAL", help="payment currency, e.g. CNY")
    rate.set_defaults(func=_rate)
    create = sub.add_parser("create", help="create a C2C order from a JSON file")
    create.add_argument("--file", required=True, type=Path, metavar="ORDER.json",
                        help="the order's fields as the API doc lists them")
    create.set_defaults(func=_create)


def client_from_settings(settings: Settings) -> ApiClient:
    """An :class:`ApiClient` for the configured merchant (raises SettingsError if unset)."""
    settings.require("api_base_url", "merchant_no", "api_key", "api_secret",
                     why="to call the 1BitPay API")
    assert settings.api_secret is not None  # checked by require
    return ApiClient(
        settings.api_base_url or "", settings.merchant_no or "", settings.api_key or "",
        settings.api_secret.get_secret_value(), lang=settings.lang, sort=settings.sign_sort,
        timeout=settings.request_timeout, page_size=settings.page_size,
        max_pending=settings.max_pending, tls=tls_context(settings.ca_bundle))


def _rate(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run() -> int:
        async with client_from_settings(settings) as client:
            rate = await client.rate(args.crypto, args.legal)
        print(f"{rate.crypto}/{rate.legal} buy {rate.buy_rate_text} sell {rate.sell_rate_text}")
        return 0

    return asyncio.run(run())


def _create(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        order = loads_exact(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(order, dict):
        raise ConfigError(f"{path}: the order must be a JSON object")
    settings = load_settings()
    if not order.get("asyncUrl") and settings.callback_public_url:
        # The daemon's callback listener receives the order's status changes.
        order["asyncUrl"] = settings.callback_public_url

    async def run() -> int:
        async with client_from_settings(settings) as client:
            try:
                created = await client.create_order(order)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        print(f"orderNo {created.order_no}")
        print(f"isNew   {'true' if created.is_new else 'false'}")
        print(f"url     {created.url}")
        return 0

    return asyncio.run(run())
