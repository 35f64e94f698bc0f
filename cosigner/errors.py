"""The one exception tree of cosigner.

Refusals (a policy saying *hold* or *reject*) are values, never exceptions.
Exceptions are for bad input, broken infrastructure and crypto failures, and
every one of them ends in *hold* for the item concerned.  Messages name the
setting, file:line or item id involved and never contain a secret.

::

    CosignerError
    ├── ConfigError (ValueError)            bad settings / files: exit 2
    │   ├── SettingsError                   a COSIGNER_* setting is missing or invalid
    │   ├── ShardError                      the PKCS#12 shard cannot be used
    │   └── PolicyError                     a policy file does not load (carries every problem)
    ├── SigningError                        a payload cannot be signed (too long for the key, ...)
    ├── ApiError                            talking to 1BitPay failed
    │   ├── ApiResponseError                envelope with code != 200 (keeps code and message)
    │   │   └── AlreadyProcessedError       the item was already decided on the server
    │   ├── ApiHTTPError                    non-2xx HTTP status
    │   ├── ApiProtocolError                body is not JSON / not the envelope
    │   └── ApiTransportError               the exchange did not complete
    │       ├── ApiConnectError             provably never reached the server (safe to retry)
    │       │   └── ApiCertificateError         the TLS certificate check or handshake failed
    │       └── ApiTimeoutError             timed out (may or may not have reached it)
    └── StoreError                          the journal cannot be used
        ├── JournalConflictError            a write the journal refuses: id already decided,
        │                                   or an approval that would break a limit
        ├── LockLostError                   this process no longer holds the writer lock
        └── JournalUnavailableError         missing / unreadable / newer schema / chain broken /
            │                               behind its witness: exit 2
            └── JournalLockedError          another process is the journal's writer: exit 2
"""

from __future__ import annotations

from collections.abc import Sequence


class CosignerError(Exception):
    """Base of every error cosigner raises on purpose."""


class ConfigError(CosignerError, ValueError):
    """A setting or a file given by the operator is unusable (exit code 2)."""


class SettingsError(ConfigError):
    """A ``COSIGNER_*`` setting is missing or invalid."""


class ShardError(ConfigError):
    """The PKCS#12 private-key shard cannot be loaded or must not be used."""


class PolicyError(ConfigError):
    """A policy does not load; ``problems`` holds one ``file:line: message`` each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) if self.problems else "policy error")


class SigningError(CosignerError):
    """A payload cannot be signed with the shard (for example too long for the key)."""


class ApiError(CosignerError):
    """A call to the 1BitPay API did not succeed."""

    def __init__(self, endpoint: str, message: str) -> None:
        self.endpoint = endpoint
        super().__init__(f"{endpoint}: {message}")


class ApiResponseError(ApiError):
    """The API answered with an envelope whose ``code`` is not 200."""

    def __init__(self, endpoint: str, code: object, message: str) -> None:
        self.code = code
        self.api_message = message
        super().__init__(endpoint, f"API code {code}: {message}")


class AlreadyProcessedError(ApiResponseError):
    """The API says the item was already approved or rejected."""


class ApiHTTPError(ApiError):
    """The API answered with a non-2xx HTTP status."""

    def __init__(self, endpoint: str, status: int, message: str = "") -> None:
        self.status = status
        super().__init__(endpoint, f"HTTP {status}" + (f": {message}" if message else ""))


class ApiProtocolError(ApiError):
    """The answer is not JSON or not the ``{code, message, data}`` envelope."""


class ApiTransportError(ApiError):
    """The HTTP exchange did not complete."""


class ApiConnectError(ApiTransportError):
    """The request provably never reached the server (connection refused, DNS, ...)."""


class ApiCertificateError(ApiConnectError):
    """The server's TLS certificate did not verify (or the handshake failed): nothing sent."""


class ApiTimeoutError(ApiTransportError):
    """The exchange timed out; the server may or may not have acted on it."""


class StoreError(CosignerError):
    """The decision journal cannot be read or written."""


class JournalUnavailableError(StoreError, ConfigError):
    """The journal is missing where one existed, unreadable, or from a newer schema."""


class JournalLockedError(JournalUnavailableError):
    """Another process holds the journal's single-writer lock (exit code 2)."""


class JournalConflictError(StoreError):
    """The journal refused to record decisions that it cannot justify.

    Raised inside the write transaction (which then records nothing) when an id
    of the batch already has an approve/reject decision in enforce mode, or an
    approval would push a limit over its maximum given the approvals the
    journal already holds.  ``conflicts`` maps each refused item id to a reason
    (``already_decided`` or ``limit:<name>``).
    """

    def __init__(self, journal: str, conflicts: dict[int, str]) -> None:
        self.conflicts = dict(conflicts)
        shown = ", ".join(f"{i} ({r})" for i, r in list(self.conflicts.items())[:5])
        more = len(self.conflicts) - 5
        super().__init__(f"journal {journal} refused {len(self.conflicts)} decision(s): {shown}"
                         + (f" and {more} more" if more > 0 else ""))


class LockLostError(StoreError):
    """This process no longer holds the writer/leader lock, so it may not record (or post)."""
