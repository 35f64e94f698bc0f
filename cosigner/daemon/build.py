"""The daemon's composition: plain values in (a :class:`DaemonSpec`), a wired Daemon out.

The settings are read by the command line (:mod:`cosigner.cli.daemon`), which
turns them into a :class:`DaemonSpec`; the demo and the benchmark build one
directly.  Startup fails fast with one clear line per problem (exit 2): policy,
shard and journal are all checked before anything touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from cosigner.abc import Clock, utc_now
from cosigner.api.auth import SignSort
from cosigner.api.client import ApiClient
from cosigner.errors import JournalUnavailableError, StoreError
from cosigner.logs import configure_logging, get_logger
from cosigner.policy.governance import PolicyMemory
from cosigner.signing import EXPIRY_WARNING_DAYS, load_shard
from cosigner.signing.pool import BatchSigner
from cosigner.signing.shard import SignScheme
from cosigner.store import Head, open_journal

from .governed import Governance, load_governed, show, start_state
from .metrics import Metrics
from .pipeline import DecisionEvent, Pipeline, ledger_from_journal
from .service import Daemon, DaemonConfig


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
    journal_witness: Path | None = None
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
    pause_file: Path | None = None
    mode: str = "enforce"
    log_format: str = "json"
    log_level: str = "info"
    # governance (DESIGN section 11)
    policy_signers: Path | None = None
    policy_quorum: int | None = None
    policy_loosen_delay: timedelta = timedelta(0)


@dataclass
class BuildOptions:
    """What a caller (``run``, the demo, a test) may change beyond the spec."""

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


def build_daemon(spec: DaemonSpec, options: BuildOptions | None = None) -> Daemon:
    """Check everything, then wire client, shard, journal, policy and metrics into a Daemon."""
    opts = options or BuildOptions()
    secret, password, db_url = spec.api_secret, spec.pfx_password, spec.database_url
    if opts.configure_logs:
        configure_logging(spec.log_format, spec.log_level, secrets=(secret, password, db_url))
    log = opts.log or get_logger("cosigner.daemon")

    governance = Governance.configure(spec.policy_signers, spec.policy_quorum,
                                      spec.policy_loosen_delay)
    policy, signatures = load_governed(spec.policy_path, governance)
    if signatures is not None:
        log.info("policy.signed", sha256=policy.sha256, signed_by=list(signatures.signed),
                 missing=list(signatures.missing), quorum=signatures.quorum)
    shard = load_shard(spec.pfx_path, password, scheme=spec.sign_scheme)
    metrics = Metrics()
    metrics.set_policy(policy.name, policy.sha256)
    metrics.shard_cert_expiry.set(shard.info.not_after.timestamp())
    metrics.leader.set(1)
    clock = opts.clock
    if shard.info.not_after - clock() < timedelta(days=EXPIRY_WARNING_DAYS):
        log.warning("shard.expiring", not_after=shard.info.not_after.isoformat(),
                    subject=shard.info.subject)

    def committed(head: Head) -> None:
        # Every commit's head, for an external system to anchor (DESIGN section 4).
        metrics.journal_head_sequence.set(head.seq)
        log.info("journal.committed", seq=head.seq, hash=head.hash)

    witness = str(spec.journal_witness) if spec.journal_witness else None
    journal = open_journal(db_url, writer=True, witness=witness, durable=True,
                           on_commit=committed, clock=clock)
    try:
        metrics.journal_head_sequence.set(journal.head().seq)
        # Every approval the limits count is hash-checked as it is read: an edited one
        # stops the start (exit 2), like a chain that does not verify.
        started = clock()
        ledger = ledger_from_journal(policy, journal, started)
        governance = governance.with_journal(journal, opts.policy_memory)
        state = start_state(policy, ledger, spec.policy_path, governance, journal, started)
    except StoreError as exc:
        journal.close()
        if isinstance(exc, JournalUnavailableError):
            raise
        raise JournalUnavailableError(str(exc)) from exc
    except Exception:
        journal.close()
        raise
    show(metrics, state, started)
    if state.pending is not None:
        log.warning("policy.pending", name=policy.name, sha256=policy.sha256,
                    first_seen=state.pending.first_seen.isoformat(),
                    takes_effect=state.pending.activates_at.isoformat(),
                    in_force="unknown (restarted during the delay)")
    client = ApiClient(
        spec.api_base_url, spec.merchant_no, spec.api_key, secret,
        lang=spec.lang, sort=spec.sign_sort, timeout=spec.request_timeout,
        transport=opts.transport, page_size=spec.page_size,
        max_pending=spec.max_pending, observer=metrics, retries=opts.client_retries,
        max_connections=spec.concurrency + 2)
    mode = "shadow" if opts.shadow or spec.mode == "shadow" else "enforce"
    signer = BatchSigner(shard, path=spec.pfx_path, password=password)
    pipeline = Pipeline(
        client, shard, journal, state,
        metrics, log, mode=mode, concurrency=spec.concurrency,
        pause_file=spec.pause_file, collect_is_main=spec.collect_is_main,
        listeners=opts.listeners, signer=signer, clock=clock)
    config = DaemonConfig(
        poll_interval=spec.poll_interval, collect_interval=spec.collect_interval,
        http_host=spec.http_host,
        http_port=spec.http_port if opts.http_port is None else opts.http_port,
        policy_path=spec.policy_path, watch_interval=opts.watch_interval,
        install_signals=opts.install_signals, governance=governance)
    log.info("daemon.configured", policy=policy.name, policy_sha256=policy.sha256,
             shard=shard.info.fingerprint_sha256, mode=mode,
             api=spec.api_base_url, merchant=spec.merchant_no)

    async def close() -> None:
        await client.aclose()
        await signer.aclose()

    def lock_held() -> bool:
        # The store's single-writer lock (journal.lock_held()); held when a store has none.
        probe = getattr(journal, "lock_held", None)
        return bool(probe()) if callable(probe) else True

    return Daemon(pipeline, journal, metrics, log, config, lock_held=lock_held,
                  on_close=close)
