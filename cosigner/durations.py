"""The one duration grammar of cosigner: ``90s``, ``30m``, ``24h``, ``7d`` (DESIGN section 3).

A whole number (no sign, no leading zero, at most 7 digits) and one unit:
``s`` seconds, ``m`` minutes, ``h`` hours, ``d`` days.  Policy
windows, the ``ago`` of policy test histories and ``audit --since`` all read it
here, and ``policy explain`` writes windows back in it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

DURATION: Final = re.compile(r"(0|[1-9][0-9]{0,6})([smhd])")
_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: How the grammar is described in error messages.
EXAMPLES: Final = "30m, 24h or 7d"


def parse_duration(text: str) -> timedelta | None:
    """The duration *text* names, or None when it does not follow the grammar."""
    match = DURATION.fullmatch(text)
    if match is None:
        return None
    return timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])


def format_duration(duration: timedelta) -> str:
    """*duration* in the grammar, in the largest unit that divides it (``24h``, ``7d``)."""
    seconds = int(duration.total_seconds())
    for unit in ("d", "h", "m"):
        size = _SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
