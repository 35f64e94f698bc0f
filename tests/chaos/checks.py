"""The invariants every chaos suite checks, from the provider's side and the journal's.

* **double posts**: ids the provider *accepted* (code 200) more than once;
* **outside policy**: approvals the provider accepted that the chaos policy does not allow
  (:func:`tests.chaos.conftest.allowed`, written independently of the engine);
* **unrecorded posts**: decisions the provider accepted with no journal record of that
  decision (an approval without a durable record);
* **limit ratio**: for each recorded approval, what the window held when it was decided
  (every approval recorded before it, in journal order, dated after its time minus the
  window: a clock moved back makes earlier approvals "future" ones, still counted),
  divided by the limit; the maximum must be <= 1.0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.chaos.conftest import LIMIT_WINDOW_S, MAX_AMOUNT, MAX_COUNT, allowed

_ACTIONS = {1: "approve", 2: "reject"}


@dataclass
class Verdict:
    accepted: int
    double_posts: int
    outside_policy: int
    unrecorded_posts: int
    max_limit_ratio: float

    def assert_clean(self) -> None:
        assert self.double_posts == 0, f"{self.double_posts} ids accepted twice"
        assert self.outside_policy == 0, f"{self.outside_policy} approvals outside policy"
        assert self.unrecorded_posts == 0, f"{self.unrecorded_posts} posts without a record"
        assert self.max_limit_ratio <= 1.0, f"limit ratio {self.max_limit_ratio}"


def verdict(received: Iterable[Mapping[str, Any]], rows: Iterable[Mapping[str, Any]]
            ) -> Verdict:
    """Check the sandbox's received decisions against the journal's rows."""
    rows = [r for r in rows if r.get("mode") == "enforce"]
    accepted = [d for d in received if d.get("code") == 200]
    per_id = Counter(int(d["id"]) for d in accepted)
    recorded = {(int(r["item_id"]), r["action"]) for r in rows}
    unrecorded = sum(1 for d in accepted
                     if (int(d["id"]), _ACTIONS.get(int(d["status"]), "?")) not in recorded)
    outside = sum(1 for d in accepted if int(d["status"]) == 1 and not allowed(d["body"]))
    return Verdict(accepted=len(accepted), double_posts=sum(1 for n in per_id.values() if n > 1),
                   outside_policy=outside, unrecorded_posts=unrecorded,
                   max_limit_ratio=limit_ratio(rows))


def limit_ratio(rows: Iterable[Mapping[str, Any]]) -> float:
    """The highest window usage / limit over the recorded approvals (see the module doc)."""
    window = timedelta(seconds=LIMIT_WINDOW_S)
    approvals = sorted(
        ((int(r["seq"]), datetime.fromisoformat(r["created_at"]), Decimal(r["amount_text"]))
         for r in rows if r["action"] == "approve" and r.get("chain_id") == "56"),
        key=lambda a: a[0])
    worst = 0.0
    for i, (_, at, _) in enumerate(approvals):
        inside = [amount for _, t, amount in approvals[: i + 1] if t > at - window]
        ratio = max(len(inside) / MAX_COUNT, float(sum(inside, Decimal(0)) / MAX_AMOUNT))
        worst = max(worst, ratio)
    return worst
