"""structlog configuration: one JSON object per line (or console), secrets redacted.

Processors are pure ``dict -> dict`` functions.  :func:`redact_secrets` drops the
value of any key that names a secret and masks any registered secret value
wherever it appears in a string, so a secret that slips into an exception
message or an event field still never reaches the output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from cosigner.redact import MASK, mask_secrets, mask_url, register_secret

__all__ = ["REDACTED", "configure_logging", "get_logger", "redact_secrets", "register_secret"]

REDACTED = MASK
_SECRET_KEY = re.compile(
    r"(secret|password|passwd|pfx_pass|private|token|authorization|^sign$|^data$|"
    r"api_secret|database_url|dsn)", re.IGNORECASE)


def _mask(text: str) -> str:
    # Registered secret values live in cosigner.redact, shared with what the journal
    # stores; a URL's userinfo is masked wherever a URL is logged.
    return mask_url(mask_secrets(text))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) else _scrub(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, BaseException):
        return _mask(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-named keys and registered secret values."""
    for key in list(event):
        if _SECRET_KEY.search(key):
            event[key] = REDACTED
        else:
            event[key] = _scrub(event[key])
    return event


def _mask_rendered(_logger: Any, _name: str, event: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    # exc_info is rendered into "exception" late; mask that text too.
    exc = event.get("exception")
    if isinstance(exc, str):
        event["exception"] = _mask(exc)
    return event


def configure_logging(fmt: str = "json", level: str = "info", *,
                      stream: TextIO | None = None,
                      secrets: Iterable[str | None] = ()) -> None:
    """Configure structlog once for the process (daemon, sandbox, commands)."""
    register_secret(*secrets)
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            _mask_rendered,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "cosigner") -> Any:
    return structlog.get_logger(name)
