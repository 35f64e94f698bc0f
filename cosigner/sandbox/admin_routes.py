"""Admin routes under ``/sandbox/``: unsigned, off the API, for tests, the demo and rehearsals.

Answers are plain JSON (no envelope); a bad request is HTTP 400 and an unknown
merchant or order 404, both with ``{"error": message}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, get_args

from cryptography import x509
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cosigner.api.auth import SIGN_SORTS
from cosigner.models import loads_exact
from cosigner.sandbox.faults import FaultConfig
from cosigner.sandbox.generate import DEFAULT_CHAINS, generate_items
from cosigner.sandbox.runtime import ExactJSONResponse, Sandbox
from cosigner.sandbox.state import (
    ITEM_STATUSES,
    DuplicateItemError,
    Merchant,
    UnknownMerchantError,
)
from cosigner.signing.shard import SIGN_SCHEMES, SignScheme


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def admin(handler: Callable[[Sandbox, Request], Awaitable[Any]], status: int = 200
          ) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            result = await handler(_sandbox(request), request)
        except AdminError as exc:
            return ExactJSONResponse({"error": str(exc)}, status_code=exc.status)
        except UnknownMerchantError as exc:
            return ExactJSONResponse({"error": str(exc)}, status_code=404)
        except (ValueError, TypeError) as exc:
            return ExactJSONResponse({"error": str(exc)}, status_code=400)
        return ExactJSONResponse(result, status_code=status)

    return endpoint


async def _json(request: Request, *, default: Any = None) -> Any:
    raw = await request.body()
    if not raw.strip():
        if default is not None:
            return default
        raise AdminError(400, "a JSON body is required")
    try:
        return loads_exact(raw)
    except ValueError:
        raise AdminError(400, "the body is not JSON") from None


def _merchant_no(sandbox: Sandbox, value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    merchants = sandbox.state.merchants()
    if not merchants:
        raise AdminError(400, "no merchant is registered")
    return merchants[0].merchant_no


def _pem(text: str) -> str:
    try:
        x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise AdminError(400, "certificate must be one PEM-encoded X.509 certificate") from None
    return text


# -- health, merchants ------------------------------------------------------------------

async def health(sandbox: Sandbox, request: Request) -> Any:
    return {"ok": True, "merchants": len(sandbox.state.merchants())}


async def list_merchants(sandbox: Sandbox, request: Request) -> Any:
    return {"merchants": [m.public_json() for m in sandbox.state.merchants()]}


async def put_merchant(sandbox: Sandbox, request: Request) -> Any:
    body = await _json(request)
    if not isinstance(body, dict):
        raise AdminError(400, "a merchant is a JSON object")
    for key in ("merchantNo", "apiKey", "apiSecret"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise AdminError(400, f"{key} is required")
    sort = body.get("signSort", "casefold")
    scheme = body.get("signScheme", "java-rsa")
    if sort not in SIGN_SORTS:
        raise AdminError(400, f"signSort must be one of {', '.join(SIGN_SORTS)}")
    if scheme not in get_args(SignScheme):
        raise AdminError(400, f"signScheme must be one of {', '.join(SIGN_SCHEMES)}")
    certificate = body.get("certificate")
    whitelist = body.get("ipWhitelist") or []
    if not isinstance(whitelist, list) or not all(isinstance(x, str) for x in whitelist):
        raise AdminError(400, "ipWhitelist must be a list of addresses or networks")
    merchant = Merchant(merchant_no=body["merchantNo"], api_key=body["apiKey"],
                        api_secret=body["apiSecret"], sign_sort=sort, sign_scheme=scheme,
                        certificate_pem=_pem(certificate) if certificate else None,
                        ip_whitelist=tuple(whitelist))
    sandbox.state.put_merchant(merchant)
    return merchant.public_json()


async def put_certificate(sandbox: Sandbox, request: Request) -> Any:
    raw = (await request.body()).decode("utf-8", "replace")
    text = raw
    if raw.lstrip().startswith("{"):
        body = loads_exact(raw)
        text = body.get("certificate", "") if isinstance(body, dict) else ""
    merchant = sandbox.state.set_certificate(request.path_params["merchant_no"], _pem(text))
    return merchant.public_json()


# -- items and records ------------------------------------------------------------------

def _generated(body: dict[str, Any]) -> list[Any]:
    """The items a ``{"generate": N, "chains": [...], "seed": S}`` body asks for."""
    count = body["generate"]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 100_000:
        raise AdminError(400, "generate must be a count from 0 to 100000")
    chains = body.get("chains", list(DEFAULT_CHAINS))
    if not isinstance(chains, list) or not all(isinstance(c, str) for c in chains):
        raise AdminError(400, "chains must be a list of chain ids")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise AdminError(400, "seed must be an integer")
    return list(generate_items(count, seed=seed, chains=chains))


def _raw_items(body: Any) -> Any:
    """The items of an add-items body: a list, ``{"items": [...]}``, a generate request, or
    one item."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and "generate" in body:
        return _generated(body)
    if isinstance(body, dict) and "items" in body:
        return body["items"]
    return [body]


async def add_items(sandbox: Sandbox, request: Request) -> Any:
    body = await _json(request)
    merchant_value = body.get("merchantNo") if isinstance(body, dict) else None
    raws = _raw_items(body)
    if not isinstance(raws, list) or not all(isinstance(r, dict) for r in raws):
        raise AdminError(400, "items are JSON objects")
    merchant_no = _merchant_no(sandbox, merchant_value)
    try:
        items = sandbox.state.add_items(merchant_no, raws, sandbox.clock())
    except DuplicateItemError as exc:
        raise AdminError(409, str(exc)) from None
    return {"items": [dict(i.raw) for i in items]}


async def change_item(sandbox: Sandbox, request: Request) -> Any:
    try:
        item_id = int(request.path_params["item_id"])
    except ValueError:
        raise AdminError(400, "item id must be an integer") from None
    body = await _json(request)
    if not isinstance(body, dict):
        raise AdminError(400, "changes are a JSON object of item fields")
    item = sandbox.state.change_item(item_id, body)
    if item is None:
        raise AdminError(404, f"no pending item {item_id}")
    return {"item": dict(item.raw)}


async def list_items(sandbox: Sandbox, request: Request) -> Any:
    status = request.query_params.get("status")
    if status is not None and status not in ITEM_STATUSES:
        raise AdminError(400, f"status must be one of {', '.join(ITEM_STATUSES)}")
    items = sandbox.state.items(request.query_params.get("merchantNo"),
                                status)
    return {"items": [i.admin_json() for i in items]}


async def decisions(sandbox: Sandbox, request: Request) -> Any:
    return {"decisions": [r.to_json() for r in sandbox.state.approvals()]}


async def collections(sandbox: Sandbox, request: Request) -> Any:
    return {"collections": [r.to_json() for r in sandbox.state.collections()]}


async def orders(sandbox: Sandbox, request: Request) -> Any:
    out = []
    for order in sandbox.state.orders():
        entry = order.to_json()
        entry["callbacks"] = [c.to_json() for c in sandbox.state.callbacks(order.order_no)]
        out.append(entry)
    return {"orders": out}


async def set_order_status(sandbox: Sandbox, request: Request) -> Any:
    body = await _json(request)
    status = body.get("status") if isinstance(body, dict) else None
    if isinstance(status, bool) or not isinstance(status, int):
        raise AdminError(400, "status must be an integer order status")
    try:
        order = sandbox.orders.set_status(request.path_params["order_no"], status)
    except KeyError:
        raise AdminError(404, f"no order {request.path_params['order_no']!r}") from None
    return order.to_json()


async def set_rate(sandbox: Sandbox, request: Request) -> Any:
    body = await _json(request)
    if not isinstance(body, dict):
        raise AdminError(400, "a rate is a JSON object")
    values = [body.get(k) for k in ("cryptoCurrency", "legalCurrency", "buyRate", "sellRate")]
    if not all(isinstance(v, str) and v for v in values):
        raise AdminError(400, "cryptoCurrency, legalCurrency, buyRate and sellRate are "
                              "required strings")
    crypto, legal, buy, sell = (str(v) for v in values)
    sandbox.state.set_rate(crypto, legal, buy, sell)
    return {"cryptoCurrency": crypto.upper(), "legalCurrency": legal.upper(),
            "buyRate": buy, "sellRate": sell}


async def reset(sandbox: Sandbox, request: Request) -> Any:
    body = await _json(request, default={})
    everything = bool(body.get("merchants")) if isinstance(body, dict) else False
    await sandbox.orders.aclose()
    sandbox.state.reset(merchants=everything)
    sandbox.faults.clear()
    await sandbox.orders.start()
    return {"reset": True}


# -- faults -----------------------------------------------------------------------------

async def get_faults(sandbox: Sandbox, request: Request) -> Any:
    return sandbox.faults.status_json()


async def set_faults(sandbox: Sandbox, request: Request) -> Any:
    body = await _json(request)
    if not isinstance(body, dict):
        raise AdminError(400, "a fault configuration is a JSON object")
    sandbox.faults.set(FaultConfig.from_json(body))
    return sandbox.faults.status_json()


async def clear_faults(sandbox: Sandbox, request: Request) -> Any:
    sandbox.faults.clear()
    return sandbox.faults.status_json()


ADMIN_ROUTES = [
    Route("/sandbox/health", admin(health), methods=["GET"]),
    Route("/sandbox/merchants", admin(list_merchants), methods=["GET"]),
    Route("/sandbox/merchants", admin(put_merchant), methods=["POST"]),
    Route("/sandbox/merchants/{merchant_no}/certificate", admin(put_certificate),
          methods=["POST"]),
    Route("/sandbox/items", admin(add_items, 201), methods=["POST"]),
    Route("/sandbox/items", admin(list_items), methods=["GET"]),
    Route("/sandbox/items/{item_id}", admin(change_item), methods=["PATCH"]),
    Route("/sandbox/decisions", admin(decisions), methods=["GET"]),
    Route("/sandbox/collections", admin(collections), methods=["GET"]),
    Route("/sandbox/orders", admin(orders), methods=["GET"]),
    Route("/sandbox/orders/{order_no}/status", admin(set_order_status), methods=["POST"]),
    Route("/sandbox/rates", admin(set_rate), methods=["POST"]),
    Route("/sandbox/reset", admin(reset), methods=["POST"]),
    Route("/sandbox/faults", admin(get_faults), methods=["GET"]),
    Route("/sandbox/faults", admin(set_faults), methods=["POST"]),
    Route("/sandbox/faults", admin(clear_faults), methods=["DELETE"]),
]
