"""Every Prometheus metric of the daemon (DESIGN section 7), created once, in one place.

Each :class:`Metrics` has its own registry, so an in-process daemon in a test
or the demo never collides with another.  Labels are bounded: never an item
id or an address.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double every counter for no operator value.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


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
                                       "of each limit over its buckets", ["limit"], registry=r)
        self.shard_cert_expiry = Gauge("cosigner_shard_cert_expiry_timestamp_seconds",
                                       "Unix time the shard's certificate expires", registry=r)
        self.leader = Gauge("cosigner_leader", "1 when this instance may decide and post",
                            registry=r)
        self.journal_head_sequence = Gauge(
            "cosigner_journal_head_sequence", "Sequence number of the journal's last entry "
            "(its head; anchor it externally to detect a rollback)", registry=r)

    def observe(self, endpoint: str, seconds: float, error_kind: str | None) -> None:
        """The API client's observer hook: latency and errors per endpoint."""
        self.api_request_duration.labels(endpoint).observe(seconds)
        if error_kind is not None:
            self.api_errors.labels(endpoint, error_kind).inc()

    def set_policy(self, name: str, sha256: str) -> None:
        """Show exactly one policy_info series: the policy now in force."""
        self.policy_info.clear()
        self.policy_info.labels(name, sha256).set(1)

    def set_limit_ratios(self, ratios: dict[str, float]) -> None:
        self.limit_usage_ratio.clear()
        for name, ratio in ratios.items():
            self.limit_usage_ratio.labels(name).set(ratio)

    def render(self) -> bytes:
        return generate_latest(self.registry)
