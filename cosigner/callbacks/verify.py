"""Verifying a C2C order callback (DESIGN section 10), as pure functions of the request.

The checks run in this order, and the first that fails decides the answer:

1. **source**: the peer (or, when the peer is a trusted proxy, the client its
   ``X-Forwarded-For`` names) is inside ``COSIGNER_CALLBACK_ALLOW_IPS`` -> ``forbidden``;
2. **size**: the body is at most :data:`MAX_BODY` bytes -> ``malformed``
   (answered 413);
3. **shape**: UTF-8, one JSON object, no duplicate key at any depth, no
   ``NaN``/``Infinity``, the API doc's fields with their types: ``status`` an
   integer in -2..9, ``dealAmount`` a finite non-negative decimal kept as its exact
   text, ``orderNo``/``merchantOrderNo``/``signature`` non-empty strings,
   ``orderType`` 1 or 2 -> ``malformed``;
4. **signature**: the ``Sign`` of every other body field under the API secret
   (:func:`cosigner.api.auth.compute_sign`, the configured sort mode), compared in
   constant time -> ``bad_signature``.

Nothing here does I/O: the listener hands in the peer, the header and the bytes.
What a verified callback does to an order is :func:`transition`.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from cosigner.api.auth import SignSort, verify_callback
from cosigner.models import JsonNumber

#: The largest callback body accepted (the API doc's callback is ~200 bytes).
MAX_BODY = 64 * 1024
#: Statuses after which an order never changes (-2 matching failed, -1 canceled,
#: 1 and 9 completed).
FINAL_STATUSES = frozenset({-2, -1, 1, 9})
ORDER_STATUSES = frozenset(range(-2, 10))
#: The longest orderNo / merchantOrderNo accepted.
MAX_ID_LENGTH = 128

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Outcome(enum.StrEnum):
    """What became of one callback request (the ``outcome`` label of
    ``cosigner_order_callbacks_total``)."""

    ACCEPTED = "accepted"            # verified, recorded and applied to the order
    DUPLICATE = "duplicate"          # verified, already recorded: nothing new
    LATE = "late"                    # verified and recorded, not applied (order moved on)
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    FORBIDDEN = "forbidden"
    ERROR = "error"                  # verified but the journal could not record it


class Transition(enum.StrEnum):
    """How a verified callback relates to the order's recorded state."""

    APPLIED = "applied"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class OrderCallback:
    """A callback whose shape and signature verified.

    ``deal_amount`` is the exact text of ``dealAmount`` (``10.50`` stays ``10.50``);
    ``body`` the exact text received; ``content_hash`` the sha256 of the canonical
    content (sorted keys, exact number text), so the same callback sent again (the
    provider's retries) has the same hash whatever its whitespace or key order.
    """

    order_no: str
    merchant_order_no: str
    status: int
    deal_amount: str
    order_type: int
    content_hash: str
    body: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request refused before it could touch an order; ``reason`` is for the log
    (it never repeats a secret or the body)."""

    outcome: Outcome
    reason: str
    http_status: int = 400


class _DuplicateKey(ValueError):
    pass


class _BadConstant(ValueError):
    pass


# -- source ------------------------------------------------------------------------------

def parse_networks(text: str | None, setting: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDRs (``10.0.0.0/8, 2001:db8::/32, 203.0.113.7``).

    Raises:
        ValueError: an entry is not an address or network (the message names
            ``setting`` and the entry).
    """
    networks: list[Network] = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {entry!r} is not an IP address or CIDR") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """Who may post callbacks.  No ``allow`` networks: anyone (the signature still
    decides).  ``trusted_proxies``: peers whose ``X-Forwarded-For`` is believed."""

    allow: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The address the request comes from, or None when it cannot be told.

        Behind trusted proxies that is the right-most ``X-Forwarded-For`` entry that
        is not itself a trusted proxy (entries left of it could be forged by the
        client); without one, the peer.
        """
        address = _address(peer)
        if address is None:
            return None
        if not forwarded_for or not _inside(address, self.trusted_proxies):
            return str(address)
        hops = [h.strip() for h in forwarded_for.split(",")]
        for hop in reversed(hops):
            hop_address = _address(hop)
            if hop_address is None:
                return None
            address = hop_address
            if not _inside(address, self.trusted_proxies):
                break
        return str(address)

    def check(self, peer: str | None, forwarded_for: str | None) -> Rejection | None:
        """None when the request may proceed, else the ``forbidden`` rejection."""
        if not self.allow:
            return None
        client = self.client(peer, forwarded_for)
        address = _address(client)
        if address is None:
            return Rejection(Outcome.FORBIDDEN, "source address unknown or unparsable", 403)
        if not _inside(address, self.allow):
            return Rejection(Outcome.FORBIDDEN, f"source {client} is not in "
                             "COSIGNER_CALLBACK_ALLOW_IPS", 403)
        return None


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inside(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
            networks: Iterable[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


# -- body ----------------------------------------------------------------------------------

def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise _BadConstant(name)


def _malformed(reason: str) -> Rejection:
    return Rejection(Outcome.MALFORMED, reason, 400)


def parse_callback(body: bytes) -> OrderCallback | Rejection:
    """The callback in ``body`` if its size and shape are right (the signature is not
    checked here), else the ``malformed`` rejection saying why."""
    if len(body) > MAX_BODY:
        return Rejection(Outcome.MALFORMED, f"body over {MAX_BODY} bytes", 413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _malformed("body is not UTF-8")
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_float=JsonNumber,
                          parse_constant=_constant)
    except _DuplicateKey as exc:
        return _malformed(f"duplicate key {str(exc)[:40]!r}")
    except _BadConstant as exc:
        return _malformed(f"{exc} is not a JSON number")
    except (ValueError, RecursionError):
        return _malformed("body is not JSON")
    if not isinstance(data, dict):
        return _malformed("body is not a JSON object")
    return _fields(data, text)


def _fields(data: Mapping[str, Any], text: str) -> OrderCallback | Rejection:
    status = data.get("status")
    if not _is_int(status) or status not in ORDER_STATUSES:
        return _malformed("status is not an integer in -2..9")
    order_type = data.get("orderType")
    if not _is_int(order_type) or order_type not in (1, 2):
        return _malformed("orderType is not 1 or 2")
    deal_amount = _amount_text(data.get("dealAmount"))
    if deal_amount is None:
        return _malformed("dealAmount is not a finite non-negative decimal")
    strings = {}
    for name in ("orderNo", "merchantOrderNo", "signature"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            return _malformed(f"{name} is not a non-empty string")
        if len(value) > MAX_ID_LENGTH or not value.isprintable():
            return _malformed(f"{name} is too long or holds control characters")
        strings[name] = value
    return OrderCallback(
        order_no=strings["orderNo"], merchant_order_no=strings["merchantOrderNo"],
        status=status, deal_amount=deal_amount, order_type=order_type,
        content_hash=content_hash(data), body=text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _amount_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | str):  # a str may be a JsonNumber literal
        return None
    text = str(value)
    try:
        amount = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite() or amount < 0 or text != text.strip():
        return None
    return text


def content_hash(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical content of a callback (sorted keys, exact number text)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- signature -----------------------------------------------------------------------------

def signature_ok(body: str, secret: str, sort: SignSort) -> bool:
    """Whether the ``signature`` of the (already shape-checked) callback ``body`` is the
    ``Sign`` of every other field under ``secret``, a field named ``Sign`` included
    (:func:`cosigner.api.auth.verify_callback`: constant-time compare)."""
    try:
        return verify_callback(body, secret, sort)
    except (TypeError, ValueError, InvalidOperation):
        return False


def verify(body: bytes, secret: str, sort: SignSort) -> OrderCallback | Rejection:
    """Size, shape and signature of a callback body (the source is checked before)."""
    parsed = parse_callback(body)
    if isinstance(parsed, Rejection):
        return parsed
    if not signature_ok(parsed.body, secret, sort):
        return Rejection(Outcome.BAD_SIGNATURE, "signature does not match", 401)
    return parsed


# -- what a callback does to its order -----------------------------------------------------

def _rank(status: int) -> int:
    """Progress of a status: 0 initialized, 2 in progress, 3..8 processing, then final."""
    if status in FINAL_STATUSES:
        return 100
    return {0: 0, 2: 1}.get(status, status - 1)


def transition(current: int | None, new: int) -> Transition:
    """Whether a verified callback with status ``new`` moves an order at ``current``
    (None: never seen).  Order state only moves forward: nothing overwrites a final
    status, and a non-final status no further than the current one is late."""
    if current is None:
        return Transition.APPLIED
    if current in FINAL_STATUSES:
        return Transition.LATE
    if new in FINAL_STATUSES or _rank(new) > _rank(current):
        return Transition.APPLIED
    return Transition.LATE
