"""``cosigner run``, ``cosigner demo`` and ``cosigner bench``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cosigner.daemon.build import BuildOptions, DaemonSpec, build_daemon
from cosigner.settings import Settings, load_settings


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
    bench.set_defaults(func=_bench)


def daemon_spec(settings: Settings) -> DaemonSpec:
    """The daemon's plain configuration from the settings (SettingsError naming what is
    missing)."""
    settings.require("api_base_url", "merchant_no", "api_key", "api_secret", "pfx_path",
                     "policy_path", why="to run the daemon")
    assert settings.api_secret is not None  # checked by require
    assert settings.pfx_path is not None
    assert settings.policy_path is not None
    host, port = settings.http_host_port
    return DaemonSpec(
        api_base_url=settings.api_base_url or "", merchant_no=settings.merchant_no or "",
        api_key=settings.api_key or "", api_secret=settings.api_secret.get_secret_value(),
        pfx_path=settings.pfx_path, pfx_password=settings.shard_password(),
        policy_path=settings.policy_path,
        database_url=settings.database_url.get_secret_value(),
        journal_witness=settings.journal_witness, lang=settings.lang,
        sign_sort=settings.sign_sort, sign_scheme=settings.sign_scheme,
        request_timeout=settings.request_timeout, page_size=settings.page_size,
        max_pending=settings.max_pending, concurrency=settings.concurrency,
        poll_interval=settings.poll_interval, collect_interval=settings.collect_interval,
        collect_is_main=settings.collect_is_main_values, http_host=host, http_port=port,
        pause_file=settings.pause_file, mode=settings.mode, log_format=settings.log_format,
        log_level=settings.log_level, policy_signers=settings.policy_signers,
        policy_quorum=settings.policy_quorum, policy_loosen_delay=settings.loosen_delay)


def _run(args: argparse.Namespace) -> int:
    daemon = build_daemon(daemon_spec(load_settings()), BuildOptions(shadow=args.shadow))
    if args.once:
        return asyncio.run(daemon.run_once())
    return asyncio.run(daemon.run())


def _demo(args: argparse.Namespace) -> int:
    from cosigner.tools.demo import run_demo
    return run_demo(duration=args.duration, policy=args.policy)


def _bench(args: argparse.Namespace) -> int:
    from cosigner.tools.bench import run_bench
    concurrency = args.concurrency or load_settings().concurrency
    return run_bench(items=args.items, concurrency=concurrency, as_json=args.json)
