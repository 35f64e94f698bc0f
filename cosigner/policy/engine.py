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
from functools import lru_cache
from typing import Any, Final

from cosigner.models import Action, PendingItem, amount_text
from cosigner.policy import addresses
from cosigner.policy.ledger import MONEY, Ledger, Usage
from cosigner.policy.model import Chain, CompiledPolicy, ItemFacts, Limit, Rule

DEFAULT_RULE: Final = "<default>"
INVALID_RULE: Final = "<invalid>"

# The bounded set of invalid-item reasons (a Prometheus label).
INVALID_REASONS: Final = frozenset({
    "missing_field", "bad_type", "unknown_chain", "amount_syntax", "amount_not_finite",
    "amount_not_positive", "amount_precision", "amount_out_of_range", "address_chars",
    "address_format", "duplicate_key", "bad_id",
})
REQUIRED_FIELDS: Final = ("id", "chainId", "fromAddress", "toAddress", "amount")  # in order
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
    whole, fraction = match.groups()
    fraction = fraction.rstrip("0") if fraction is not None else ""
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


@lru_cache(maxsize=16384)  # the same wallets recur in every poll
def _checked_address(text: str, fmt: addresses.Format) -> tuple[str | None, str]:
    """``(problem, comparison key)`` of an address of at most MAX_ADDRESS_LENGTH characters."""
    problem = _address_problem(text, fmt)
    return problem, (addresses.key(text, fmt) if problem is None else "")


def _address_facts(text: str, fmt: addresses.Format) -> tuple[str | None, str]:
    if len(text) > addresses.MAX_ADDRESS_LENGTH:  # never cached: always invalid, maybe huge
        return _address_problem(text, fmt), ""
    return _checked_address(text, fmt)


_Values = tuple[Chain, str, str, Decimal, str, str]  # the fields of ItemFacts, in order


_Fields = tuple[int, str, str, str, str]  # id, chainId, fromAddress, toAddress, amount text


def _fields(raw: Mapping[str, Any]) -> _Fields | str:
    """The required fields with their JSON types checked, or the invalid reason code."""
    if type(raw) is dict:  # what the API client gives: one lookup per field
        try:
            ident, chain_id, source, dest, amount = (raw["id"], raw["chainId"],
                                                     raw["fromAddress"], raw["toAddress"],
                                                     raw["amount"])
        except KeyError:
            return "missing_field"
    elif not isinstance(raw, Mapping):
        return "bad_type"
    elif any(name not in raw for name in REQUIRED_FIELDS):
        return "missing_field"
    else:
        ident, chain_id, source, dest, amount = (raw[n] for n in REQUIRED_FIELDS)
    text = amount if type(amount) is str else amount_text(amount)
    if (not isinstance(ident, int) or isinstance(ident, bool) or not isinstance(chain_id, str)
            or not isinstance(source, str) or not isinstance(dest, str) or text is None):
        return "bad_type"
    return ident, chain_id, source, dest, text


def _item_values(policy: CompiledPolicy, item: PendingItem) -> _Values | str:
    """The fields of :class:`ItemFacts` of a well-formed item, or the invalid reason code."""
    fields = _fields(item.raw)
    if isinstance(fields, str):
        return fields
    _, chain_id, source, dest, text = fields
    chain = policy.chains.get(chain_id)
    if chain is None:
        return "unknown_chain"
    problem = _amount_problem(text, chain.decimals)
    if problem is not None:
        return problem
    fmt = chain.address
    problem, to_key = _address_facts(dest, fmt)
    if problem is not None:
        return problem
    problem, from_key = _address_facts(source, fmt)
    if problem is not None:
        return problem
    return chain, to_key, from_key, Decimal(text), dest, source


def item_facts(policy: CompiledPolicy, item: PendingItem) -> ItemFacts | str:
    """The comparison facts of a well-formed item, or the invalid reason code."""
    values = _item_values(policy, item)
    return values if isinstance(values, str) else ItemFacts(*values)


def validate_item(policy: CompiledPolicy, item: PendingItem) -> str | None:
    """The invalid reason code of *item* (DESIGN section 2), or None when it is well formed."""
    values = _item_values(policy, item)
    return values if isinstance(values, str) else None


def first_match(policy: CompiledPolicy, facts: ItemFacts, now: datetime) -> Rule | None:
    """The first rule, in policy order, that matches (only indexed candidates are tried)."""
    return _first_match(policy, facts.chain, facts.to_key, facts.from_key, facts.amount, now)


def _first_match(policy: CompiledPolicy, chain: Chain, to_key: str, from_key: str,
                 amount: Decimal, now: datetime) -> Rule | None:
    """``first_match`` on the facts' values.

    Each source of candidates (rules naming the destination, rules naming a
    large list that holds it, generic rules) is ascending; each is tried only
    below the best match found so far, so the lowest matching index wins.
    """
    index = policy.index[chain.chain_id]
    rules = policy.rules
    checks = index.checks
    best = len(rules)
    found = None
    named = index.by_to.get(to_key)
    if named is not None:
        for i in named:
            if checks[i](to_key, from_key, amount, now):
                best, found = i, rules[i]
                break
    for keys, indexes in index.listed:
        if to_key in keys:
            for i in indexes:
                if i >= best:
                    break
                if checks[i](to_key, from_key, amount, now):
                    best, found = i, rules[i]
                    break
    for i in index.generic:
        if i >= best:
            break
        if checks[i](to_key, from_key, amount, now):
            return rules[i]
    return found


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule tried in policy order: None, or the first of its conditions that failed."""

    rule: Rule
    why_not: str | None


def explain_rules(policy: CompiledPolicy, item: PendingItem,
                  now: datetime) -> list[RuleCheck] | str:
    """Each rule in order up to the first that matches, with why the others did not; the
    invalid reason code for a malformed item.  Used for ``policy explain``'s trace; the
    property tests hold it to the indexed :func:`first_match`."""
    facts = item_facts(policy, item)
    if isinstance(facts, str):
        return facts
    out = []
    for rule in policy.rules:
        why = rule.why_not(facts, now)
        out.append(RuleCheck(rule, why))
        if why is None:
            break
    return out


def limit_effect(limit: Limit, facts: ItemFacts, ledger: Ledger, now: datetime) -> LimitEffect:
    """Usage of *limit* in the bucket of *facts*, and whether approving it would break it."""
    return limit_check(limit, facts.chain.chain_id, facts.to_key, facts.from_key,
                         facts.amount, ledger, now)


def limit_exceeded(limit: Limit, used_amount: Decimal, used_count: int,
                   amount: Decimal) -> bool:
    """The one definition of a limit's arithmetic: whether adding *amount* (one more
    approval) to the usage of its bucket would break ``max_amount`` or ``max_count``."""
    return ((limit.max_amount is not None
             and MONEY.add(used_amount, amount) > limit.max_amount)
            or (limit.max_count is not None and used_count + 1 > limit.max_count))


def limit_check(limit: Limit, chain_id: str, to_key: str, from_key: str, amount: Decimal,
                ledger: Usage, now: datetime) -> LimitEffect:
    """Usage in the bucket of the approval, and whether adding *amount* would break the limit
    (:func:`limit_exceeded`)."""
    bucket = limit.bucket(chain_id, to_key, from_key)
    used_amount, used_count = ledger.usage(limit.name, bucket, now)
    return LimitEffect(limit.name, bucket, used_amount, used_count, limit.max_amount,
                       limit.max_count, limit_exceeded(limit, used_amount, used_count, amount))


# Decisions without limit effects depend only on (action, rule or reason code);
# they are immutable, so each is built once and shared.
_DEFAULT_DECISIONS: Final = {action: Decision(action, DEFAULT_RULE, ("default",))
                             for action in Action}


@lru_cache(maxsize=4096)
def _rule_decision(action: Action, rule: str) -> Decision:
    return Decision(action, rule, (f"rule:{rule}",))


@lru_cache(maxsize=64)
def _invalid_decision(action: Action, code: str) -> Decision:
    return Decision(action, INVALID_RULE, (f"invalid:{code}",), (), code)


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
    values = _item_values(policy, item)
    if isinstance(values, str):
        return _invalid_decision(policy.on_invalid, values)
    chain, to_key, from_key, amount = values[0], values[1], values[2], values[3]
    rule = _first_match(policy, chain, to_key, from_key, amount, now)
    if rule is None:
        return _DEFAULT_DECISIONS[policy.default]
    approved = _rule_decision(rule.action, rule.name)
    if rule.action is not Action.APPROVE:
        return approved
    chain_id, fmt = chain.chain_id, chain.address
    effects = tuple([limit_check(limit, chain_id, to_key, from_key, amount, ledger, now)
                     for limit in policy.index[chain_id].limits
                     if limit.scope.holds(chain_id, fmt, to_key, from_key)])
    broken = tuple([f"limit:{e.limit}" for e in effects if e.would_exceed])
    if broken:
        return Decision(policy.on_limit, rule.name, broken, effects)
    return Decision(Action.APPROVE, rule.name, approved.reasons, effects)
