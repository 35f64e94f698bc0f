"""``cosigner policy check|test|explain`` (DESIGN section 5).

``explain`` and ``test`` run :func:`cosigner.decide.decide`, the daemon's own decision,
and print its trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cosigner.cli.policy_tests import load_history, run_test_file
from cosigner.decide import decide
from cosigner.errors import PolicyError
from cosigner.models import Mode, PendingItem, loads_checked
from cosigner.policy.ledger import Ledger
from cosigner.policy.loader import load_policy

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``policy`` command and its subcommands."""
    policy = subparsers.add_parser("policy", help="validate, test and explain approval policies")
    sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)

    check = sub.add_parser("check", help="validate and lint a policy file")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check)

    test = sub.add_parser("test", help="run policy test files (*.test.yaml)")
    test.add_argument("files", metavar="FILE", nargs="+")
    test.add_argument("--now", help="ISO 8601 time for cases that set none (default: now)")
    test.set_defaults(func=cmd_test)

    exp = sub.add_parser("explain", help="show which rule and limits decide an item, and why")
    exp.add_argument("file", metavar="FILE")
    exp.add_argument("item", metavar="ITEM_JSON", help="the pending item as JSON, or a JSON file")
    exp.add_argument("--history", metavar="FILE",
                     help="YAML/JSON list of approvals as in test files: "
                          "{chainId, amount, ago, to?, from?}")
    exp.add_argument("--now", help="ISO 8601 time to decide at (default: now)")
    exp.add_argument("--json", action="store_true",
                     help="print one JSON object: action, rule, reasons, trace, limits, ...")
    exp.set_defaults(func=cmd_explain)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        now = datetime.fromisoformat(text)
    except ValueError:
        raise PolicyError([f"--now: not an ISO 8601 time: {text!r}"]) from None
    if now.tzinfo is None:
        raise PolicyError([f"--now: {text!r} needs a UTC offset"])
    return now


def cmd_check(args: argparse.Namespace) -> int:
    """Load the policy; print a summary (exit 0) or every problem (exit 2)."""
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        for problem in exc.problems:
            _err(problem)
        _err(f"{args.file}: {len(exc.problems)} problem(s), policy refused")
        return EXIT_CONFIG
    print(f"{args.file}: ok: {policy.summary()}")
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    """Run test files; exit 1 when a case fails, 2 when a file is broken."""
    now = _now(args.now)
    passed = failed = 0
    broken = False
    for name in args.files:
        try:
            results = run_test_file(name, now)
        except PolicyError as exc:
            broken = True
            for problem in exc.problems:
                _err(problem)
            continue
        for result in results:
            status = "PASS" if result.passed else "FAIL"
            print(f"{status} {result.file}:{result.line}: {result.name}"
                  + (f": {result.detail}" if result.detail else ""))
            if not result.passed:  # the decision's own trace says why
                for line in result.trace:
                    print(f"    {line}")
            passed += result.passed
            failed += not result.passed
    print(f"{passed} passed, {failed} failed")
    if broken:
        return EXIT_CONFIG
    return EXIT_FAILED if failed else EXIT_OK


def _read_json(text: str, what: str) -> Any:
    source = text
    if not text.lstrip().startswith(("{", "[")):
        try:
            source = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError([f"{what}: not JSON and not a readable file: {text}"]) from exc
    try:
        return loads_checked(source)
    except json.JSONDecodeError as exc:
        raise PolicyError([f"{what}:{exc.lineno}: invalid JSON: {exc.msg}"]) from exc


def cmd_explain(args: argparse.Namespace) -> int:
    """Print every rule tried, every limit and the final decision for one item."""
    policy = load_policy(args.file)
    raw = _read_json(args.item, "ITEM_JSON")
    if not isinstance(raw, dict):
        raise PolicyError(["ITEM_JSON: the item must be a JSON object"])
    now = _now(args.now)
    approvals = load_history(args.history, raw, now) if args.history is not None else []
    # The daemon's own decision, for an id the journal has never seen.
    outcome = decide(PendingItem(raw), None, policy, Ledger(policy, approvals), now,
                     mode=Mode.ENFORCE, explain=True)
    if args.json:
        print(json.dumps(outcome.as_json(), ensure_ascii=False))
    else:
        print("\n".join(outcome.trace))
    return EXIT_OK
