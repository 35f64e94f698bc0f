"""``policy explain``: why an item gets its decision, rule by rule and limit by limit."""

from __future__ import annotations

from datetime import datetime, timedelta

from cosigner.models import PendingItem
from cosigner.policy.engine import Decision, evaluate, item_facts, limit_effect
from cosigner.policy.ledger import Ledger
from cosigner.policy.model import CompiledPolicy


def window_text(window: timedelta) -> str:
    """A window the way policies write it (``24h``, ``7d``, ``90s``)."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def explain(policy: CompiledPolicy, item: PendingItem, ledger: Ledger,
            now: datetime) -> tuple[Decision, list[str]]:
    """The decision for *item* and the lines that explain it (same result as ``evaluate``)."""
    decision = evaluate(policy, item, ledger, now)
    lines = [f"policy {policy.name} ({policy.sha256[:12]}), now {now.isoformat()}"]
    facts = item_facts(policy, item)
    if isinstance(facts, str):
        lines.append(f"invalid item: {facts} -> on_invalid {policy.on_invalid.value}")
        lines.append(f"decision: {decision.action.value} ({', '.join(decision.reasons)})")
        return decision, lines
    lines.append(f"item: chain {facts.chain.chain_id} ({facts.chain.name}), "
                 f"from {facts.from_address}, to {facts.to_address}, amount {facts.amount}")
    matched = None
    for rule in policy.rules:
        why = rule.mismatch(facts, now)
        if why is None:
            matched = rule
            lines.append(f"rule {rule.name} (line {rule.line}): MATCH -> {rule.action.value}")
            break
        lines.append(f"rule {rule.name} (line {rule.line}): no match: {why}")
    if matched is None:
        lines.append(f"no rule matched -> default {policy.default.value}")
    if policy.limits:
        lines.append("limits (they only change an approval):")
    for limit in policy.limits:
        why = limit.scope.mismatch(facts)
        if why is not None:
            lines.append(f"limit {limit.name}: not in scope: {why}")
            continue
        effect = limit_effect(limit, facts, ledger, now)
        parts = []
        if effect.max_amount is not None:
            parts.append(f"amount {effect.used_amount} + {facts.amount} of {effect.max_amount}")
        if effect.max_count is not None:
            parts.append(f"count {effect.used_count} + 1 of {effect.max_count}")
        verdict = "WOULD EXCEED" if effect.would_exceed else "ok"
        lines.append(f"limit {limit.name} (bucket {effect.bucket}, "
                     f"window {window_text(limit.window)}): {', '.join(parts)}: {verdict}")
    lines.append(f"decision: {decision.action.value} (rule {decision.rule}; "
                 f"{', '.join(decision.reasons)})")
    return decision, lines
