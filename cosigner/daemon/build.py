"""The composition root: settings are read here, once, and passed down as plain values.

Startup fails fast with one clear line per problem (exit 2): settings, policy,
shard and journal are all checked before anything touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from cosigner.api.client import ApiClient
from cosigner.api.tls import tls_context
from cosigner.errors import JournalUnavailableError, StoreError
from cosigner.logs import configure_logging, get_logger
from cosigner.policy import load_policy
from cosigner.redact import mask_url, register_secret
from cosigner.settings import Settings
from cosigner.signing import EXPIRY_WARNING_DAYS, load_shard
from cosigner.signing.pool import BatchSigner
from cosigner.store import Head, journal_from_url
from cosigner.store.postgres import PostgresJournal

from .callbacks import CallbackOptions, CallbackService, build_callbacks
from .control import check_pause_location
from .leadership import ElectedLeader, LeaderGatedSource, Leadership, SoleLeader
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
    callback_port: int | None = None
    callbacks: CallbackOptions | None = None
    #: False (tests only): skip the PostgreSQL election and its fencing, as if every
    #: replica led; the database's constraints and row locks must still hold.
    election: bool = True


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
    forward_secret = (settings.callback_forward_secret.get_secret_value()
                      if settings.callback_forward_secret is not None else None)
    register_secret(secret, password, db_url, forward_secret)
    if opts.configure_logs:
        configure_logging(settings.log_format, settings.log_level,
                          secrets=(secret, password, db_url, forward_secret))
    log = opts.log or get_logger("cosigner.daemon")

    tls = tls_context(settings.ca_bundle)
    policy = load_policy(settings.policy_path)
    shard = load_shard(settings.pfx_path, password, scheme=settings.sign_scheme)
    metrics = Metrics()
    metrics.set_policy(policy.name, policy.sha256)
    metrics.set_limit_scopes({limit.name: limit.per for limit in policy.limits})
    metrics.shard_cert_expiry.set(shard.info.not_after.timestamp())
    if shard.info.not_after - datetime.now(UTC) < timedelta(days=EXPIRY_WARNING_DAYS):
        log.warning("shard.expiring", not_after=shard.info.not_after.isoformat(),
                    subject=shard.info.subject)

    def committed(head: Head) -> None:
        # Every commit's head, for an external system to anchor (DESIGN section 4).
        metrics.journal_head_sequence.set(head.seq)
        log.info("journal.committed", seq=head.seq, hash=head.hash)

    witness = str(settings.journal_witness) if settings.journal_witness else None
    journal = journal_from_url(db_url, writer=True, witness=witness, durable=True,
                               on_commit=committed, election=True)
    journal.open()
    pause_file = settings.pause_path()
    services: list[CallbackService] = []
    # In HA only the leader forwards order events (leadership is known further down).
    callback_options = opts.callbacks or CallbackOptions()
    if callback_options.forward_gate is None:
        callback_options = replace(callback_options, forward_gate=lambda: leadership.active())
    try:
        metrics.journal_head_sequence.set(journal.head().seq)
        # The kill switch must be visible to the daemon (exit 2, not a traceback per poll).
        if not check_pause_location(pause_file):
            log.warning("pause.not_writable", pause_file=str(pause_file),
                        hint="`cosigner pause` cannot create the file there as this user")
        # Every approval the limits count is hash-checked as it is read: an edited one
        # stops the start (exit 2), like a chain that does not verify.
        ledger = ledger_from_journal(policy, journal, datetime.now(UTC))
        if settings.callback_addr is not None and not opts.once:
            services.append(build_callbacks(settings, metrics, log, db_url, callback_options,
                                            port=opts.callback_port))
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
        max_connections=settings.concurrency + 2, tls=tls)
    leadership: Leadership = SoleLeader()
    source: Any = client
    if isinstance(journal, PostgresJournal):
        if opts.election:
            leadership = ElectedLeader(journal, settings.leader_retry, metrics, log,
                                       on_acquired=lambda: _rebuild_ledger(pipeline, journal))
        else:
            journal.fenced = False
            log.warning("leader.election_skipped", reason="test hook: every replica leads")
        source = LeaderGatedSource(client, leadership, journal)
    if isinstance(leadership, SoleLeader):
        metrics.leader.set(1)
    mode = "shadow" if opts.shadow or settings.mode == "shadow" else "enforce"
    metrics.configure(mode=mode, poll_interval=settings.poll_interval,
                      collect_interval=settings.collect_interval,
                      collect_is_main=settings.collect_is_main_values)
    metrics.follow_pause_file(pause_file)
    signer = BatchSigner(shard, path=settings.pfx_path, password=password)
    pipeline = Pipeline(
        source, shard, journal, PolicyState(policy, ledger, Path(settings.policy_path)),
        metrics, log, mode=mode, concurrency=settings.concurrency,
        pause_file=pause_file, collect_is_main=settings.collect_is_main_values,
        listeners=opts.listeners, signer=signer)
    host, port = settings.http_host_port
    config = DaemonConfig(
        poll_interval=settings.poll_interval, collect_interval=settings.collect_interval,
        http_host=host, http_port=port if opts.http_port is None else opts.http_port,
        policy_path=Path(settings.policy_path), watch_interval=opts.watch_interval,
        install_signals=opts.install_signals)
    log.info("daemon.configured", policy=policy.name, policy_sha256=policy.sha256,
             shard=shard.info.fingerprint_sha256, mode=mode, pause_file=str(pause_file),
             api=mask_url(settings.api_base_url or ""), merchant=settings.merchant_no,
             journal=mask_url(db_url), role=leadership.role)

    async def close() -> None:
        await client.aclose()
        await signer.aclose()

    return Daemon(pipeline, journal, metrics, log, config, on_close=close,
                  leadership=leadership, services=services)


def _rebuild_ledger(pipeline: Pipeline, journal: PostgresJournal) -> None:
    """A new leader counts the limits from the journal: the former leader approved too."""
    pipeline.state.ledger = ledger_from_journal(pipeline.state.policy, journal,
                                                datetime.now(UTC))
