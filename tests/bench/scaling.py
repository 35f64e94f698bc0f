"""Scaling runs of ``cosigner bench`` for docs/performance.md: never a pass/fail test.

    python -m tests.bench.scaling                                   # the tables of the doc
    python -m tests.bench.scaling --items 1000 10000 50000 --concurrency 8 --repeat 3
    python -m tests.bench.scaling --items 10000 --concurrency 1 4 8 16
    python -m tests.bench.scaling --items 10000 --postgres postgresql://postgres@127.0.0.1/postgres

Each (items, concurrency) pair runs ``cosigner bench --json`` ``--repeat`` times as a
child process, one after the other, and prints one Markdown row with the median of
each figure (and the spread of the ratio), so that one run disturbed by something
else on the machine does not make the table.  ``--json`` prints every run instead.
``--postgres ADMIN_URL``: each run journals to a new, empty database created on that
server (and dropped after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from tests.postgres import create_database, drop_database

FIELDS = ("items_per_second", "ceiling_items_per_second", "ratio", "p50_ms", "p99_ms",
          "peak_rss_mb", "journal_bytes_per_decision")


def run(items: int, concurrency: int, postgres: str | None) -> dict[str, Any]:
    """One ``cosigner bench --json`` in a child process; its JSON object."""
    if postgres is None:
        return _run(items, concurrency, None)
    name, url = create_database(postgres, prefix="bench")
    try:
        return _run(items, concurrency, url)
    finally:
        drop_database(postgres, name)


def _run(items: int, concurrency: int, database_url: str | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "cosigner", "bench", "--items", str(items),
            "--concurrency", str(concurrency), "--json"]
    if database_url:
        argv += ["--database-url", database_url]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=3600, env={**os.environ, "COSIGNER_LOG_LEVEL": "error"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"cosigner bench --items {items} --concurrency {concurrency} failed "
                         f"(exit {done.returncode}): {done.stderr.strip()[-500:]}")
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def _median(runs: list[dict[str, Any]], name: str) -> float | None:
    values = [r[name] for r in runs if r.get(name) is not None]
    return round(statistics.median(values), 3) if values else None


def row(items: int, concurrency: int, runs: list[dict[str, Any]]) -> str:
    """A Markdown row: medians, the ratio's range, CPU per item and the load seen."""
    ratios = [r["ratio"] for r in runs if r.get("ratio") is not None]
    spread = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "—"
    cpu = _median(runs, "daemon_cpu_seconds")
    per_item = f"{1000 * cpu / items:.3f}" if cpu is not None else "—"
    loads = [x for r in runs for x in r.get("load_average", [])]
    load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "—"
    cells = [f"{items:,}", str(concurrency), str(len(runs))]
    cells += [str(_median(runs, name)) for name in FIELDS[:2]]
    cells += [f"{_median(runs, 'ratio')} ({spread})", per_item]
    cells += [str(_median(runs, name)) for name in FIELDS[3:]]
    cells.append(load)
    return "| " + " | ".join(cells) + " |"


HEADER = ("| items | concurrency | runs | daemon items/s | ceiling items/s | ratio (range) "
          "| daemon CPU ms/item | p50 ms | p99 ms | peak RSS MB | journal bytes/decision "
          "| load |\n|" + " --- |" * 12)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scaling")
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", metavar="ADMIN_URL",
                        help="journal to a new database on this PostgreSQL server per run")
    parser.add_argument("--json", action="store_true", help="print every run's figures")
    args = parser.parse_args()
    if not args.json:
        print(HEADER, flush=True)
    for items in args.items:
        for concurrency in args.concurrency:
            runs = []
            for _ in range(args.repeat):
                figures = run(items, concurrency, args.postgres)
                runs.append(figures)
                if args.json:
                    print(json.dumps(figures), flush=True)
            if not args.json:
                print(row(items, concurrency, runs), flush=True)


if __name__ == "__main__":
    main()
