""":class:`SandboxAdmin`: the admin routes from Python (tests, the demo, rehearsals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cosigner.models import JsonNumber, dumps_exact, loads_exact
from cosigner.sandbox.faults import FaultConfig


class SandboxAdminError(Exception):
    """An admin route answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"sandbox admin: HTTP {status}: {message}")


def _floats(obj: Any) -> Any:
    """Fault settings are plain numbers: JsonNumber text back to float."""
    if isinstance(obj, JsonNumber):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_floats(v) for v in obj]
    return obj


def _pem(certificate: x509.Certificate | str) -> str:
    if isinstance(certificate, str):
        return certificate
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


class SandboxAdmin:
    """Async client of the ``/sandbox/`` routes of a running sandbox at ``base_url``."""

    def __init__(self, base_url: str, *, timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout,
                                       transport=transport, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: Any = None,
                    params: Mapping[str, str] | None = None,
                    content: str | None = None) -> Any:
        payload = content.encode() if content is not None else (
            None if body is None else dumps_exact(body).encode())
        response = await self._http.request(
            method, "/sandbox" + path, content=payload, params=params,
            headers={"Content-Type": "application/json"} if payload is not None else None)
        data = loads_exact(response.content) if response.content else None
        if response.is_error:
            message = data.get("error") if isinstance(data, dict) else response.text
            raise SandboxAdminError(response.status_code, str(message))
        return data

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/health")
        return result

    # -- merchants ----------------------------------------------------------------------

    async def merchants(self) -> list[dict[str, Any]]:
        """Registered merchants (never their secrets)."""
        return list((await self._call("GET", "/merchants"))["merchants"])

    async def register_merchant(self, merchant_no: str, api_key: str, api_secret: str, *,
                                sign_sort: str = "casefold", sign_scheme: str = "java-rsa",
                                certificate: x509.Certificate | str | None = None,
                                ip_whitelist: Sequence[str] = ()) -> dict[str, Any]:
        """Add or replace a merchant."""
        body: dict[str, Any] = {"merchantNo": merchant_no, "apiKey": api_key,
                                "apiSecret": api_secret, "signSort": sign_sort,
                                "signScheme": sign_scheme, "ipWhitelist": list(ip_whitelist)}
        if certificate is not None:
            body["certificate"] = _pem(certificate)
        result: dict[str, Any] = await self._call("POST", "/merchants", body)
        return result

    async def register_certificate(self, merchant_no: str,
                                   certificate: x509.Certificate | str) -> dict[str, Any]:
        """Register the certificate that ``data`` is verified against."""
        result: dict[str, Any] = await self._call(
            "POST", f"/merchants/{merchant_no}/certificate",
            {"certificate": _pem(certificate)})
        return result

    # -- pending items ------------------------------------------------------------------

    async def add_items(self, items: Sequence[Mapping[str, Any]], *,
                        merchant_no: str | None = None) -> list[dict[str, Any]]:
        """Queue items (an item without ``id`` gets the next one); returns them as listed.

        An amount given as :class:`~cosigner.models.JsonNumber` is sent, stored and
        listed as that number literal.
        """
        body: dict[str, Any] = {"items": list(items)}
        if merchant_no is not None:
            body["merchantNo"] = merchant_no
        return list((await self._call("POST", "/items", body))["items"])

    async def add_item(self, item: Mapping[str, Any], *,
                       merchant_no: str | None = None) -> dict[str, Any]:
        return (await self.add_items([item], merchant_no=merchant_no))[0]

    async def change_item(self, item_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change a pending item's fields under the same id (what a mutation looks like)."""
        result: dict[str, Any] = (await self._call("PATCH", f"/items/{item_id}",
                                                   dict(changes)))["item"]
        return result

    async def generate_items(self, count: int, *, seed: int | None = None,
                             chains: Sequence[str] | None = None,
                             merchant_no: str | None = None) -> list[dict[str, Any]]:
        """Queue ``count`` realistic items (reproducible with ``seed``)."""
        body: dict[str, Any] = {"generate": count}
        if seed is not None:
            body["seed"] = seed
        if chains is not None:
            body["chains"] = list(chains)
        if merchant_no is not None:
            body["merchantNo"] = merchant_no
        return list((await self._call("POST", "/items", body))["items"])

    async def items(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every item with its status (``pending``, ``approved``, ``rejected``)."""
        params = {"status": status} if status else None
        return list((await self._call("GET", "/items", params=params))["items"])

    # -- what it received ---------------------------------------------------------------

    async def decisions(self) -> list[dict[str, Any]]:
        """Every approve received: body, ``verified``, answered ``code`` and ``reason``."""
        return list((await self._call("GET", "/decisions"))["decisions"])

    async def collections(self) -> list[dict[str, Any]]:
        """Every collect received, with ``verified``, ``code`` and ``reason``."""
        return list((await self._call("GET", "/collections"))["collections"])

    async def orders(self) -> list[dict[str, Any]]:
        """C2C orders, each with its ``callbacks`` (every delivery attempt)."""
        return list((await self._call("GET", "/orders"))["orders"])

    async def set_order_status(self, order_no: str, status: int) -> dict[str, Any]:
        """Force an order's status (a final one sends the callback)."""
        result: dict[str, Any] = await self._call("POST", f"/orders/{order_no}/status",
                                                  {"status": status})
        return result

    async def set_rate(self, crypto: str, legal: str, buy: str, sell: str) -> None:
        await self._call("POST", "/rates", {"cryptoCurrency": crypto, "legalCurrency": legal,
                                            "buyRate": buy, "sellRate": sell})

    async def reset(self, *, merchants: bool = False) -> None:
        """Forget items, records, orders, nonces and faults (and merchants when asked)."""
        await self._call("POST", "/reset", {"merchants": merchants})

    # -- faults -------------------------------------------------------------------------

    async def set_faults(self, faults: FaultConfig | Mapping[str, Any]) -> dict[str, Any]:
        """Switch faults on (a :class:`FaultConfig` or its camelCase JSON)."""
        body = faults.to_json() if isinstance(faults, FaultConfig) else dict(faults)
        result: dict[str, Any] = _floats(await self._call("POST", "/faults", body))
        return result

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/faults")

    async def faults(self) -> dict[str, Any]:
        """The fault configuration and how many of each kind were injected."""
        result: dict[str, Any] = _floats(await self._call("GET", "/faults"))
        return result
