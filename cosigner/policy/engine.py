"""The decision: validate the item, first matching rule, then the limits.  Pure.

``evaluate`` is total over item content: whatever JSON the API sends, it
returns a :class:`Decision` and only an explicit ``approve`` rule, within every
limit in scope, yields ``approve``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from heapq import merge
from typing import Final

from cosigner.models import Action, PendingItem, amount_text
from cosigner.policy import addresses
from cosigner.policy.ledger import MONEY, Ledger, facts_of
from cosigner.policy.model import CompiledPolicy, ItemFacts, Limit, Rule

DEFAULT_RULE: Final = "<default>"
INVALID_RULE: Final = "<invalid>"

# The bounded set of invalid-item reasons (a Prometheus label).
INVALID_REASONS: Final = frozenset({
    "missing_field", "bad_type", "unknown_chain", "amount_syntax", "amount_not_finite",
    "amount_not_positive", "amount_precision", "amount_out_of_range", "address_chars",
    "address_format",
})
REQUIRED_FIELDS: Final = ("id", "chainId", "fromAddress", "toAddress", "amount")
MAX_AMOUNT_TEXT: Final = 80
MAX_INTEGER_DIGITS: Final = 40

_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")
_NEGATIVE = re.compile(r"-[0-9]+(?:\.[0-9]+)?")
_NOT_FINITE = re.compile(r"[+-]?(inf|infinity|s?nan[0-9]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class LimitEffect:
    """How one limit in scope judged an approval: usage before it and whether it breaks it."""

    limit: str
    bucket: str
    used_amount: Decimal
    used_count: int
    max_amount: Decimal | None
    max_count: int | None
    would_exceed: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one item; refusals are values, not exceptions."""

    action: Action
    rule: str
    reasons: tuple[str, ...]
    limit_effects: tuple[LimitEffect, ...] = ()
    invalid_reason: str | None = None


def _amount_problem(text: str, decimals: int) -> str | None:
    if len(text) > MAX_AMOUNT_TEXT:
        return "amount_out_of_range"
    match = _AMOUNT.fullmatch(text)
    if match is None:
        if _NOT_FINITE.fullmatch(text.strip()):
            return "amount_not_finite"
        if _NEGATIVE.fullmatch(text):
            return "amount_not_positive"
        return "amount_syntax"
    whole, fraction = match.group(1), (match.group(2) or "").rstrip("0")
    if whole == "0" and not fraction:
        return "amount_not_positive"
    if len(whole) > MAX_INTEGER_DIGITS:
        return "amount_out_of_range"
    if len(fraction) > decimals:
        return "amount_precision"
    return None


def _address_problem(text: str, fmt: addresses.Format) -> str | None:
    if not addresses.clean_chars(text):
        return "address_chars"
    if len(text) > addresses.MAX_ADDRESS_LENGTH or not addresses.is_valid(text, fmt):
        return "address_format"
    return None


def item_facts(policy: CompiledPolicy, item: PendingItem) -> ItemFacts | str:
    """The comparison facts of a well-formed item, or the invalid reason code."""
    raw = item.raw
    if not isinstance(raw, Mapping):
        return "bad_type"
    for name in REQUIRED_FIELDS:
        if name not in raw:
            return "missing_field"
    ident, chain_id, source, dest = raw["id"], raw["chainId"], raw["fromAddress"], raw["toAddress"]
    text = amount_text(raw["amount"])
    if (not isinstance(ident, int) or isinstance(ident, bool) or not isinstance(chain_id, str)
            or not isinstance(source, str) or not isinstance(dest, str) or text is None):
        return "bad_type"
    chain = policy.chains.get(chain_id)
    if chain is None:
        return "unknown_chain"
    problem = (_amount_problem(text, chain.decimals) or _address_problem(dest, chain.address)
               or _address_problem(source, chain.address))
    if problem is not None:
        return problem
    return facts_of(policy, chain_id, source, dest, Decimal(text))


def validate_item(policy: CompiledPolicy, item: PendingItem) -> str | None:
    """The invalid reason code of *item* (DESIGN section 2), or None when it is well formed."""
    facts = item_facts(policy, item)
    return facts if isinstance(facts, str) else None


def first_match(policy: CompiledPolicy, facts: ItemFacts, now: datetime) -> Rule | None:
    """The first rule, in policy order, that matches (only indexed candidates are tried)."""
    index = policy.index[facts.chain.chain_id]
    named = index.by_to.get(facts.to_key)
    candidates = merge(index.generic, named) if named else index.generic
    rules = policy.rules
    for i in candidates:
        if rules[i].mismatch(facts, now) is None:
            return rules[i]
    return None


def limit_effect(limit: Limit, facts: ItemFacts, ledger: Ledger, now: datetime) -> LimitEffect:
    """Usage of *limit* in the bucket of *facts*, and whether approving it would break it."""
    bucket = limit.bucket(facts.chain.chain_id, facts.to_key, facts.from_key)
    used_amount, used_count = ledger.usage(limit.name, bucket, now)
    exceed = ((limit.max_amount is not None
               and MONEY.add(used_amount, facts.amount) > limit.max_amount)
              or (limit.max_count is not None and used_count + 1 > limit.max_count))
    return LimitEffect(limit.name, bucket, used_amount, used_count, limit.max_amount,
                       limit.max_count, exceed)


def _check_inputs(policy: CompiledPolicy, ledger: Ledger, now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if ledger.policy.sha256 != policy.sha256:
        raise ValueError(f"the ledger was built for policy {ledger.policy.name!r} "
                         f"({ledger.policy.sha256[:12]}), not {policy.name!r} "
                         f"({policy.sha256[:12]})")


def evaluate(policy: CompiledPolicy, item: PendingItem, ledger: Ledger,
             now: datetime) -> Decision:
    """Decide *item* under *policy* at *now*, given the approvals counted in *ledger*.

    Raises ValueError only for a caller's mistake (naive *now*, a ledger of
    another policy), never because of what the item contains.
    """
    _check_inputs(policy, ledger, now)
    facts = item_facts(policy, item)
    if isinstance(facts, str):
        return Decision(policy.on_invalid, INVALID_RULE, (f"invalid:{facts}",), (), facts)
    rule = first_match(policy, facts, now)
    if rule is None:
        return Decision(policy.default, DEFAULT_RULE, ("default",))
    if rule.action is not Action.APPROVE:
        return Decision(rule.action, rule.name, (f"rule:{rule.name}",))
    effects = tuple(limit_effect(limit, facts, ledger, now)
                    for limit in policy.index[facts.chain.chain_id].limits
                    if limit.scope.mismatch(facts) is None)
    broken = tuple(f"limit:{e.limit}" for e in effects if e.would_exceed)
    if broken:
        return Decision(policy.on_limit, rule.name, broken, effects)
    return Decision(Action.APPROVE, rule.name, (f"rule:{rule.name}",), effects)
