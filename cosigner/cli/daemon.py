"""``cosigner run``, ``demo``, ``bench`` and the kill switch: ``pause``, ``resume``, ``status``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from typing import Any, TextIO

from cosigner.cli import long_lived, tune_collector
from cosigner.daemon.build import BuildOptions, DaemonSpec, build_daemon
from cosigner.daemon.callbacks import build_callbacks
from cosigner.daemon.control import LiveView, PauseState, pause, probe, read_pause, resume
from cosigner.daemon.governed import pending_from_metrics, pending_line
from cosigner.errors import CosignerError
from cosigner.settings import Settings, load_settings
from cosigner.store import open_journal, redact_url


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

    pause_cmd = subparsers.add_parser(
        "pause", help="the kill switch: hold every item and post nothing until `resume`")
    pause_cmd.add_argument("--reason", default="", metavar="TEXT",
                           help="why (shown by `cosigner status`)")
    pause_cmd.set_defaults(func=_pause)
    resume_cmd = subparsers.add_parser("resume", help="remove the pause file: decide and "
                                       "post again from the next poll")
    resume_cmd.set_defaults(func=_resume)
    status = subparsers.add_parser(
        "status", help="paused?, mode, policy, journal and what the running daemon reports")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_status)


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
        pause_file=settings.pause_path(), journal_witness=settings.journal_witness,
        ca_bundle=settings.ca_bundle, leader_retry=settings.leader_retry, lang=settings.lang,
        sign_sort=settings.sign_sort, sign_scheme=settings.sign_scheme,
        request_timeout=settings.request_timeout, page_size=settings.page_size,
        max_pending=settings.max_pending, concurrency=settings.concurrency,
        poll_interval=settings.poll_interval, collect_interval=settings.collect_interval,
        collect_is_main=settings.collect_is_main_values, http_host=host, http_port=port,
        policy_signers=settings.policy_signers, policy_quorum=settings.policy_quorum,
        policy_loosen_delay=settings.loosen_delay,
        mode=settings.mode, log_format=settings.log_format, log_level=settings.log_level,
        # the forward secret, and the forward URL (its userinfo or query may hold one)
        extra_secrets=tuple(
            ([settings.callback_forward_secret.get_secret_value()]
             if settings.callback_forward_secret is not None else [])
            + ([settings.callback_forward_url] if settings.callback_forward_url else [])),
        callbacks=(functools.partial(build_callbacks, settings)
                   if settings.callback_addr is not None else None))


def _run(args: argparse.Namespace) -> int:
    tune_collector(args)
    with long_lived(freeze=getattr(args, "program", False)):
        daemon = build_daemon(daemon_spec(load_settings()),
                              BuildOptions(once=args.once, shadow=args.shadow))
    if args.once:
        return asyncio.run(daemon.run_once())
    return asyncio.run(daemon.run())


def _demo(args: argparse.Namespace) -> int:
    from cosigner.tools.demo import run_demo
    return run_demo(duration=args.duration, policy=args.policy)


def _bench(args: argparse.Namespace) -> int:
    from cosigner.tools.bench import run_bench
    tune_collector(args)  # as `cosigner run` does: the bench measures the daemon
    concurrency = args.concurrency or load_settings().concurrency
    return run_bench(items=args.items, concurrency=concurrency, as_json=args.json,
                     database_url=args.database_url)


def _pause(args: argparse.Namespace) -> int:
    path = load_settings().pause_path()
    was = read_pause(path).paused
    state = pause(path, args.reason)
    verb = "still paused (reason updated)" if was else "paused"
    print(f"{verb}: {path}" + (f": {state.reason}" if state.reason else ""))
    print("every item is held and nothing is posted from the next poll; "
          "`cosigner resume` ends it")
    return 0


def _resume(_args: argparse.Namespace) -> int:
    path = load_settings().pause_path()
    if resume(path):
        print(f"resumed: removed {path}; the next poll decides and posts again")
    else:
        print(f"not paused: {path} does not exist")
    return 0


def _status(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    settings = load_settings()
    report = status_report(settings)
    stream = out or sys.stdout
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True), file=stream)
    else:
        for line in status_lines(report):
            print(line, file=stream)
    return 0


def status_report(settings: Settings) -> dict[str, Any]:
    """What ``cosigner status`` shows: the pause file, the settings, the journal and the
    running daemon as its own ``/metrics`` and ``/readyz`` describe it."""
    pause_state = read_pause(settings.pause_path())
    host, port = settings.http_host_port
    live = probe(host, port)
    url = settings.database_url.get_secret_value()
    return {
        "paused": pause_state.paused,
        "pause": _pause_dict(pause_state),
        "mode": settings.mode,
        "policy_path": str(settings.policy_path) if settings.policy_path else None,
        "journal": _journal_report(
            url, str(settings.journal_witness) if settings.journal_witness else None),
        "daemon": _live_report(live),
    }


def _pause_dict(state: PauseState) -> dict[str, Any]:
    return {"file": str(state.path), "reason": state.reason, "paused_at": state.paused_at,
            "by": state.by}


def _journal_report(url: str, witness: str | None) -> dict[str, Any]:
    report: dict[str, Any] = {"url": redact_url(url)}
    try:
        journal = open_journal(url, witness=witness)  # a reader: works beside the daemon
    except CosignerError as exc:
        report["error"] = str(exc)
        return report
    try:
        counts = journal.count_by_state()
        report["records"] = sum(counts.values())
        report["by_state"] = dict(sorted(counts.items()))
        report["head_sequence"] = journal.head().seq
    except CosignerError as exc:
        report["error"] = str(exc)
    finally:
        journal.close()
    return report


def _live_report(live: LiveView) -> dict[str, Any]:
    report: dict[str, Any] = {"url": live.url, "reachable": live.reachable}
    if not live.reachable:
        report["error"] = live.error
        return report
    mode = live.labels_of("cosigner_mode")
    policy = live.labels_of("cosigner_policy_info")
    last_poll = live.value("cosigner_last_poll_success_timestamp_seconds")
    head = live.value("cosigner_journal_head_sequence")
    report.update({
        "ready": live.ready,
        "mode": mode.get("mode") if mode else None,
        "paused": live.value("cosigner_paused") == 1,
        "policy": {"name": policy.get("name"), "sha256": policy.get("sha256")}
        if policy else None,
        "last_poll_seconds_ago": round(time.time() - last_poll, 1) if last_poll else None,
        "pending_items": live.value("cosigner_pending_items"),
        "policy_pending": pending_from_metrics(
            live.labels_of("cosigner_policy_pending_info"),
            live.value("cosigner_policy_activation_timestamp_seconds")),
        "decided_unposted_items": live.value("cosigner_decided_unposted_items"),
        "journal_head_sequence": int(head) if head is not None else None,
    })
    return report


def status_lines(report: dict[str, Any]) -> list[str]:
    """``status_report`` as lines for a person."""
    lines = [f"paused:  {_pause_line(report)}", f"mode:    {report['mode']} (settings)",
             f"policy:  {report['policy_path'] or '(COSIGNER_POLICY_PATH not set)'}",
             _journal_line(report["journal"])]
    return lines + _daemon_lines(report["daemon"])


def _pause_line(report: dict[str, Any]) -> str:
    pause_info = report["pause"]
    if not report["paused"]:
        return f"no (kill switch: `cosigner pause` creates {pause_info['file']})"
    detail = ", ".join(f"{k} {pause_info[k]}" for k in ("paused_at", "by") if pause_info[k])
    return (f"PAUSED ({pause_info['reason'] or 'no reason given'}"
            + (f"; {detail}" if detail else "") + f") - {pause_info['file']}")


def _journal_line(journal: dict[str, Any]) -> str:
    if "error" in journal:
        return f"journal: {journal['url']}: {journal['error']}"
    states = ", ".join(f"{k} {v}" for k, v in journal["by_state"].items()) or "empty"
    return (f"journal: {journal['url']}: {journal['records']} records ({states}), "
            f"head sequence {journal['head_sequence']}")


def _daemon_lines(daemon: dict[str, Any]) -> list[str]:
    if not daemon["reachable"]:
        return [f"daemon:  not reachable at {daemon['url']} ({daemon['error']})"]
    policy = daemon["policy"] or {}
    ready = {True: "ready", False: "NOT READY", None: "readiness unknown"}[daemon["ready"]]
    lines = [f"daemon:  {daemon['url']}: {ready}, mode {daemon['mode']}, "
             f"{'PAUSED' if daemon['paused'] else 'not paused'}"]
    if policy:
        lines.append(f"         policy {policy['name']} (sha256 {str(policy['sha256'])[:12]})")
    lines.append(f"         {pending_line(daemon.get('policy_pending'))}")
    ago = daemon["last_poll_seconds_ago"]
    lines.append("         last successful poll "
                 + (f"{ago:.0f} s ago" if ago is not None else "never")
                 + (f", {daemon['pending_items']:.0f} pending"
                    if daemon["pending_items"] is not None else ""))
    if daemon["decided_unposted_items"]:
        lines.append(f"         {daemon['decided_unposted_items']:.0f} decided items not known "
                     "to be posted (see `cosigner audit list`)")
    if daemon["journal_head_sequence"] is not None:
        lines.append(f"         journal head sequence {daemon['journal_head_sequence']}")
    return lines
