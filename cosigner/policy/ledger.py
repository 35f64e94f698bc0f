"""Usage of the policy's limits: approvals indexed per (limit, bucket), in time order.

Each (limit, bucket) series keeps the approval times sorted with running
(prefix) sums of their amounts, so the usage over a rolling window is two
bisections and a subtraction, never a scan.  Old entries are dropped once they
are two windows behind the newest approval (one extra window of slack, so a
clock stepping back a little still sees them).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Protocol

from cosigner.models import PendingItem
from cosigner.policy import addresses
from cosigner.policy.addresses import Format
from cosigner.policy.model import CompiledPolicy, Limit

# Amounts that pass validation have at most 76 significant digits; 120 leaves
# room for summing billions of them.  Any rounding would be a bug: trap it.
MONEY = Context(prec=120, traps=[InvalidOperation, Overflow, Inexact])
ZERO = Decimal(0)
_COMPACT_AFTER = 1024


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval that counts toward limits (from the journal, or just decided)."""

    chain_id: str
    from_address: str
    to_address: str
    amount: Decimal
    at: datetime

    @classmethod
    def from_item(cls, item: PendingItem, at: datetime) -> Approval:
        """The approval of a (valid) pending item at *at*; ValueError for a malformed item."""
        chain_id, source, dest, amount = (item.chain_id, item.from_address, item.to_address,
                                          item.amount)
        if chain_id is None or source is None or dest is None or amount is None:
            raise ValueError(f"{item.label()} is malformed and cannot count as an approval")
        return cls(chain_id, source, dest, amount, at)


class _Series:
    """Times (sorted) and prefix sums of amounts of one (limit, bucket)."""

    __slots__ = ("cum", "times")

    def __init__(self) -> None:
        self.times: list[datetime] = []
        self.cum: list[Decimal] = []

    def insert(self, at: datetime, amount: Decimal) -> None:
        """Count an approval older than the newest one (the in-order case is inline in
        :meth:`Ledger.add`): shift the sums after it."""
        pos = bisect_right(self.times, at)
        self.times.insert(pos, at)
        before = self.cum[pos - 1] if pos else ZERO
        self.cum[pos:] = [MONEY.add(before, amount),
                          *(MONEY.add(c, amount) for c in self.cum[pos:])]

    def usage(self, since: datetime) -> tuple[Decimal, int]:
        """Amount and count of entries strictly after *since* (future ones included)."""
        lo = bisect_right(self.times, since)
        count = len(self.times) - lo
        if count == 0:
            return ZERO, 0
        return MONEY.subtract(self.cum[-1], self.cum[lo - 1] if lo else ZERO), count

    def compact(self, before: datetime) -> None:
        """Drop entries at or before *before* once there are many of them."""
        cut = bisect_right(self.times, before)
        if cut < _COMPACT_AFTER or cut * 2 < len(self.times):
            return
        dropped = self.cum[cut - 1]
        self.times = self.times[cut:]
        self.cum = [MONEY.subtract(c, dropped) for c in self.cum[cut:]]


class _Plan:
    """How one limit counts approvals: its scope test, its bucket key and its series."""

    __slots__ = ("by_bucket", "check_scope", "limit", "scope", "window2")

    def __init__(self, limit: Limit, by_bucket: dict[str, _Series]) -> None:
        self.limit = limit
        self.scope = limit.scope
        # the chain part of the scope is settled by the per-chain plans
        self.check_scope = limit.scope.to is not None or limit.scope.from_ is not None
        self.window2 = 2 * limit.window
        self.by_bucket = by_bucket


class Ledger:
    """In-memory usage of approvals for the limits of one policy."""

    def __init__(self, policy: CompiledPolicy, approvals: Iterable[Approval] = ()) -> None:
        self.policy = policy
        self._limits: dict[str, Limit] = {lim.name: lim for lim in policy.limits}
        # limit name -> bucket -> series
        self._series: dict[str, dict[str, _Series]] = {name: {} for name in self._limits}
        plans = {lim.name: _Plan(lim, self._series[lim.name]) for lim in policy.limits}
        # Per known chain: its address format and the plans of only the limits
        # whose chain scope admits it (the policy's index).  An approval on a
        # chain the policy no longer knows compares exactly, and
        # only limits without a chain scope can count it.
        self._by_chain: dict[str, tuple[Format, tuple[_Plan, ...]]] = {
            chain_id: (policy.chains[chain_id].address,
                       tuple(plans[lim.name] for lim in index.limits))
            for chain_id, index in policy.index.items()}
        self._unknown_chain: tuple[Format, tuple[_Plan, ...]] = (
            "other", tuple(plans[lim.name] for lim in policy.limits if lim.scope.chains is None))
        for approval in sorted(approvals, key=lambda a: a.at):
            self.add(approval)

    def add(self, approval: Approval) -> None:
        """Count *approval* in every limit whose scope it is in."""
        chain_id = approval.chain_id
        fmt, plans = self._by_chain.get(chain_id, self._unknown_chain)
        if not plans:
            return
        to_key = addresses.key(approval.to_address, fmt)
        from_key = addresses.key(approval.from_address, fmt)
        at, amount = approval.at, approval.amount
        for plan in plans:
            if plan.check_scope and not plan.scope.holds(chain_id, fmt, to_key, from_key):
                continue
            bucket = plan.limit.bucket(chain_id, to_key, from_key)
            series = plan.by_bucket.get(bucket)
            if series is None:
                series = plan.by_bucket[bucket] = _Series()
            times = series.times
            if times and at < times[-1]:
                series.insert(at, amount)
            else:  # in order, the usual case: _Series.add without the call
                cum = series.cum
                times.append(at)
                cum.append(MONEY.add(cum[-1] if cum else ZERO, amount))
            if len(times) >= _COMPACT_AFTER:  # compact() does nothing below that
                series.compact(at - plan.window2)

    def usage(self, limit_name: str, bucket: str, now: datetime) -> tuple[Decimal, int]:
        """Amount and count approved in *bucket* of the limit during its window before *now*."""
        limit = self._limits[limit_name]
        series = self._series[limit_name].get(bucket)
        if series is None:
            return ZERO, 0
        return series.usage(now - limit.window)

    def ratios(self, now: datetime) -> dict[str, float]:
        """Per limit, the highest used/max ratio over its buckets (for a gauge)."""
        out = dict.fromkeys(self._limits, 0.0)
        for name, series in ((n, s) for n, buckets in self._series.items()
                             for s in buckets.values()):
            limit = self._limits[name]
            amount, count = series.usage(now - limit.window)
            ratio = 0.0
            if limit.max_amount is not None:
                ratio = float(amount) / float(limit.max_amount)
            if limit.max_count is not None:
                ratio = max(ratio, count / limit.max_count)
            out[name] = max(out[name], ratio)
        return out


class Usage(Protocol):
    """What a limit check reads: the usage of one bucket of one limit over its window."""

    def usage(self, limit_name: str, bucket: str, now: datetime) -> tuple[Decimal, int]:
        """Amount and count approved in *bucket* of the limit during its window before *now*."""


class Stacked:
    """Two ledgers counted together: *base* (e.g. the journal's approvals, kept and grown
    from call to call) and *top* (a batch being checked, thrown away after), so that
    checking a batch never changes *base*."""

    __slots__ = ("base", "top")

    def __init__(self, base: Ledger, top: Ledger) -> None:
        self.base = base
        self.top = top

    def usage(self, limit_name: str, bucket: str, now: datetime) -> tuple[Decimal, int]:
        """The sum of both ledgers' usage."""
        amount, count = self.base.usage(limit_name, bucket, now)
        more, extra = self.top.usage(limit_name, bucket, now)
        return MONEY.add(amount, more), count + extra
