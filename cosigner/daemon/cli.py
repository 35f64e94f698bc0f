"""``cosigner run``, ``cosigner demo`` and ``cosigner bench``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cosigner.settings import load_settings

from .build import BuildOptions, build_daemon


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="the co-signer daemon")
    run.add_argument("--once", action="store_true",
                     help="one poll and one collection, then exit (0: all steps succeeded)")
    run.add_argument("--shadow", action="store_true",
                     help="decide and journal as 'shadow' but post nothing")
    run.set_defaults(func=_run)

    demo = subparsers.add_parser(
        "demo", help="the daemon against the embedded sandbox with a throwaway shard")
    demo.add_argument("--duration", type=float, default=None, metavar="S",
                      help="stop after S seconds (default: until Ctrl-C)")
    demo.add_argument("--policy", default=None, metavar="FILE",
                      help="policy to demonstrate (default: policies/treasury.yaml)")
    demo.set_defaults(func=_demo)

    bench = subparsers.add_parser(
        "bench", help="end-to-end throughput against the embedded sandbox")
    bench.add_argument("--items", type=int, default=10000, metavar="N",
                       help="pending items to decide and post (default 10000)")
    bench.add_argument("--concurrency", type=int, default=None, metavar="C",
                       help="posts in flight (default: COSIGNER_CONCURRENCY or 8)")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.add_argument("--database-url", default=None, metavar="URL",
                       help="an empty journal to use, e.g. postgresql://... (default: a "
                       "temporary SQLite file)")
    bench.set_defaults(func=_bench)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    daemon = build_daemon(settings, BuildOptions(once=args.once, shadow=args.shadow))
    if args.once:
        return asyncio.run(daemon.run_once())
    return asyncio.run(daemon.run())


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(duration=args.duration, policy=args.policy)


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    return run_bench(items=args.items, concurrency=args.concurrency, as_json=args.json,
                     database_url=args.database_url)
