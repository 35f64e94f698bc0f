"""The composition root: settings are read here, once, and passed down as plain values.

Startup fails fast with one clear line per problem (exit 2): settings, policy,
shard and journal are all checked before anything touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from cosigner.api.client import ApiClient
from cosigner.errors import JournalUnavailableError, StoreError
from cosigner.logs import configure_logging, get_logger
from cosigner.policy import load_policy
from cosigner.redact import mask_url, register_secret
from cosigner.settings import Settings
from cosigner.signing import EXPIRY_WARNING_DAYS, load_shard
from cosigner.signing.pool import BatchSigner
from cosigner.store import Head, open_journal

from .metrics import Metrics
from .pipeline import DecisionEvent, Pipeline, PolicyState, ledger_from_journal
from .service import Daemon, DaemonConfig


@dataclass
class BuildOptions:
    """What a caller (``run``, the demo, a test) may change beyond the settings."""

    once: bool = False
    shadow: bool = False
    transport: httpx.AsyncBaseTransport | None = None
    listeners: Iterable[Callable[[DecisionEvent], None]] = ()
    http_port: int | None = None
    install_signals: bool = True
    configure_logs: bool = True
    watch_interval: float = 2.0
    client_retries: int = 3
    log: Any = None


def build_daemon(settings: Settings, options: BuildOptions | None = None) -> Daemon:
    """Check everything, then wire client, shard, journal, policy and metrics into a Daemon."""
    opts = options or BuildOptions()
    settings.require("api_base_url", "merchant_no", "api_key", "api_secret", "pfx_path",
                     "policy_path", why="to run the daemon")
    assert settings.api_secret is not None
    assert settings.pfx_path is not None
    assert settings.policy_path is not None
    secret = settings.api_secret.get_secret_value()
    password = settings.shard_password()
    db_url = settings.database_url.get_secret_value()
    # Masked wherever they might appear: log lines, and the provider's messages the
    # journal stores (cosigner.redact).
    register_secret(secret, password, db_url)
    if opts.configure_logs:
        configure_logging(settings.log_format, settings.log_level,
                          secrets=(secret, password, db_url))
    log = opts.log or get_logger("cosigner.daemon")

    policy = load_policy(settings.policy_path)
    shard = load_shard(settings.pfx_path, password, scheme=settings.sign_scheme)
    metrics = Metrics()
    metrics.set_policy(policy.name, policy.sha256)
    metrics.shard_cert_expiry.set(shard.info.not_after.timestamp())
    metrics.leader.set(1)
    if shard.info.not_after - datetime.now(UTC) < timedelta(days=EXPIRY_WARNING_DAYS):
        log.warning("shard.expiring", not_after=shard.info.not_after.isoformat(),
                    subject=shard.info.subject)

    def committed(head: Head) -> None:
        # Every commit's head, for an external system to anchor (DESIGN section 4).
        metrics.journal_head_sequence.set(head.seq)
        log.info("journal.committed", seq=head.seq, hash=head.hash)

    witness = str(settings.journal_witness) if settings.journal_witness else None
    journal = open_journal(db_url, writer=True, witness=witness, durable=True,
                           on_commit=committed)
    try:
        metrics.journal_head_sequence.set(journal.head().seq)
        # Every approval the limits count is hash-checked as it is read: an edited one
        # stops the start (exit 2), like a chain that does not verify.
        ledger = ledger_from_journal(policy, journal, datetime.now(UTC))
    except StoreError as exc:
        journal.close()
        if isinstance(exc, JournalUnavailableError):
            raise
        raise JournalUnavailableError(str(exc)) from exc
    except Exception:
        journal.close()
        raise
    client = ApiClient(
        settings.api_base_url or "", settings.merchant_no or "", settings.api_key or "", secret,
        lang=settings.lang, sort=settings.sign_sort, timeout=settings.request_timeout,
        transport=opts.transport, page_size=settings.page_size,
        max_pending=settings.max_pending, observer=metrics, retries=opts.client_retries,
        max_connections=settings.concurrency + 2)
    mode = "shadow" if opts.shadow or settings.mode == "shadow" else "enforce"
    signer = BatchSigner(shard, path=settings.pfx_path, password=password)
    pipeline = Pipeline(
        client, shard, journal, PolicyState(policy, ledger, Path(settings.policy_path)),
        metrics, log, mode=mode, concurrency=settings.concurrency,
        pause_file=settings.pause_file, collect_is_main=settings.collect_is_main_values,
        listeners=opts.listeners, signer=signer)
    host, port = settings.http_host_port
    config = DaemonConfig(
        poll_interval=settings.poll_interval, collect_interval=settings.collect_interval,
        http_host=host, http_port=port if opts.http_port is None else opts.http_port,
        policy_path=Path(settings.policy_path), watch_interval=opts.watch_interval,
        install_signals=opts.install_signals)
    log.info("daemon.configured", policy=policy.name, policy_sha256=policy.sha256,
             shard=shard.info.fingerprint_sha256, mode=mode,
             api=mask_url(settings.api_base_url or ""), merchant=settings.merchant_no)

    async def close() -> None:
        await client.aclose()
        await signer.aclose()

    return Daemon(pipeline, journal, metrics, log, config, on_close=close)
