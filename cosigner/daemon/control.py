"""The kill switch and what the daemon is doing: ``cosigner pause|resume|status``.

While the pause file exists the daemon holds every item (reason ``paused``) and
posts nothing.  Its place (DESIGN section 6) is ``COSIGNER_PAUSE_FILE`` or, by
default, ``PAUSE`` beside the SQLite journal (``/var/lib/cosigner/PAUSE`` for the
default URL), else ``/var/lib/cosigner/PAUSE``: every deployment that keeps a
journal volume therefore has a kill switch, reachable through ``kubectl exec`` or
``docker compose exec``.

The file holds ``key: value`` lines (``reason``, ``paused_at``, ``by``); a file
made by hand (``touch``, ``echo text >``) pauses just the same, its text read as
the reason.  Nothing here reads the settings: callers pass plain values.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cosigner.errors import ConfigError

PAUSE_SETTING = "COSIGNER_PAUSE_FILE"
MAX_REASON = 500


def check_pause_location(path: Path) -> bool:
    """Check at start that the daemon can see the pause file; return whether the operator
    can create it there (its directory is writable by this user).

    Raises:
        ConfigError: the directory does not exist or cannot be searched, so a pause
            could never be noticed (naming ``COSIGNER_PAUSE_FILE``).
    """
    try:
        path.exists()
        is_dir = path.parent.is_dir()
    except OSError as exc:
        raise ConfigError(f"{PAUSE_SETTING}: cannot check {path} "
                          f"({exc.strerror or exc}); the kill switch would not work") from None
    if not is_dir:
        raise ConfigError(f"{PAUSE_SETTING}: directory {path.parent} does not exist; "
                          "the kill switch would not work")
    return os.access(path.parent, os.W_OK | os.X_OK)


@dataclass(frozen=True)
class PauseState:
    """Whether the pause file exists, and what it says."""

    path: Path
    paused: bool
    reason: str = ""
    paused_at: str = ""
    by: str = ""


_FIELD = re.compile(r"^(reason|paused_at|by):[ \t]?(.*)$")


def read_pause(path: Path) -> PauseState:
    """The pause state at ``path``.  An unreadable file still counts as paused."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return PauseState(path, False)
    except IsADirectoryError:
        return PauseState(path, True, reason="(the pause path is a directory)")
    except OSError as exc:
        return PauseState(path, True, reason=f"(pause file unreadable: {exc.strerror})")
    fields: dict[str, str] = {}
    loose: list[str] = []
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match:
            fields[match.group(1)] = match.group(2).strip()
        elif line.strip():
            loose.append(line.strip())
    reason = fields.get("reason") or " ".join(loose)
    return PauseState(path, True, reason=reason[:MAX_REASON],
                      paused_at=fields.get("paused_at", ""), by=fields.get("by", ""))


def pause(path: Path, reason: str, *, now: datetime | None = None) -> PauseState:
    """Create (or rewrite) the pause file with ``reason``; atomic, mode 0640.

    Raises:
        ConfigError: the file cannot be written there (naming it and why).
    """
    reason = " ".join(reason.split())[:MAX_REASON]
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    by = f"{_user()}@{socket.gethostname()}"
    body = f"reason: {reason}\npaused_at: {stamp}\nby: {by}\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"{PAUSE_SETTING}: cannot write {path} ({exc.strerror or exc})"
                          ) from None
    return PauseState(path, True, reason=reason, paused_at=stamp, by=by)


def resume(path: Path) -> bool:
    """Remove the pause file; True when there was one.

    Raises:
        ConfigError: it exists but cannot be removed.
    """
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"{PAUSE_SETTING}: cannot remove {path} ({exc.strerror or exc})"
                          ) from None
    return True


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (a container's numeric uid)
        return f"uid {os.getuid()}"


# -- the running daemon, seen through its own /metrics and /readyz ---------------------


@dataclass(frozen=True)
class LiveView:
    """What the daemon at ``HTTP_ADDR`` reports about itself (``reachable`` False: nothing)."""

    url: str
    reachable: bool
    error: str = ""
    ready: bool | None = None
    samples: tuple[tuple[str, tuple[tuple[str, str], ...], float], ...] = ()

    def value(self, name: str, **labels: str) -> float | None:
        """The first sample called ``name`` whose labels include ``labels``."""
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and set(labels.items()) <= set(sample_labels):
                return value
        return None

    def labels_of(self, name: str, *, value: float = 1.0) -> dict[str, str] | None:
        """The labels of the first sample ``name`` with ``value`` (an info-style gauge)."""
        for sample_name, sample_labels, sample_value in self.samples:
            if sample_name == name and sample_value == value:
                return dict(sample_labels)
        return None


def probe(host: str, port: int, *, timeout: float = 2.0) -> LiveView:
    """Read ``/metrics`` and ``/readyz`` of the daemon listening on ``host:port``."""
    if host in ("0.0.0.0", "", "::", "[::]"):  # noqa: S104 - a wildcard listener: ask loopback
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1"  # noqa: S104
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=timeout) as resp:  # noqa: S310
            text = resp.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return LiveView(base, False, error=str(reason))
    samples = tuple(_samples(text))
    ready: bool | None
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=timeout):  # noqa: S310
            ready = True
    except urllib.error.HTTPError:
        ready = False
    except (OSError, urllib.error.URLError):
        ready = None
    return LiveView(base, True, ready=ready, samples=samples)


def _samples(text: str) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                yield sample.name, tuple(sorted(sample.labels.items())), float(sample.value)
    except ValueError:
        return
