"""The long-running daemon: scheduler, policy hot reload, signals, graceful stop.

APScheduler 3's ``AsyncIOScheduler`` runs the poll every ``POLL_INTERVAL`` and
the collection every ``COLLECT_INTERVAL``, each with an immediate first run, one
instance at a time (``max_instances=1``), coalesced misfires and a small jitter.
SIGHUP or a change of the policy files reloads the policy, keeping the last good
one.  SIGTERM/SIGINT: the item in flight is finished, nothing new is posted, the
journal is closed and the process exits 0 within 10 s.

With PostgreSQL several replicas run at once: the :class:`Leadership` decides which
one polls and collects (the others skip their jobs as ready standbys), and a
``leader`` job probes or retries the election lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, Protocol

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from cosigner.errors import PolicyError, UnsignedPolicyError
from cosigner.policy.bundle import signature_dir, signature_files
from cosigner.store.base import Journal

from .governed import Governance, load_governed, next_state, show
from .http import HttpServer, create_app
from .leadership import LEADER, Leadership, SoleLeader
from .metrics import Metrics
from .pipeline import Pipeline, PolicyState, ledger_from_journal

STOP_BUDGET = 8.0  # seconds to let in-flight work finish; the process exits within 10 s


class Service(Protocol):
    """Something that runs beside the scheduler for the life of ``run`` (the order
    callback listener)."""

    async def start(self) -> None:
        """Start; raise ConfigError when it cannot (the daemon then stops with exit 2)."""

    async def stop(self) -> None:
        """Stop (idempotent)."""


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon's timing and endpoints (from the settings, or the demo)."""

    poll_interval: float = 120.0
    collect_interval: float = 300.0
    http_host: str = "127.0.0.1"
    http_port: int = 9464
    policy_path: Path | None = None
    watch_interval: float = 2.0
    install_signals: bool = True
    governance: Governance = field(default_factory=Governance)


class Daemon:
    """Composes a :class:`Pipeline` with a scheduler, the HTTP endpoints and reloads."""

    def __init__(self, pipeline: Pipeline, journal: Journal, metrics: Metrics, log: Any,
                 config: DaemonConfig, *,
                 lock_held: Callable[[], bool] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None,
                 leadership: Leadership | None = None,
                 services: Sequence[Service] = ()) -> None:
        self.pipeline = pipeline
        self.services = list(services)
        self._to_stop = list(services)
        self.journal = journal
        self.metrics = metrics
        self.log = log
        self.config = config
        # The journal's writer (or leader) lock; until the store offers it, always held.
        self._lock_held = lock_held or (lambda: bool(getattr(journal, "lock_held",
                                                             lambda: True)()))
        self.policy_error: str | None = None  # the last reload's failure, until one succeeds
        self._on_close = on_close
        self.leadership: Leadership = leadership or SoleLeader()
        self._scheduler: AsyncIOScheduler | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()  # a reload never swaps the ledger mid-poll
        self._jobs: set[asyncio.Task[Any]] = set()
        self._journal_open = True
        self._watch_stamp = self._stamp()
        self.http: HttpServer | None = None
        self.polls = 0
        self.collections = 0

    # -- readiness -------------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        """The checks of ``/readyz``; each one can fail (and a test makes each fail):

        * ``policy_in_force``: the policy on disk is the one in force (no failed reload since);
        * ``shard_usable``: the shard's certificate is valid now and signing has not failed;
        * ``journal_writable``: the journal is open and its last write succeeded;
        * a leader: ``lock_held`` (it still holds the journal's writer or leader lock) and
          ``recent_poll`` (a poll succeeded within two poll intervals, or it is in its
          takeover grace); a PostgreSQL standby: ``standby`` (its database is reachable).
        """
        pipeline = self.pipeline
        now = pipeline.clock()
        info = pipeline.shard.info
        checks = {"policy_in_force": self.policy_error is None,
                  "shard_usable": info.not_before <= now < info.not_after
                  and pipeline.signing_ok,
                  "journal_writable": self._journal_open and pipeline.journal_ok}
        if self.leadership.role != LEADER:
            checks["standby"] = self.leadership.healthy()
            return checks
        try:
            checks["lock_held"] = bool(self._lock_held())
        except Exception:  # a lock probe that breaks means the lock is not known to be held
            checks["lock_held"] = False
        last = pipeline.last_poll_ok
        fresh = last is not None and now.timestamp() - last <= 2 * self.config.poll_interval
        # A leader in its takeover grace has not polled yet: it is ready meanwhile.
        checks["recent_poll"] = fresh or (not self.leadership.active()
                                          and self.leadership.healthy())
        return checks

    def role(self) -> str:
        """``leader`` or ``standby`` (shown by /readyz)."""
        return self.leadership.role

    # -- jobs ------------------------------------------------------------------------

    async def poll_job(self) -> bool:
        """One poll cycle; True when it completed and every post it made is settled.

        A post refused by the API (``failed``) or whose outcome is unknown (timeout,
        dropped answer) does not fail the cycle for readiness, but it is not a step
        that succeeded either: ``--once`` reports it with exit code 1.
        """
        if not self.leadership.active():
            return True  # a standby: the leader polls
        async with self._tracked(), self._lock:
            result = await self.pipeline.poll()
            self.polls += 1
            return result.ok and not (result.failed or result.unknown)

    async def collect_job(self) -> bool:
        if not self.leadership.active():
            return True  # a standby: the leader collects
        async with self._tracked():
            ok = await self.pipeline.collect()
            self.collections += 1
            return ok

    @contextlib.asynccontextmanager
    async def _tracked(self) -> Any:
        task = asyncio.current_task()
        if task is not None:
            self._jobs.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._jobs.discard(task)

    async def leader_job(self) -> None:
        """Probe or retry the election; a replica that just became active polls at once."""
        if await self.leadership.step() and self._scheduler is not None:
            job = self._scheduler.get_job("poll")
            if job is not None:
                job.modify(next_run_time=self.pipeline.clock())

    async def await_leadership(self) -> None:
        """For ``--once`` and the bench: try the election once, and wait out a new
        leader's grace; a standby returns at once."""
        deadline = time.monotonic() + 60
        while self.leadership.interval > 0 and not self.leadership.active() \
                and time.monotonic() < deadline:
            await self.leadership.step()
            if self.leadership.role != LEADER:
                self.log.info("daemon.standby", reason="another replica leads")
                return
            await asyncio.sleep(self.leadership.interval)

    # -- policy reload ---------------------------------------------------------------

    def _stamp(self) -> tuple[tuple[str, int, int], ...]:
        stamps = []
        state = self.pipeline.state
        sources = list(state.policy.sources)
        if state.pending is not None:
            sources += state.pending.policy.sources
        policy_path = self.config.policy_path or state.path
        if policy_path is not None:  # a new signature is a reason to look again
            sources += [signature_dir(Path(policy_path)), *signature_files(Path(policy_path))]
        for path in sources:
            try:
                st = Path(path).stat()
                stamps.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((str(path), -1, -1))
        return tuple(stamps)

    async def reload_policy(self, trigger: str) -> bool:
        """Load the policy again; keep the last good one when the new one does not load
        or lacks its signatures.  A signed bundle replaces it, or becomes pending while
        ``POLICY_LOOSEN_DELAY`` runs (DESIGN section 11)."""
        path = self.config.policy_path or self.pipeline.state.path
        if path is None:
            return False
        governance = self.config.governance
        async with self._lock:
            try:
                candidate, report = await asyncio.to_thread(load_governed, Path(path),
                                                            governance)
            except PolicyError as exc:
                self.policy_error = exc.problems[0] if exc.problems else "error"
                unsigned = isinstance(exc, UnsignedPolicyError)
                self.metrics.policy_reloads.labels("unsigned" if unsigned else "error").inc()
                self.log.error("policy.unsigned" if unsigned else "policy.reload_failed",
                               trigger=trigger, path=str(path), problems=exc.problems[:20],
                               kept=self.pipeline.state.policy.name)
                self._watch_stamp = self._stamp()
                return False
            self.policy_error = None
            old = self.pipeline.state
            now = self.pipeline.clock()
            ledger = old.ledger
            if candidate.sha256 not in (old.policy.sha256, _pending_sha256(old)):
                ledger = await asyncio.to_thread(ledger_from_journal, candidate, self.journal,
                                                 now)
            transition = await asyncio.to_thread(next_state, old, candidate, ledger,
                                                 governance, now)
            self._watch_stamp = self._stamp()
            signed = list(report.signed) if report is not None else None
            if transition.state is None:
                self.metrics.policy_reloads.labels("unchanged").inc()
                self.log.info("policy.unchanged", trigger=trigger, sha256=candidate.sha256)
                return True
            self.pipeline.state = transition.state
            show(self.metrics, transition.state, now)
            self.metrics.set_limit_scopes(
                {lim.name: lim.per for lim in transition.state.policy.limits})
            self.metrics.policy_reloads.labels("ok").inc()
            pending = transition.state.pending
            self.log.warning(transition.event, trigger=trigger, name=candidate.name,
                             sha256=candidate.sha256, previous=old.policy.sha256,
                             signed_by=signed,
                             takes_effect=pending.activates_at.isoformat() if pending else None)
            return True

    async def watch_job(self) -> None:
        async with self._lock:
            self.pipeline.activate_due()
        if self._stamp() != self._watch_stamp:
            await self.reload_policy("file_change")

    # -- lifecycle -------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self._stop.is_set():
            self.log.info("daemon.stopping")
        self.pipeline.stopping.set()
        self._stop.set()

    async def run_once(self) -> int:
        """One poll and one collection; 0 when every step (each post included) succeeded,
        else 1."""
        try:
            await self.await_leadership()
            poll_ok = await self.poll_job()
            collect_ok = await self.collect_job()
        finally:
            await self.close()
        self.log.info("daemon.once_done", poll_ok=poll_ok, collect_ok=collect_ok)
        return 0 if poll_ok and collect_ok else 1

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); returns the exit code.

        Raises:
            ConfigError: ``HTTP_ADDR`` cannot be listened on (the journal is closed first).
        """
        loop = asyncio.get_running_loop()
        self.http = HttpServer(create_app(self.metrics, self.readiness, self.role),
                               self.config.http_host, self.config.http_port)
        try:
            await self.http.start()
        except BaseException:
            self.http = None
            await self.close()
            raise
        try:
            for service in self.services:
                await service.start()
        except BaseException:
            await self.close()
            raise
        if self.config.install_signals:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(
                signal.SIGHUP, lambda: loop.create_task(self.reload_policy("sighup")))
        self.log.info("daemon.started", http=f"{self.config.http_host}:{self.http.port}",
                      policy=self.pipeline.state.policy.name, mode=self.pipeline.mode,
                      poll_interval=self.config.poll_interval,
                      collect_interval=self.config.collect_interval)
        _quiet_apscheduler()
        scheduler = self._scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_listener(self._job_event,
                               EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        now = self.pipeline.clock()
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True,
                                  "misfire_grace_time": None}
        scheduler.add_job(self.poll_job, IntervalTrigger(
            seconds=self.config.poll_interval, jitter=_jitter(self.config.poll_interval)),
            id="poll", next_run_time=now, **common)
        scheduler.add_job(self.collect_job, IntervalTrigger(
            seconds=self.config.collect_interval,
            jitter=_jitter(self.config.collect_interval)),
            id="collect", next_run_time=now + timedelta(milliseconds=50), **common)
        if self.leadership.interval > 0:
            scheduler.add_job(self.leader_job, IntervalTrigger(
                seconds=self.leadership.interval), id="leader", next_run_time=now, **common)
        if self.config.watch_interval > 0:
            scheduler.add_job(self.watch_job, IntervalTrigger(
                seconds=self.config.watch_interval), id="policy-watch", **common)
        scheduler.start()
        try:
            await self._stop.wait()
        finally:
            # Pause first and let the running jobs finish: shutting the asyncio
            # executor down cancels the tasks it started, which would abandon the
            # item in flight instead of finishing it.
            scheduler.pause()
            await self._drain()
            scheduler.shutdown(wait=False)
            await self.close()
            if self.config.install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
        self.log.info("daemon.stopped", polls=self.polls, collections=self.collections)
        return 0

    def _job_event(self, event: JobEvent) -> None:
        """APScheduler's job events as structured log events."""
        if event.code == EVENT_JOB_MAX_INSTANCES:
            self.log.warning("job.skipped", job=event.job_id, reason="previous run still busy")
        elif event.code == EVENT_JOB_MISSED:
            self.log.warning("job.missed", job=event.job_id)
        else:
            exc = getattr(event, "exception", None)
            self.log.error("job.failed", job=event.job_id, kind=type(exc).__name__,
                           error=str(exc))

    async def _drain(self) -> None:
        jobs = [t for t in self._jobs if not t.done()]
        if not jobs:
            return
        _done, pending = await asyncio.wait(jobs, timeout=STOP_BUDGET)
        for task in pending:
            task.cancel()
        if pending:
            self.log.warning("daemon.cancelled_jobs", count=len(pending))
            await asyncio.wait(pending, timeout=1)

    async def close(self) -> None:
        while self._to_stop:  # every service, started or not: each owns resources
            await self._to_stop.pop().stop()
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self._on_close is not None:
            await self._on_close()
            self._on_close = None
        if self._journal_open:
            await asyncio.to_thread(self.journal.close)
            self._journal_open = False


def _pending_sha256(state: PolicyState) -> str | None:
    return state.pending.policy.sha256 if state.pending is not None else None


def _quiet_apscheduler() -> None:
    """Silence APScheduler's own stdlib logging: it is plain text, which would break the
    one-JSON-object-per-line log; :meth:`Daemon._job_event` logs its job events instead."""
    logger = logging.getLogger("apscheduler")
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _jitter(interval: float) -> float:
    return min(5.0, interval * 0.05)
