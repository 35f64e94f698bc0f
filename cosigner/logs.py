"""structlog configuration: one JSON object per line (or console), secrets redacted.

Processors are pure ``dict -> dict`` callables.  A :class:`SecretRedactor` (one per
configuration, given the secrets) drops the value of any key that names a secret
and masks any of its secret values wherever it appears in a string, so a secret
that slips into an exception message or an event field still never reaches the
output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from cosigner.redact import MASK, mask_url, secret_values

REDACTED = MASK
_SECRET_KEY = re.compile(
    r"(secret|password|passwd|pfx_pass|private|token|authorization|^sign$|^data$|"
    r"api_secret|database_url|dsn)", re.IGNORECASE)

class SecretRedactor:
    """structlog processor masking secret-named keys and the secret values it was given.

    One instance per logging configuration, built with the process's secrets (API
    secret, shard password, database URL ...), so nothing is kept in a module global.
    The password inside a URL (``postgresql://user:pw@host/db``) is masked on its own
    too: a driver's error message may quote it without the URL.  Values shorter than
    4 characters are ignored (masking them would mangle ordinary text).
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values = secret_values(secrets)
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = tuple(sorted(values, key=len, reverse=True))

    def __repr__(self) -> str:
        return f"SecretRedactor({len(self._secrets)} secrets)"

    def mask(self, text: str) -> str:
        """*text* with every secret value replaced by :data:`REDACTED`, and any URL's
        ``user:password@`` too (a URL the redactor was not given)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return mask_url(text) if "@" in text else text

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: (REDACTED if _SECRET_KEY.search(str(k)) else self._scrub(v))
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        if isinstance(value, BaseException):
            return self.mask(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        """The processor: mask secret-named keys and secret values anywhere."""
        for key in list(event):
            if _SECRET_KEY.search(key):
                event[key] = REDACTED
            else:
                event[key] = self._scrub(event[key])
        return event

    def mask_rendered(self, _logger: Any, _name: str, event: MutableMapping[str, Any]
                      ) -> MutableMapping[str, Any]:
        """Processor after ``format_exc_info``: mask the rendered exception text too."""
        exc = event.get("exception")
        if isinstance(exc, str):
            event["exception"] = self.mask(exc)
        return event


def configure_logging(fmt: str = "json", level: str = "info", *,
                      stream: TextIO | None = None,
                      secrets: Iterable[str | None] = ()) -> None:
    """Configure structlog once for the process (daemon, sandbox, commands), redacting
    *secrets* with a :class:`SecretRedactor` built for this configuration."""
    redactor = SecretRedactor(secrets)
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
            redactor,
            structlog.processors.format_exc_info,
            redactor.mask_rendered,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "cosigner") -> Any:
    return structlog.get_logger(name)
