"""The five signed endpoints of the API doc, answering the ``{code, message, data}`` envelope."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cosigner.models import amount_text, loads_exact
from cosigner.sandbox.auth import authenticate
from cosigner.sandbox.codes import BusinessError, Code
from cosigner.sandbox.runtime import ExactJSONResponse, Sandbox
from cosigner.sandbox.state import ItemStatus, Merchant, Order
from cosigner.signing.objects import approval_sign_object, collect_sign_object
from cosigner.signing.shard import verify_data

Handler = Callable[[Sandbox, Merchant, Mapping[str, Any], Request], Awaitable[Any]]

_DECIMAL = re.compile(r"\d+(\.\d+)?")


def envelope(code: int, message: str, data: Any = None) -> Response:
    """The API's answer, always HTTP 200 (business errors included)."""
    return ExactJSONResponse({"code": code, "message": message, "data": data})


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def signed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler`` with body parsing, authentication and the envelope."""

    async def endpoint(request: Request) -> Response:
        sandbox = _sandbox(request)
        try:
            raw = await request.body()
            try:
                fields = loads_exact(raw) if raw.strip() else {}
            except ValueError:
                raise BusinessError(Code.BAD_PARAMETER, "the body is not JSON") from None
            if not isinstance(fields, dict):
                raise BusinessError(Code.BAD_PARAMETER, "the body must be a JSON object")
            merchant = authenticate(
                sandbox.state, request.headers, fields,
                client_ip=request.client.host if request.client else None,
                now_ms=sandbox.clock(), window_ms=sandbox.config.window_ms)
            data = await handler(sandbox, merchant, fields, request)
        except BusinessError as exc:
            return envelope(int(exc.code), exc.message)
        return envelope(int(Code.SUCCESS), "Success", data)

    return endpoint


# -- parameter checks -------------------------------------------------------------------

def _missing(name: str) -> BusinessError:
    return BusinessError(Code.BAD_PARAMETER, f"missing parameter {name}")


def _invalid(name: str, why: str) -> BusinessError:
    return BusinessError(Code.BAD_PARAMETER, f"invalid parameter {name}: {why}")


def param_str(fields: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise _missing(name)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _invalid(name, "must be a string")
    return str(value)


def param_int(fields: Mapping[str, Any], name: str, *, allowed: tuple[int, ...] | None = None,
              minimum: int | None = None) -> int:
    """An integer parameter; digit strings (``"1"``, as the API doc's examples send) count."""
    value = fields.get(name)
    if value is None or value == "":
        raise _missing(name)
    if isinstance(value, bool):
        raise _invalid(name, "must be an integer")
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value):
        value = int(value)
    if not isinstance(value, int):
        raise _invalid(name, "must be an integer")
    if allowed is not None and value not in allowed:
        raise _invalid(name, f"must be one of {', '.join(map(str, allowed))}")
    if minimum is not None and value < minimum:
        raise _invalid(name, f"must be at least {minimum}")
    return value


def param_decimal(fields: Mapping[str, Any], name: str) -> str:
    """A positive decimal amount as its exact text (``"10.50"`` or the literal ``10.50``)."""
    text = amount_text(fields.get(name))
    if text is None or text == "":
        raise _missing(name)
    try:
        ok = _DECIMAL.fullmatch(text) is not None and Decimal(text) > 0
    except InvalidOperation:
        ok = False
    if not ok:
        raise _invalid(name, "must be a positive decimal number")
    return text


# -- C2C --------------------------------------------------------------------------------

async def rate(sandbox: Sandbox, merchant: Merchant, fields: Mapping[str, Any],
               request: Request) -> Any:
    crypto = param_str(fields, "cryptoCurrency") or ""
    legal = param_str(fields, "legalCurrency") or ""
    quote = sandbox.state.rate(crypto, legal)
    if quote is None:
        raise BusinessError(Code.NOT_FOUND, f"unknown currency pair {crypto}/{legal}")
    return {"buyRate": quote[0], "sellRate": quote[1]}


def cashier_url(base: str, order_no: str, lang: str) -> str:
    token = hashlib.sha256(f"cashier:{order_no}".encode()).hexdigest()[:32]
    return f"{base.rstrip('/')}/1bitpay-open-api-h5/otc.html?t={token}&o={order_no}&l={lang}"


async def create(sandbox: Sandbox, merchant: Merchant, fields: Mapping[str, Any],
                 request: Request) -> Any:
    for name in ("userName", "areaCode", "phone", "idCard"):
        param_str(fields, name)
    amount = param_decimal(fields, "cryptoAmount")
    crypto = param_str(fields, "cryptoCurrency") or ""
    legal = param_str(fields, "legalCurrency") or ""
    param_int(fields, "idCardType", allowed=(1, 2))
    param_int(fields, "kyc", minimum=0)
    merchant_order_no = param_str(fields, "merchantOrderNo") or ""
    order_type = param_int(fields, "orderType", allowed=(1, 2))
    pay_way = param_int(fields, "payWay", allowed=(1, 2, 3))
    if "h5" not in fields:
        raise _missing("h5")
    if not isinstance(fields["h5"], bool):
        raise _invalid("h5", "must be true or false")
    if order_type == 2:
        if pay_way != 1:
            raise _invalid("payWay", "sell orders are paid by bank card (1)")
        param_str(fields, "bank")
        param_str(fields, "bankAccount")
    async_url = param_str(fields, "asyncUrl", required=False)
    if async_url is not None and not async_url.startswith(("http://", "https://")):
        raise _invalid("asyncUrl", "must be an http(s) URL")
    param_str(fields, "syncUrl", required=False)
    if sandbox.state.rate(crypto, legal) is None:
        raise BusinessError(Code.NOT_FOUND, f"unknown currency pair {crypto}/{legal}")
    now = sandbox.clock()
    order_no = str(secrets.randbelow(9 * 10**17) + 10**17)
    order, is_new = sandbox.state.create_order(Order(
        order_no=order_no, merchant_no=merchant.merchant_no,
        merchant_order_no=merchant_order_no, order_type=order_type, crypto_amount=amount,
        crypto_currency=crypto.upper(), legal_currency=legal.upper(), async_url=async_url,
        status=0, created_ms=now, updated_ms=now, request=dict(fields)))
    if is_new:
        sandbox.orders.drive(order.order_no)
    base = sandbox.config.cashier_url or str(request.base_url)
    lang = request.headers.get("Lang", "en")
    return {"url": cashier_url(base, order.order_no, lang), "isNew": is_new,
            "orderNo": order.order_no}


# -- MPC co-signer ----------------------------------------------------------------------

async def pending(sandbox: Sandbox, merchant: Merchant, fields: Mapping[str, Any],
                  request: Request) -> Any:
    page_num = param_int(fields, "pageNum", minimum=1)
    page_size = param_int(fields, "pageSize", minimum=1)
    if page_size > sandbox.config.max_page_size:
        raise _invalid("pageSize", f"must be at most {sandbox.config.max_page_size}")
    total, items = sandbox.state.pending_page(merchant.merchant_no, page_num, page_size)
    return {"total": total, "list": [dict(item.raw) for item in items]}


def _check_approve(sandbox: Sandbox, merchant: Merchant, fields: Mapping[str, Any],
                   facts: dict[str, Any]) -> str:
    """Every check of an approve, in order; fills ``facts`` for the record; the reason."""
    item_id = param_int(fields, "id")
    facts["item_id"] = item_id
    status = param_int(fields, "status", allowed=(1, 2))
    facts["status"] = status
    sent = {name: param_str(fields, name) or "" for name in ("from", "to", "value", "chainId")}
    data = param_str(fields, "data") or ""
    certificate = merchant.certificate()
    if certificate is None:
        facts["verified"] = False
        raise BusinessError(Code.BAD_DATA, f"no certificate is registered for merchant "
                                           f"{merchant.merchant_no}")
    payload = approval_sign_object(item_id, sent["from"], sent["to"], sent["value"],
                                   sent["chainId"], status)
    facts["verified"] = verify_data(certificate, payload, data, merchant.sign_scheme)
    if not facts["verified"]:
        raise BusinessError(Code.BAD_DATA, "data does not verify against the merchant "
                                           "certificate")
    item = sandbox.state.item(item_id)
    if item is None or item.merchant_no != merchant.merchant_no:
        raise BusinessError(Code.ITEM_NOT_FOUND, f"pending item {item_id} not found")
    if item.status != "pending":
        raise BusinessError(Code.ALREADY_PROCESSED, f"item {item_id} is already {item.status}")
    stored = {"from": item.raw.get("fromAddress"), "to": item.raw.get("toAddress"),
              "value": item.raw.get("amount"), "chainId": item.raw.get("chainId")}
    for name, value in stored.items():
        if amount_text(value) != sent[name]:
            raise BusinessError(Code.FIELD_MISMATCH,
                                f"{name} differs from pending item {item_id}")
    outcome: ItemStatus = "approved" if status == 1 else "rejected"
    if not sandbox.state.decide(item_id, outcome, sandbox.clock()):
        raise BusinessError(Code.ALREADY_PROCESSED, f"item {item_id} is already decided")
    return outcome


async def approve(sandbox: Sandbox, merchant: Merchant, fields: Mapping[str, Any],
                  request: Request) -> Any:
    facts: dict[str, Any] = {"item_id": None, "status": None, "verified": None}
    code, reason = int(Code.SUCCESS), ""
    try:
        reason = _check_approve(sandbox, merchant, fields, facts)
    except BusinessError as exc:
        code, reason = int(exc.code), exc.message
        raise
    finally:
        sandbox.state.record_approve(
            received_ms=sandbox.clock(), merchant_no=merchant.merchant_no,
            item_id=facts["item_id"], status=facts["status"], body=dict(fields),
            verified=facts["verified"], code=code, reason=reason)
    return None


async def collect(sandbox: Sandbox, merchant: Merchant, fields: Mapping[str, Any],
                  request: Request) -> Any:
    is_main: int | None = None
    verified: bool | None = None
    code, reason = int(Code.SUCCESS), "collected"
    try:
        is_main = param_int(fields, "isMain", allowed=(0, 1))
        data = param_str(fields, "data") or ""
        certificate = merchant.certificate()
        verified = certificate is not None and verify_data(
            certificate, collect_sign_object(is_main), data, merchant.sign_scheme)
        if certificate is None:
            raise BusinessError(Code.BAD_DATA, f"no certificate is registered for merchant "
                                               f"{merchant.merchant_no}")
        if not verified:
            raise BusinessError(Code.BAD_DATA, "data does not verify against the merchant "
                                               "certificate")
    except BusinessError as exc:
        code, reason = int(exc.code), exc.message
        raise
    finally:
        sandbox.state.record_collect(
            received_ms=sandbox.clock(), merchant_no=merchant.merchant_no, is_main=is_main,
            body=dict(fields), verified=verified, code=code, reason=reason)
    return None


API_ROUTES = [
    Route("/api/otc/rate", signed(rate), methods=["POST"]),
    Route("/api/otc/create", signed(create), methods=["POST"]),
    Route("/api/transaction/pending", signed(pending), methods=["POST"]),
    Route("/api/transaction/approve", signed(approve), methods=["POST"]),
    Route("/api/transaction/assets/collect", signed(collect), methods=["POST"]),
]
