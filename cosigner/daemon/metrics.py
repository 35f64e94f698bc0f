"""Every Prometheus metric of the daemon (DESIGN section 7), created once, in one place.

Each :class:`Metrics` has its own registry, so an in-process daemon in a test
or the demo never collides with another.  Labels are bounded: never an item
id or an address.

Every label set known in advance (endpoints and error kinds, post and reload
outcomes, invalid-item reasons) is created at zero, so dashboards show a flat
line rather than "no data" and ``increase()`` sees the first event.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from cosigner import __version__

# The *_created series double every counter for no operator value.
disable_created_metrics()  # type: ignore[no-untyped-call]

ORDER_CALLBACK_OUTCOMES = ("accepted", "duplicate", "late", "bad_signature", "malformed",
                           "forbidden", "error")
ORDER_FORWARD_OUTCOMES = ("delivered", "rejected", "error")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: Label values known in advance, initialised at zero.
DAEMON_ENDPOINTS = ("pending", "approve", "collect")
ERROR_KINDS = ("already_processed", "api_code", "rate_limited", "http_status", "protocol",
               "connect", "tls", "timeout", "transport", "other")
POST_OUTCOMES = {"approve": ("ok", "already_processed", "rejected_by_api", "unknown", "error"),
                 "collect": ("ok", "error")}
RELOAD_OUTCOMES = ("ok", "unchanged", "error", "unsigned")
COLLECT_OUTCOMES = ("ok", "error")
MODES = ("enforce", "shadow")
INVALID_REASONS = ("missing_field", "bad_type", "unknown_chain", "amount_syntax",
                   "amount_not_finite", "amount_not_positive", "amount_precision",
                   "amount_out_of_range", "address_chars", "address_format",
                   "duplicate_key", "not_an_object")


class Metrics:
    """The ``cosigner_*`` metrics.  ``render()`` gives the Prometheus text."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.decisions = Counter("cosigner_decisions", "Decisions made, by outcome, rule "
                                 "and chain", ["action", "rule", "chain"], registry=r)
        self.invalid_items = Counter("cosigner_invalid_items", "Malformed pending items, by "
                                     "reason", ["reason"], registry=r)
        self.item_mutations = Counter("cosigner_item_mutations", "Pending items whose content "
                                      "changed under the same id (held)", registry=r)
        self.posts = Counter("cosigner_posts", "Decisions posted, by endpoint and outcome",
                             ["endpoint", "outcome"], registry=r)
        self.api_request_duration = Histogram(
            "cosigner_api_request_duration_seconds", "1BitPay API request latency",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self._api_durations: dict[str, Any] = {}
        self.api_errors = Counter("cosigner_api_errors", "Failed 1BitPay API calls, by kind",
                                  ["endpoint", "kind"], registry=r)
        self.pending_items = Gauge("cosigner_pending_items", "Items in the last pending "
                                   "snapshot", registry=r)
        self.poll_duration = Histogram("cosigner_poll_duration_seconds", "Duration of a poll "
                                       "cycle", buckets=_POLL_BUCKETS, registry=r)
        self.last_poll_success = Gauge("cosigner_last_poll_success_timestamp_seconds",
                                       "Unix time of the last successful poll", registry=r)
        self.collections = Counter("cosigner_collections", "Fund collections, by isMain and "
                                   "outcome", ["is_main", "outcome"], registry=r)
        self.last_collect_success = Gauge("cosigner_last_collect_success_timestamp_seconds",
                                          "Unix time of the last successful collection round",
                                          registry=r)
        self.policy_info = Gauge("cosigner_policy_info", "The policy in force (value 1)",
                                 ["name", "sha256"], registry=r)
        self.policy_reloads = Counter("cosigner_policy_reloads", "Policy reload attempts, by "
                                      "outcome", ["outcome"], registry=r)
        self.limit_usage_ratio = Gauge("cosigner_limit_usage_ratio", "Highest used/max ratio "
                                       "of each limit over its buckets; per: chain, to or "
                                       "from (one bucket per chain, destination or source)",
                                       ["limit", "per"], registry=r)
        self._limit_scopes: dict[str, str] = {}
        self.shard_cert_expiry = Gauge("cosigner_shard_cert_expiry_timestamp_seconds",
                                       "Unix time the shard's certificate expires", registry=r)
        self.policy_pending_info = Gauge(
            "cosigner_policy_pending_info", "A signed policy bundle waiting for "
            "POLICY_LOOSEN_DELAY (value 1); the intersection is enforced meanwhile",
            ["sha256"], registry=r)
        self.policy_activation = Gauge(
            "cosigner_policy_activation_timestamp_seconds", "Unix time the pending bundle "
            "takes effect, or the bundle in force took effect", registry=r)
        self.leader = Gauge("cosigner_leader", "1 when this instance may decide and post",
                            registry=r)
        self.order_callbacks = Counter("cosigner_order_callbacks", "C2C order callback "
                                       "requests, by outcome", ["outcome"], registry=r)
        self.order_forward_queue_size = Gauge("cosigner_order_forward_queue", "Order events "
                                              "waiting to be forwarded", registry=r)
        self.order_forwards = Counter("cosigner_order_forwards", "Attempts to forward an order "
                                      "event, by outcome", ["outcome"], registry=r)
        self.journal_head_sequence = Gauge(
            "cosigner_journal_head_sequence", "Sequence number of the journal's last entry "
            "(its head; anchor it externally to detect a rollback)", registry=r)
        self.build_info = Gauge("cosigner_build_info", "The running version (value 1)",
                                ["version"], registry=r)
        self.mode = Gauge("cosigner_mode", "1 for the mode in force (enforce or shadow)",
                          ["mode"], registry=r)
        self.paused = Gauge("cosigner_paused", "1 while the pause file exists (kill switch)",
                            registry=r)
        self.poll_interval = Gauge("cosigner_poll_interval_seconds",
                                   "The configured COSIGNER_POLL_INTERVAL", registry=r)
        self.collect_interval = Gauge("cosigner_collect_interval_seconds",
                                      "The configured COSIGNER_COLLECT_INTERVAL", registry=r)
        self.decided_unposted_items = Gauge(
            "cosigner_decided_unposted_items", "Approve/reject decisions whose post is not "
            "confirmed: still to post (decided, failed; re-posted while listed), or settled "
            "as gone in the last day (the item left the list; a person checks)", registry=r)
        # process_* (CPU, memory, open fds, start time) and python_info.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info.labels(__version__).set(1)
        self._initialise_label_sets()

    def _initialise_label_sets(self) -> None:
        for endpoint in DAEMON_ENDPOINTS:
            self.api_request_duration.labels(endpoint)
            for kind in ERROR_KINDS:
                self.api_errors.labels(endpoint, kind)
        for endpoint, outcomes in POST_OUTCOMES.items():
            for outcome in outcomes:
                self.posts.labels(endpoint, outcome)
        for outcome in RELOAD_OUTCOMES:
            self.policy_reloads.labels(outcome)
        for reason in INVALID_REASONS:
            self.invalid_items.labels(reason)
        self.set_mode("enforce")

    def configure(self, *, mode: str, poll_interval: float, collect_interval: float,
                  collect_is_main: tuple[int, ...] = (1, 0)) -> None:
        """What the daemon was started with: mode, intervals, the collections it runs."""
        self.set_mode(mode)
        self.poll_interval.set(poll_interval)
        self.collect_interval.set(collect_interval)
        for is_main in collect_is_main:
            for outcome in COLLECT_OUTCOMES:
                self.collections.labels(str(is_main), outcome)

    def set_mode(self, mode: str) -> None:
        """``cosigner_mode{mode}``: 1 for ``mode``, 0 for the other."""
        for name in MODES:
            self.mode.labels(name).set(1 if name == mode else 0)

    def follow_pause_file(self, path: Path | None) -> None:
        """``cosigner_paused`` is 1 while ``path`` exists, read at every scrape (a path
        that cannot be checked counts as paused: the pipeline posts nothing then either)."""
        if path is None:
            self.paused.set(0)
            return

        def paused() -> float:
            try:
                return 1.0 if path.exists() else 0.0
            except OSError:
                return 1.0

        self.paused.set_function(paused)

    def observe(self, endpoint: str, seconds: float, error_kind: str | None) -> None:
        """The API client's observer hook: latency and errors per endpoint."""
        histogram = self._api_durations.get(endpoint)
        if histogram is None:  # resolved once per endpoint (five of them)
            histogram = self._api_durations[endpoint] = self.api_request_duration.labels(
                endpoint)
        histogram.observe(seconds)
        if error_kind is not None:
            self.api_errors.labels(endpoint, error_kind).inc()

    def start_order_callbacks(self, *, forwarding: bool) -> None:
        """Show the callback series at zero from the start (an alert on a series that does
        not exist yet can never fire)."""
        for outcome in ORDER_CALLBACK_OUTCOMES:
            self.order_callbacks.labels(outcome)
        if forwarding:
            for outcome in ORDER_FORWARD_OUTCOMES:
                self.order_forwards.labels(outcome)
            self.order_forward_queue_size.set(0)

    def order_callback(self, outcome: str) -> None:
        """The callback listener's observer hook."""
        self.order_callbacks.labels(outcome).inc()

    def order_forward(self, outcome: str) -> None:
        """The forwarder's observer hook: one attempt."""
        self.order_forwards.labels(outcome).inc()

    def order_forward_queue(self, size: int) -> None:
        """The forwarder's observer hook: undelivered events."""
        self.order_forward_queue_size.set(size)

    def set_policy(self, name: str, sha256: str) -> None:
        """Show exactly one policy_info series: the policy now in force."""
        self.policy_info.clear()
        self.policy_info.labels(name, sha256).set(1)

    def set_limit_scopes(self, scopes: Mapping[str, str]) -> None:
        """Each limit's ``per`` (chain, to, from): the ``per`` label of its usage ratio."""
        self._limit_scopes = dict(scopes)

    def set_policy_pending(self, sha256: str | None, activation: float) -> None:
        """Show the pending bundle (none: no series) and its activation time."""
        self.policy_pending_info.clear()
        if sha256 is not None:
            self.policy_pending_info.labels(sha256).set(1)
        self.policy_activation.set(activation)

    def set_limit_ratios(self, ratios: dict[str, float]) -> None:
        self.limit_usage_ratio.clear()
        scopes = self._limit_scopes
        for name, ratio in ratios.items():
            self.limit_usage_ratio.labels(name, scopes.get(name, "chain")).set(ratio)

    def render(self) -> bytes:
        return generate_latest(self.registry)
