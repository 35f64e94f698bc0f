"""Find rules that can never match because an earlier rule matches a superset of them.

``covers(a, b)`` proves that every item ``b`` matches is matched by ``a``; it
is conservative (when in doubt it says no), so a reported shadow is always real.
Candidate pairs are narrowed with small indexes (by chain, by list, by literal
destination) so a policy of a thousand rules is checked in well under a second.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from cosigner.policy.addresses import FORMATS, Format
from cosigner.policy.model import AddressCond, AddressList, AmountRange, Rule, TimeWindow

_ALL = object()


def _effective(cond: AddressCond, fmt: Format) -> frozenset[str]:
    """The keys of *fmt* a condition with ``in`` accepts (``in`` minus ``not_in``)."""
    assert cond.in_ is not None
    keys = cond.in_.keys(fmt)
    return keys - cond.not_in.keys(fmt) if cond.not_in is not None else keys


def _address_covers(a: AddressCond | None, b: AddressCond | None) -> bool:
    if a is None:
        return True
    for fmt in FORMATS:
        b_in = _effective(b, fmt) if b is not None and b.in_ is not None else None
        if a.in_ is not None and (b_in is None or not b_in <= a.in_.keys(fmt)):
            return False
        if a.not_in is not None:
            a_out = a.not_in.keys(fmt)
            if b_in is not None:
                if not b_in.isdisjoint(a_out):
                    return False
            elif a_out and (b is None or b.not_in is None or not a_out <= b.not_in.keys(fmt)):
                return False
    return True


def _amount_covers(a: AmountRange | None, b: AmountRange | None) -> bool:
    if a is None:
        return True
    low_ok = a.min is None or a.min <= 0 or (b is not None and b.min is not None
                                            and a.min <= b.min)
    high_ok = a.max is None or (b is not None and b.max is not None and b.max <= a.max)
    return low_ok and high_ok


def _minutes(t: TimeWindow) -> frozenset[int]:
    return frozenset(m for m in range(24 * 60) if t.contains_minutes(m))


def _time_covers(a: TimeWindow | None, b: TimeWindow | None) -> bool:
    if a is None:
        return True
    if b is None or a.tz_name != b.tz_name:
        return False
    if a.days is not None and (b.days is None or not b.days <= a.days):
        return False
    return _minutes(b) <= _minutes(a)


def covers(a: Rule, b: Rule) -> bool:
    """True when every item rule *b* matches is also matched by rule *a*."""
    if a.scope.chains is not None and (b.scope.chains is None
                                       or not b.scope.chains <= a.scope.chains):
        return False
    return (_amount_covers(a.amount, b.amount) and _time_covers(a.time, b.time)
            and _address_covers(a.scope.to, b.scope.to)
            and _address_covers(a.scope.from_, b.scope.from_))


def _representative(cond: AddressCond) -> tuple[Format, str] | None:
    for fmt in FORMATS:
        for key in _effective(cond, fmt):
            return fmt, key
    return None


class _Seen:
    """The rules seen so far, indexed to narrow the candidates that may hide a later rule."""

    def __init__(self) -> None:
        self.generic: dict[object, list[Rule]] = defaultdict(list)  # no to.in, by chain
        self.by_list: dict[str, tuple[AddressList, list[Rule]]] = {}  # to.in names a list
        self.by_literal: dict[tuple[Format, str], list[Rule]] = defaultdict(list)

    def candidates(self, rule: Rule, rep: tuple[Format, str] | None) -> list[Rule]:
        """Earlier rules that may cover *rule* (whose ``to: in`` has representative *rep*)."""
        chain = next(iter(rule.scope.chains), None) if rule.scope.chains else None
        found = list(self.generic[_ALL]) + (list(self.generic[chain])
                                            if chain is not None else [])
        if rep is not None:
            found += self.by_literal.get(rep, ())
            for named, users in self.by_list.values():
                if rep in named:
                    found += users
        return sorted({id(c): c for c in found}.values(), key=lambda c: c.index)

    def add(self, rule: Rule) -> None:
        """Index *rule* for the ones after it."""
        to = rule.scope.to
        if to is None or to.in_ is None:
            for c in rule.scope.chains or (_ALL,):
                self.generic[c].append(rule)
            return
        for member in to.in_.members:
            if member.name != "<literal>":
                self.by_list.setdefault(member.name, (member, []))[1].append(rule)
                continue
            for fmt in FORMATS:
                for key in member.by_format[fmt]:
                    self.by_literal[(fmt, key)].append(rule)


def find_shadowed(rules: list[Rule]) -> Iterator[tuple[Rule, Rule]]:
    """Yield ``(earlier, later)`` for each rule hidden behind an earlier broader one.

    A rule whose ``to: in`` entries are all excluded by its own ``not_in`` can
    never match either; it is yielded as ``(rule, rule)``.
    """
    seen = _Seen()
    for rule in rules:
        to = rule.scope.to
        rep = None
        if to is not None and to.in_ is not None:
            rep = _representative(to)
            if rep is None:
                yield rule, rule
                continue
        for earlier in seen.candidates(rule, rep):
            if covers(earlier, rule):
                yield earlier, rule
                break
        seen.add(rule)
