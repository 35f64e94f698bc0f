"""The compiled policy: immutable, indexed, built once by the loader.

Nothing here does I/O.  Conditions know how to test themselves against an
:class:`ItemFacts` (a validated item reduced to comparison keys) and say why
they did not match, which is what ``policy explain`` prints.
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

    def matches(self, fmt: Format, key: str) -> bool:
        """True when the address satisfies the condition (``mismatch`` is None)."""
        if self.in_ is not None and not self.in_.contains(fmt, key):
            return False
        return self.not_in is None or not self.not_in.contains(fmt, key)

    def mismatch(self, field_name: str, fmt: Format, key: str) -> str | None:
        """None when the address satisfies the condition, else why not."""
        if self.in_ is not None and not self.in_.contains(fmt, key):
            return f"{field_name} not in {self.in_.text}"
        if self.not_in is not None and self.not_in.contains(fmt, key):
            return f"{field_name} in {self.not_in.text}"
        return None


@dataclass(frozen=True, slots=True)
class AmountRange:
    """Inclusive bounds on the amount."""

    min: Decimal | None
    max: Decimal | None

    def matches(self, amount: Decimal) -> bool:
        """True when *amount* is within the bounds (``mismatch`` is None)."""
        return ((self.min is None or amount >= self.min)
                and (self.max is None or amount <= self.max))

    def mismatch(self, amount: Decimal) -> str | None:
        """None when *amount* is within the bounds, else why not."""
        if self.min is not None and amount < self.min:
            return f"amount {amount} < min {self.min}"
        if self.max is not None and amount > self.max:
            return f"amount {amount} > max {self.max}"
        return None


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

    def matches(self, now: datetime) -> bool:
        """True when *now* falls inside the window (``mismatch`` is None)."""
        local = now.astimezone(self.tz)
        if self.days is not None and local.weekday() not in self.days:
            return False
        return self.contains_minutes(local.hour * 60 + local.minute)

    def mismatch(self, now: datetime) -> str | None:
        """None when *now* falls inside the window, else why not."""
        local = now.astimezone(self.tz)
        if self.days is not None and local.weekday() not in self.days:
            return f"{DAY_NAMES[local.weekday()]} not in allowed days ({self.tz_name})"
        if not self.contains_minutes(local.hour * 60 + local.minute):
            return f"{local:%H:%M} outside hours ({self.tz_name})"
        return None


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

    def admits(self, chain_id: str, fmt: Format, to_key: str, from_key: str) -> bool:
        """``matches`` on the facts' values (evaluation builds no ItemFacts)."""
        if self.chains is not None and chain_id not in self.chains:
            return False
        if self.to is not None and not self.to.matches(fmt, to_key):
            return False
        return self.from_ is None or self.from_.matches(fmt, from_key)

    def mismatch(self, facts: ItemFacts) -> str | None:
        """None when *facts* are in scope, else why not."""
        if self.chains is not None and facts.chain.chain_id not in self.chains:
            return f"chain {facts.chain.chain_id} not in {sorted(self.chains)}"
        if self.to is not None:
            why = self.to.mismatch("to", facts.fmt, facts.to_key)
            if why is not None:
                return why
        if self.from_ is not None:
            return self.from_.mismatch("from", facts.fmt, facts.from_key)
        return None


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

    def matches(self, facts: ItemFacts, now: datetime) -> bool:
        """True when the rule matches (``mismatch`` is None), without explaining why not."""
        return self.admits(facts.chain.chain_id, facts.chain.address, facts.to_key,
                           facts.from_key, facts.amount, now)

    def admits(self, chain_id: str, fmt: Format, to_key: str, from_key: str, amount: Decimal,
               now: datetime) -> bool:
        """``matches`` on the facts' values (evaluation builds no ItemFacts)."""
        return (self.scope.admits(chain_id, fmt, to_key, from_key)
                and (self.amount is None or self.amount.matches(amount))
                and (self.time is None or self.time.matches(now)))

    def mismatch(self, facts: ItemFacts, now: datetime) -> str | None:
        """None when the rule matches, else the first condition that failed."""
        why = self.scope.mismatch(facts)
        if why is None and self.amount is not None:
            why = self.amount.mismatch(facts.amount)
        if why is None and self.time is not None:
            why = self.time.mismatch(now)
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
    """``rule.admits`` for a candidate that a chain's index picked, on that chain's format.

    The index only offers a rule for a chain in its chain scope, and a rule
    with ``to: {in: ...}`` only for a destination in that ``in``; what is left
    is ``to.not_in``, ``from``, the amount and the time, tested here without
    the method calls (and with the chain's format bound).
    """
    to_out = rule.scope.to.not_in if rule.scope.to is not None else None
    from_ = rule.scope.from_
    low = rule.amount.min if rule.amount is not None else None
    high = rule.amount.max if rule.amount is not None else None
    window = rule.time

    def check(to_key: str, from_key: str, amount: Decimal, now: datetime) -> bool:
        return ((high is None or amount <= high) and (low is None or amount >= low)
                and (to_out is None or not to_out.contains(fmt, to_key))
                and (from_ is None or from_.matches(fmt, from_key))
                and (window is None or window.matches(now)))

    return check


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
