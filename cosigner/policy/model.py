"""The compiled policy: immutable, indexed, built once by the loader.

Nothing here does I/O.  Each condition is defined once, by its ``holds``; its
``why_not`` (what ``policy explain`` prints) calls that ``holds`` and only words
the failure, and the evaluation's fast path (:func:`residual_check`, the
loader's index) is composed from the same ``holds`` methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Literal

from cosigner.models import Action
from cosigner.policy.addresses import Format

Per = Literal["chain", "to", "from"]
DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain the policy accepts items for."""

    chain_id: str
    name: str
    address: Format
    decimals: int


@dataclass(frozen=True, slots=True)
class AddressList:
    """A named set of addresses, one frozenset of comparison keys per format."""

    name: str
    by_format: Mapping[Format, frozenset[str]]
    size: int

    def __contains__(self, fmt_key: tuple[Format, str]) -> bool:
        fmt, key = fmt_key
        return key in self.by_format[fmt]


@dataclass(frozen=True, slots=True)
class AddressSet:
    """The union of lists (shared, never copied) named by one ``in:``/``not_in:``."""

    members: tuple[AddressList, ...]
    text: str

    def contains(self, fmt: Format, key: str) -> bool:
        """True when an address with comparison *key* in format *fmt* is in the set."""
        return any(key in m.by_format[fmt] for m in self.members)

    def keys(self, fmt: Format) -> frozenset[str]:
        """Every comparison key of *fmt* in the set (load-time analysis only)."""
        if len(self.members) == 1:
            return self.members[0].by_format[fmt]
        return frozenset().union(*(m.by_format[fmt] for m in self.members))


@dataclass(frozen=True, slots=True)
class AddressCond:
    """``to:``/``from:``: the address must be in ``in`` (if given) and not in ``not_in``."""

    in_: AddressSet | None
    not_in: AddressSet | None

    def holds(self, fmt: Format, key: str) -> bool:
        """The condition (its one definition): in ``in`` and not in ``not_in``."""
        return ((self.in_ is None or self.in_.contains(fmt, key))
                and (self.not_in is None or not self.not_in.contains(fmt, key)))

    def without_in(self) -> AddressCond | None:
        """What is left to test once an index guaranteed the ``in`` part (None: nothing)."""
        return AddressCond(None, self.not_in) if self.not_in is not None else None

    def why_not(self, field_name: str, fmt: Format, key: str) -> str | None:
        """None when the address satisfies the condition, else the condition that fails."""
        if self.holds(fmt, key):
            return None
        parts = ([f"in {self.in_.text}"] if self.in_ is not None else []) + (
            [f"not in {self.not_in.text}"] if self.not_in is not None else [])
        return f"{field_name} is not {' and '.join(parts)}"


@dataclass(frozen=True, slots=True)
class AmountRange:
    """Inclusive bounds on the amount."""

    min: Decimal | None
    max: Decimal | None

    def holds(self, amount: Decimal) -> bool:
        """The condition (its one definition): ``min <= amount <= max``."""
        return ((self.min is None or amount >= self.min)
                and (self.max is None or amount <= self.max))

    def why_not(self, amount: Decimal) -> str | None:
        """None when *amount* is within the bounds, else the bounds it is outside of."""
        if self.holds(amount):
            return None
        bounds = ([f">= min {self.min}"] if self.min is not None else []) + (
            [f"<= max {self.max}"] if self.max is not None else [])
        return f"amount {amount} is not {' and '.join(bounds)}"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Weekdays and an hour range (``start`` inclusive, ``end`` exclusive, in minutes)."""

    days: frozenset[int] | None
    start: int | None
    end: int | None
    tz: tzinfo
    tz_name: str

    def contains_minutes(self, minute: int) -> bool:
        """True when minute-of-day *minute* is inside the hour range."""
        if self.start is None or self.end is None:
            return True
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # wraps past midnight

    def holds(self, now: datetime) -> bool:
        """The condition (its one definition): *now* on an allowed day, inside the hours."""
        local = now.astimezone(self.tz)
        return ((self.days is None or local.weekday() in self.days)
                and self.contains_minutes(local.hour * 60 + local.minute))

    def why_not(self, now: datetime) -> str | None:
        """None when *now* falls inside the window, else where *now* is and the window."""
        if self.holds(now):
            return None
        local = now.astimezone(self.tz)
        days = (f"days {', '.join(DAY_NAMES[d] for d in sorted(self.days))}"
                if self.days is not None else "any day")
        hours = ("" if self.start is None or self.end is None else
                 f", {self.start // 60:02}:{self.start % 60:02}-"
                 f"{self.end // 60:02}:{self.end % 60:02}")
        return (f"{DAY_NAMES[local.weekday()]} {local:%H:%M} is outside {days}{hours} "
                f"({self.tz_name})")


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """A validated item reduced to what conditions compare."""

    chain: Chain
    to_key: str
    from_key: str
    amount: Decimal
    to_address: str
    from_address: str

    @property
    def fmt(self) -> Format:
        return self.chain.address


@dataclass(frozen=True, slots=True)
class Scope:
    """Conditions shared by rules and limits: chain, to, from."""

    chains: frozenset[str] | None
    to: AddressCond | None
    from_: AddressCond | None

    def holds(self, chain_id: str, fmt: Format, to_key: str, from_key: str) -> bool:
        """The scope (its one definition): every condition given holds."""
        return ((self.chains is None or chain_id in self.chains)
                and (self.to is None or self.to.holds(fmt, to_key))
                and (self.from_ is None or self.from_.holds(fmt, from_key)))

    def why_not(self, facts: ItemFacts) -> str | None:
        """None when *facts* are in scope, else the first condition that fails."""
        if self.holds(facts.chain.chain_id, facts.fmt, facts.to_key, facts.from_key):
            return None
        if self.chains is not None and facts.chain.chain_id not in self.chains:
            return f"chain {facts.chain.chain_id} is not in {sorted(self.chains)}"
        if self.to is not None and not self.to.holds(facts.fmt, facts.to_key):
            return self.to.why_not("to", facts.fmt, facts.to_key)
        assert self.from_ is not None
        return self.from_.why_not("from", facts.fmt, facts.from_key)


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of ``rules:``; ``index`` is its position (first match wins)."""

    name: str
    index: int
    line: int
    action: Action
    scope: Scope
    amount: AmountRange | None
    time: TimeWindow | None

    def holds(self, facts: ItemFacts, now: datetime) -> bool:
        """The rule matches (its one definition): scope, amount and time all hold."""
        return (self.scope.holds(facts.chain.chain_id, facts.fmt, facts.to_key, facts.from_key)
                and (self.amount is None or self.amount.holds(facts.amount))
                and (self.time is None or self.time.holds(now)))

    def why_not(self, facts: ItemFacts, now: datetime) -> str | None:
        """None when the rule matches, else the first of its conditions that fails."""
        if self.holds(facts, now):
            return None
        why = self.scope.why_not(facts)
        if why is None and self.amount is not None:
            why = self.amount.why_not(facts.amount)
        if why is None and self.time is not None:
            why = self.time.why_not(now)
        return why


@dataclass(frozen=True, slots=True)
class Limit:
    """One entry of ``limits:``: a rolling window over approvals in scope."""

    name: str
    line: int
    window: timedelta
    max_amount: Decimal | None
    max_count: int | None
    per: Per
    scope: Scope

    def bucket(self, chain_id: str, to_key: str, from_key: str) -> str:
        """The bucket an approval counts in.  Amounts of two chains are never added."""
        if self.per == "to":
            return f"{chain_id}/{to_key}"
        if self.per == "from":
            return f"{chain_id}/{from_key}"
        return chain_id


@dataclass(frozen=True, slots=True)
class ChainIndex:
    """Per chain: rules that may match in order, split by whether they name ``to`` addresses.

    ``generic`` holds the indexes of rules without ``to: {in: ...}``; ``by_to``
    maps a destination key to the indexes of rules whose ``in`` contains it
    through a small list or literal addresses; ``listed`` pairs each large list
    (the set of its keys for the chain's format, shared, never copied) with the
    indexes of rules whose ``in`` names it.  Only those sources can match, so
    evaluation never scans every rule; each tuple of indexes is ascending.
    """

    generic: tuple[int, ...]
    by_to: Mapping[str, tuple[int, ...]]
    limits: tuple[Limit, ...]
    listed: tuple[tuple[frozenset[str], tuple[int, ...]], ...] = ()
    # by rule index: the rest of the rule's test once the index picked it (see
    # residual_check); never_matches for a rule the index never offers
    checks: tuple[Check, ...] = ()


Check = Callable[[str, str, Decimal, datetime], bool]  # (to_key, from_key, amount, now)


def residual_check(rule: Rule, fmt: Format) -> Check:
    """:meth:`Rule.holds` for a candidate that a chain's index picked, on that chain's format.

    The index only offers a rule for a chain in its chain scope, and a rule
    with ``to: {in: ...}`` only for a destination in that ``in``; what is left
    (``to.not_in``, ``from``, the amount, the time) is tested by the conditions'
    own ``holds``, bound here once.
    """
    parts: list[Check] = []
    amount = rule.amount
    if amount is not None:
        parts.append(lambda to_key, from_key, value, now: amount.holds(value))
    rest = rule.scope.to.without_in() if rule.scope.to is not None else None
    if rest is not None:
        parts.append(lambda to_key, from_key, value, now: rest.holds(fmt, to_key))
    from_ = rule.scope.from_
    if from_ is not None:
        parts.append(lambda to_key, from_key, value, now: from_.holds(fmt, from_key))
    window = rule.time
    if window is not None:
        parts.append(lambda to_key, from_key, value, now: window.holds(now))
    if not parts:
        return always_matches
    check = parts[-1]
    for part in reversed(parts[:-1]):  # cheapest first: amount, addresses, then time
        check = _both(part, check)
    return check


def _both(first: Check, second: Check) -> Check:
    def check(to_key: str, from_key: str, amount: Decimal, now: datetime) -> bool:
        return first(to_key, from_key, amount, now) and second(to_key, from_key, amount, now)
    return check


def always_matches(to_key: str, from_key: str, amount: Decimal, now: datetime) -> bool:
    """The check of a rule the index picked with nothing left to test."""
    return True


def never_matches(to_key: str, from_key: str, amount: Decimal, now: datetime) -> bool:
    """The check of a rule that cannot match on a chain (outside its scope)."""
    return False


@dataclass(frozen=True, slots=True, eq=False)
class CompiledPolicy:
    """A policy that loaded without a single problem; safe to share between threads."""

    name: str
    sha256: str
    sources: tuple[Path, ...]
    default: Action
    on_invalid: Action
    on_limit: Action
    chains: Mapping[str, Chain]
    lists: Mapping[str, AddressList]
    rules: tuple[Rule, ...]
    limits: tuple[Limit, ...]
    index: Mapping[str, ChainIndex] = field(repr=False)

    def summary(self) -> str:
        """One line: chains, lists, addresses, rules, limits."""
        addresses = sum(lst.size for lst in self.lists.values())
        return (f"policy {self.name!r}: {len(self.chains)} chains, {len(self.lists)} lists, "
                f"{addresses} addresses, {len(self.rules)} rules, {len(self.limits)} limits, "
                f"sha256 {self.sha256[:12]}")
