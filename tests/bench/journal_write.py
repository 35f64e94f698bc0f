"""CPU of the SQLite journal's write path, per decision and per outcome: never a pass/fail test.

    python -m tests.bench.journal_write [--runs 5] [--batches 20] [--batch 500] [--group 128]

Each run records ``--batches`` batches of ``--batch`` enforced decisions (90% approves,
10% rejects, on the chains of ``cosigner bench``'s policy, whose rolling per-chain limit
the journal re-checks with a :class:`PolicyLimitGuard` kept from batch to batch, as the
pipeline keeps it) into a fresh :class:`SqliteJournal`, then one ``posted`` outcome per
decision in groups of ``--group``.  It prints the CPU time (``time.process_time``) of the
``record_decisions`` and ``record_outcomes`` calls, in µs per decision and per outcome,
and the median over the runs.  The items are built before the clock starts.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time
from pathlib import Path

from cosigner.daemon.guard import PolicyLimitGuard
from cosigner.models import Action, Mode, RecordState
from cosigner.policy.loader import load_policy
from cosigner.sandbox.generate import eip55_address
from cosigner.store.base import NewDecision, NewOutcome
from cosigner.store.sqlite import SqliteJournal
from cosigner.tools.bench import BENCH_POLICY

_CHAINS = ("56", "1")


def make_decisions(count: int, seed: int, policy_sha256: str) -> list[NewDecision]:
    """``count`` enforced decisions: 90% approves (payouts), 10% rejects (reject-huge)."""
    rng = random.Random(seed)
    out = []
    for item_id in range(1, count + 1):
        approve = rng.random() < 0.9
        amount = f"{rng.randint(1, 19999)}.{rng.randint(0, 99):02d}" if approve else "25000"
        out.append(NewDecision(
            item_id=item_id,
            content_hash=hashlib.sha256(str(item_id).encode()).hexdigest(),
            chain_id=rng.choice(_CHAINS),
            from_address=eip55_address(rng.randbytes(20)),
            to_address=eip55_address(rng.randbytes(20)),
            amount_text=amount,
            action=Action.APPROVE if approve else Action.REJECT,
            rule="payouts" if approve else "reject-huge",
            reasons=("rule:payouts",) if approve else ("rule:reject-huge",),
            policy_name="bench", policy_sha256=policy_sha256, mode=Mode.ENFORCE))
    return out


def run_once(work: Path, decisions: list[NewDecision], batch: int,
             group: int, policy_path: Path) -> tuple[float, float]:
    """µs of CPU per decision and per outcome in a fresh journal."""
    policy = load_policy(policy_path)
    guard = PolicyLimitGuard(policy)
    path = work / "journal.db"
    SqliteJournal(path, writer=True).init()
    journal = SqliteJournal(path, writer=True)
    journal.open()
    try:
        records = []
        cpu = 0.0
        for start in range(0, len(decisions), batch):
            chunk = decisions[start:start + batch]
            t0 = time.process_time()
            records.extend(journal.record_decisions(chunk, guard))
            cpu += time.process_time() - t0
        per_decision = 1e6 * cpu / len(decisions)
        outcomes = [NewOutcome(r.seq, r.item_id, RecordState.POSTED, 0, "success")
                    for r in records]
        cpu = 0.0
        for start in range(0, len(outcomes), group):
            chunk = outcomes[start:start + group]
            t0 = time.process_time()
            journal.record_outcomes(chunk)
            cpu += time.process_time() - t0
        per_outcome = 1e6 * cpu / len(outcomes)
    finally:
        journal.close()
    return per_decision, per_outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--group", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cosigner-journal-bench-") as tmp:
        policy_path = Path(tmp) / "bench.yaml"
        policy_path.write_text(BENCH_POLICY.format(sanctioned=eip55_address(b"\x01" * 20)),
                               encoding="utf-8")
        sha = load_policy(policy_path).sha256
        decisions = make_decisions(args.batches * args.batch, 7, sha)
        per_d, per_o = [], []
        for run in range(args.runs):
            work = Path(tmp) / f"run{run}"
            work.mkdir()
            d, o = run_once(work, decisions, args.batch, args.group, policy_path)
            per_d.append(d)
            per_o.append(o)
            print(f"run {run + 1}: {d:7.1f} µs/decision  {o:7.1f} µs/outcome", flush=True)
    print(f"median: {statistics.median(per_d):7.1f} µs/decision  "
          f"{statistics.median(per_o):7.1f} µs/outcome")


if __name__ == "__main__":
    main()
