"""The daemon's composition: plain values in (a :class:`DaemonSpec`), a wired Daemon out.

The settings are read by the command line (:mod:`cosigner.cli.daemon`), which
turns them into a :class:`DaemonSpec`; the demo and the benchmark build one
directly.  Startup fails fast with one clear line per problem (exit 2): policy,
shard and journal are all checked before anything touches the network.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import httpx

from cosigner.abc import Clock, Journal, utc_now
from cosigner.api.auth import SignSort
from cosigner.api.client import ApiClient
from cosigner.api.tls import tls_context
from cosigner.errors import JournalUnavailableError, StoreError
from cosigner.logs import configure_logging, get_logger
from cosigner.policy.governance import PolicyMemory
from cosigner.policy.model import CompiledPolicy
from cosigner.redact import mask_url, register_secret
from cosigner.signing import EXPIRY_WARNING_DAYS, load_shard
from cosigner.signing.pool import BatchSigner
from cosigner.signing.shard import Shard, SignScheme
from cosigner.store import Head, journal_from_url
from cosigner.store.urls import mask_url as mask_database_url

from .callbacks import CallbackOptions, CallbackService
from .control import check_pause_location
from .governed import Governance, load_governed, show, start_state
from .leadership import ElectedLeader, LeaderGatedSource, Leadership, SoleLeader
from .metrics import Metrics
from .pipeline import DecisionEvent, Pipeline, PolicyState, ledger_from_journal, rebuild_ledgers
from .service import Daemon, DaemonConfig

if TYPE_CHECKING:
    from cosigner.store.postgres import PostgresJournal


@dataclass(frozen=True)
class DaemonSpec:
    """Everything the daemon is configured with, as plain values (DESIGN section 6).

    Secrets are plain strings here: they never leave this process, and logging
    registers them for redaction before anything is logged.
    """

    api_base_url: str
    merchant_no: str
    api_key: str
    api_secret: str = field(repr=False)
    pfx_path: Path
    pfx_password: str = field(repr=False)
    policy_path: Path
    database_url: str = field(repr=False)
    pause_file: Path
    journal_witness: Path | None = None
    ca_bundle: Path | None = None
    leader_retry: float = 5.0
    lang: str = "en"
    sign_sort: SignSort = "casefold"
    sign_scheme: SignScheme = "java-rsa"
    request_timeout: float = 10.0
    page_size: int = 50
    max_pending: int = 10000
    concurrency: int = 8
    poll_interval: float = 120.0
    collect_interval: float = 300.0
    collect_is_main: Sequence[int] = (1, 0)
    http_host: str = "127.0.0.1"
    http_port: int = 9464
    mode: str = "enforce"
    log_format: str = "json"
    log_level: str = "info"
    #: Other secrets to redact from the logs (the callback forward secret).
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)
    #: The order-callback service's factory, when ``CALLBACK_ADDR`` is set: built by the
    #: command line (which reads its settings), called with (metrics, log, database url,
    #: options, port, fence: the decision journal, whose leader epoch order writes check).
    callbacks: Callable[..., CallbackService] | None = None
    # governance (DESIGN section 11)
    policy_signers: Path | None = None
    policy_quorum: int | None = None
    policy_loosen_delay: timedelta = timedelta(0)


@dataclass
class BuildOptions:
    """What a caller (``run``, the demo, a test) may change beyond the spec."""

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
    policy_memory: PolicyMemory | None = None  # first sightings of bundles (default: journal)
    clock: Clock = utc_now  # what the pipeline, the service and the journal read time from
    callback_port: int | None = None
    callbacks: CallbackOptions | None = None
    #: False (tests only): skip the PostgreSQL election and its fencing, as if every
    #: replica led; the database's constraints and row locks must still hold.
    election: bool = True


def build_daemon(spec: DaemonSpec, options: BuildOptions | None = None) -> Daemon:
    """Check everything, then wire client, shard, journal, policy and metrics into a Daemon."""
    opts = options or BuildOptions()
    secret, password, db_url = spec.api_secret, spec.pfx_password, spec.database_url
    # Masked wherever they might appear: log lines, and the provider's messages the
    # journal stores (cosigner.redact).
    register_secret(secret, password, db_url, *spec.extra_secrets)
    if opts.configure_logs:
        configure_logging(spec.log_format, spec.log_level,
                          secrets=(secret, password, db_url, *spec.extra_secrets))
    # Bound once, after configuring: a lazy proxy re-binds on every call (per item).
    log = opts.log or get_logger("cosigner.daemon").bind()
    clock = opts.clock

    tls = tls_context(spec.ca_bundle)
    governance, policy, shard, metrics = _policy_shard_metrics(spec, log, clock)
    journal = _open_journal(spec, policy_clock=clock, metrics=metrics, log=log)
    pause_file = spec.pause_file
    services: list[CallbackService] = []
    # In HA only the leader forwards order events (leadership is known further down).
    callback_options = _callback_options(opts, lambda: leadership.active())
    try:
        # The kill switch must be visible to the daemon (exit 2, not a traceback per poll).
        if not check_pause_location(pause_file):
            log.warning("pause.not_writable", pause_file=str(pause_file),
                        hint="`cosigner pause` cannot create the file there as this user")
        # Every approval the limits count is hash-checked as it is read: an edited one
        # stops the start (exit 2), like a chain that does not verify.
        started = clock()
        ledger = ledger_from_journal(policy, journal, started)
        governance = governance.with_journal(journal, opts.policy_memory)
        state = start_state(policy, ledger, spec.policy_path, governance, journal, started)
        if spec.callbacks is not None and not opts.once:
            services.append(spec.callbacks(metrics, log, db_url, callback_options,
                                           port=opts.callback_port, fence=journal))
    except StoreError as exc:
        journal.close()
        if isinstance(exc, JournalUnavailableError):
            raise
        raise JournalUnavailableError(str(exc)) from exc
    except Exception:
        journal.close()
        raise
    _show_start_state(metrics, log, state, policy, started)
    client = ApiClient(
        spec.api_base_url, spec.merchant_no, spec.api_key, secret,
        lang=spec.lang, sort=spec.sign_sort, timeout=spec.request_timeout,
        transport=opts.transport, page_size=spec.page_size,
        max_pending=spec.max_pending, observer=metrics, retries=opts.client_retries,
        max_connections=spec.concurrency + 2, tls=tls)
    leadership, source = _leadership(spec, opts, journal, client, metrics, log,
                                     rebuild=lambda: _rebuild_ledger(pipeline, journal))
    mode = "shadow" if opts.shadow or spec.mode == "shadow" else "enforce"
    metrics.configure(mode=mode, poll_interval=spec.poll_interval,
                      collect_interval=spec.collect_interval,
                      collect_is_main=tuple(spec.collect_is_main))
    metrics.follow_pause_file(pause_file)
    signer = BatchSigner(shard, path=spec.pfx_path, password=password)
    pipeline = Pipeline(
        source, shard, journal, state,
        metrics, log, mode=mode, concurrency=spec.concurrency,
        pause_file=pause_file, collect_is_main=spec.collect_is_main,
        listeners=opts.listeners, signer=signer, clock=clock)
    config = DaemonConfig(
        poll_interval=spec.poll_interval, collect_interval=spec.collect_interval,
        http_host=spec.http_host,
        http_port=spec.http_port if opts.http_port is None else opts.http_port,
        policy_path=spec.policy_path, watch_interval=opts.watch_interval,
        install_signals=opts.install_signals, governance=governance)
    log.info("daemon.configured", policy=policy.name, policy_sha256=policy.sha256,
             shard=shard.info.fingerprint_sha256, mode=mode, pause_file=str(pause_file),
             api=mask_url(spec.api_base_url), merchant=spec.merchant_no,
             journal=mask_database_url(db_url), role=leadership.role)

    async def close() -> None:
        await client.aclose()
        await signer.aclose()

    def lock_held() -> bool:
        # The store's writer (or leader) lock; held when a store offers no probe.
        probe = getattr(journal, "lock_held", None)
        return bool(probe()) if callable(probe) else True

    return Daemon(pipeline, journal, metrics, log, config, lock_held=lock_held,
                  on_close=close, leadership=leadership, services=services)


def _policy_shard_metrics(spec: DaemonSpec, log: Any, clock: Clock
                          ) -> tuple[Governance, CompiledPolicy, Shard, Metrics]:
    """The governance settings, the (signed) policy, the shard, and metrics showing them."""
    governance = Governance.configure(spec.policy_signers, spec.policy_quorum,
                                      spec.policy_loosen_delay)
    policy, signatures = load_governed(spec.policy_path, governance)
    if signatures is not None:
        log.info("policy.signed", sha256=policy.sha256, signed_by=list(signatures.signed),
                 missing=list(signatures.missing), quorum=signatures.quorum)
    shard = load_shard(spec.pfx_path, spec.pfx_password, scheme=spec.sign_scheme)
    metrics = Metrics()
    metrics.set_policy(policy.name, policy.sha256)
    metrics.set_limit_scopes({limit.name: limit.per for limit in policy.limits})
    metrics.shard_cert_expiry.set(shard.info.not_after.timestamp())
    if shard.info.not_after - clock() < timedelta(days=EXPIRY_WARNING_DAYS):
        log.warning("shard.expiring", not_after=shard.info.not_after.isoformat(),
                    subject=shard.info.subject)
    return governance, policy, shard, metrics


def _show_start_state(metrics: Metrics, log: Any, state: PolicyState, policy: CompiledPolicy,
                      started: datetime) -> None:
    show(metrics, state, started)
    if state.pending is not None:
        log.warning("policy.pending", name=policy.name, sha256=policy.sha256,
                    first_seen=state.pending.first_seen.isoformat(),
                    takes_effect=state.pending.activates_at.isoformat(),
                    in_force="unknown (restarted during the delay)")


def _callback_options(opts: BuildOptions, leads: Callable[[], bool]) -> CallbackOptions:
    options = opts.callbacks or CallbackOptions()
    if options.forward_gate is None:
        options = replace(options, forward_gate=leads)
    return options


def _leadership(spec: DaemonSpec, opts: BuildOptions, journal: Journal, client: ApiClient,
                metrics: Metrics, log: Any, *, rebuild: Callable[[], None]
                ) -> tuple[Leadership, Any]:
    """Who leads, and the provider API as the pipeline sees it: gated by the leadership with
    PostgreSQL (several replicas), the client itself with SQLite (the only writer)."""
    if not _is_postgres(journal):
        metrics.leader.set(1)
        return SoleLeader(), client
    leadership: Leadership = SoleLeader()
    if opts.election:
        leadership = ElectedLeader(journal, spec.leader_retry, metrics, log, on_acquired=rebuild)
    else:
        journal.fenced = False
        log.warning("leader.election_skipped", reason="test hook: every replica leads")
        metrics.leader.set(1)
    return leadership, LeaderGatedSource(client, leadership, journal)


def _is_postgres(journal: Journal) -> TypeGuard[PostgresJournal]:
    """Whether *journal* is a :class:`PostgresJournal`, without importing psycopg for a
    SQLite journal: journal_from_url imported the module if it made one."""
    module = sys.modules.get("cosigner.store.postgres")
    return module is not None and isinstance(journal, module.PostgresJournal)


def _open_journal(spec: DaemonSpec, *, policy_clock: Clock, metrics: Metrics,
                  log: Any) -> Journal:
    """The journal as its writer, its head exported and logged at every commit."""

    def committed(head: Head) -> None:
        # Every commit's head, for an external system to anchor (DESIGN section 4).
        metrics.journal_head_sequence.set(head.seq)
        log.info("journal.committed", seq=head.seq, hash=head.hash)

    witness = str(spec.journal_witness) if spec.journal_witness else None
    journal = journal_from_url(spec.database_url, writer=True, witness=witness, durable=True,
                               on_commit=committed, election=True, clock=policy_clock)
    journal.open()
    try:
        metrics.journal_head_sequence.set(journal.head().seq)
    except StoreError as exc:
        journal.close()
        raise JournalUnavailableError(str(exc)) from exc
    return journal


def _rebuild_ledger(pipeline: Pipeline, journal: Journal) -> None:
    """A new leader counts the limits from the journal: the former leader approved too."""
    rebuild_ledgers(pipeline.state, journal, pipeline.clock())
