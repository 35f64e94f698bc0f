"""The canonical objects the shard signs (DESIGN section 1, "The signed object").

Compact JSON, UTF-8, no ASCII escaping, keys in the API doc's order.  ``value``
is the pending item's amount exactly as the API sent it.
"""

from __future__ import annotations

import json
from typing import Any


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def approval_fields(item_id: int, from_address: str, to_address: str, value: str,
                    chain_id: str, status: int) -> dict[str, Any]:
    """The approve request's fields, in the order they are signed."""
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise TypeError("id must be an integer")
    if status not in (1, 2):
        raise ValueError(f"status must be 1 (approve) or 2 (reject), not {status!r}")
    for name, v in (("from", from_address), ("to", to_address), ("value", value),
                    ("chainId", chain_id)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a string")
    return {"id": item_id, "from": from_address, "to": to_address, "value": value,
            "chainId": chain_id, "status": status}


def approval_sign_object(item_id: int, from_address: str, to_address: str, value: str,
                         chain_id: str, status: int) -> bytes:
    """``{"id":..,"from":..,"to":..,"value":..,"chainId":..,"status":1|2}`` as signed bytes."""
    return _compact(approval_fields(item_id, from_address, to_address, value, chain_id, status))


def collect_sign_object(is_main: int) -> bytes:
    """``{"isMain":1}`` or ``{"isMain":0}`` as signed bytes."""
    if isinstance(is_main, bool) or is_main not in (0, 1):
        raise ValueError(f"isMain must be 0 or 1, not {is_main!r}")
    return _compact({"isMain": is_main})
