"""``cosigner policy manifest|digest|sign|backtest`` and the signature part of ``policy check``
(DESIGN sections 5 and 11).

Signers and quorum come from ``COSIGNER_POLICY_SIGNERS`` / ``COSIGNER_POLICY_QUORUM``
(or ``--signers`` / ``--quorum``); the journal from ``--database-url``, else
``COSIGNER_DATABASE_URL``.  Backtest opens the journal read-only and never creates it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cosigner.errors import ConfigError
from cosigner.policy.backtest import backtest, render
from cosigner.policy.bundle import digest, read_manifest, signature_dir, signature_files
from cosigner.policy.ledger import Approval
from cosigner.policy.loader import load_policy
from cosigner.policy.model import CompiledPolicy
from cosigner.policy.signatures import (
    NAMESPACE,
    SignatureReport,
    check_signatures,
    load_allowed_signers,
)
from cosigner.settings import load_settings
from cosigner.store import Journal, open_journal
from cosigner.store.audit import parse_since

EXIT_OK, EXIT_CHANGED, EXIT_CONFIG = 0, 1, 2


def register(sub: Any) -> None:
    """Add the governance subcommands to ``cosigner policy``."""
    manifest = sub.add_parser("manifest", help="print the bundle's canonical manifest "
                              "(exactly the bytes approvers sign)")
    manifest.add_argument("file", metavar="FILE")
    manifest.set_defaults(func=cmd_manifest)

    digest = sub.add_parser("digest", help="print the bundle's sha256")
    digest.add_argument("file", metavar="FILE")
    digest.set_defaults(func=cmd_digest)

    sign = sub.add_parser("sign", help="sign the bundle's manifest with an SSH key "
                          "(wraps ssh-keygen -Y sign)")
    sign.add_argument("file", metavar="FILE")
    sign.add_argument("--key", required=True, metavar="KEY", help="the SSH private key file")
    sign.add_argument("--name", required=True, metavar="NAME",
                      help="the signature's file name: FILE.signatures/NAME.sig")
    sign.set_defaults(func=cmd_sign)

    back = sub.add_parser("backtest", help="replay the journal's items through a candidate "
                          "policy; exit 1 when any action would change")
    back.add_argument("candidate", metavar="CANDIDATE")
    back.add_argument("--since", default="30d",
                      help="a duration back from now (30d, 24h) or an ISO 8601 time")
    back.add_argument("--json", action="store_true", help="one JSON object")
    back.add_argument("--database-url", default=None,
                      help="the journal (default: $COSIGNER_DATABASE_URL)")
    back.set_defaults(func=cmd_backtest)


def add_signature_options(check: argparse.ArgumentParser) -> None:
    """``policy check --signers FILE --quorum M`` (default: the settings)."""
    check.add_argument("--signers", metavar="FILE",
                       help="allowed_signers file (default: $COSIGNER_POLICY_SIGNERS)")
    check.add_argument("--quorum", metavar="M", type=int,
                       help="signatures required (default: $COSIGNER_POLICY_QUORUM)")


def _manifest(path: Path) -> tuple[CompiledPolicy, str]:
    policy = load_policy(path)
    return policy, read_manifest(path, policy.sources, policy.sha256)


def cmd_manifest(args: argparse.Namespace) -> int:
    """Print the manifest, byte for byte."""
    _, text = _manifest(Path(args.file))
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.flush()
    return EXIT_OK


def cmd_digest(args: argparse.Namespace) -> int:
    """Print the bundle digest."""
    policy, _ = _manifest(Path(args.file))
    print(policy.sha256)
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    """``ssh-keygen -Y sign -n cosigner-policy`` over the manifest, into the signatures dir."""
    path = Path(args.file)
    _, text = _manifest(path)
    if "/" in args.name or args.name.startswith("."):
        raise ConfigError(f"--name {args.name!r}: a plain file name, e.g. alice")
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise ConfigError("ssh-keygen not found (Debian: apt-get install openssh-client)")
    done = subprocess.run([keygen, "-Y", "sign", "-f", args.key, "-n", NAMESPACE],
                          input=text.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        print(done.stderr.decode("utf-8", "replace").strip(), file=sys.stderr)
        return EXIT_CHANGED
    directory = signature_dir(path)
    directory.mkdir(exist_ok=True)
    target = directory / f"{args.name}.sig"
    target.write_bytes(done.stdout)
    print(f"{target}: signed {path} (sha256 {digest(text)})")
    return EXIT_OK


def signature_status(path: Path, policy: CompiledPolicy, signers_file: str | None,
                     quorum: int | None) -> tuple[int, list[str]]:
    """``policy check``'s signature lines and exit code (2 when the quorum is not met)."""
    if signers_file is None or quorum is None:
        try:
            settings = load_settings()
        except ConfigError:
            settings = None
        if settings is not None:
            signers_file = signers_file or (str(settings.policy_signers)
                                            if settings.policy_signers else None)
            quorum = quorum if quorum is not None else settings.policy_quorum
    files = signature_files(path)
    if signers_file is None:
        if not files:
            return EXIT_OK, []
        return EXIT_OK, [f"{path}: signatures not checked (no COSIGNER_POLICY_SIGNERS): "
                         f"{len(files)} file(s) in {signature_dir(path)}"]
    signers = load_allowed_signers(Path(signers_file))
    text = read_manifest(path, policy.sources, policy.sha256)
    report: SignatureReport = check_signatures(text, files, signers, quorum or 1)
    lines = [f"{path}: {report.summary()}"]
    lines += [f"{signature_dir(path)}/{problem}" for problem in report.problems]
    if not report.ok:
        lines.append(f"{path}: policy refused: not signed by {report.quorum} approvers")
    return (EXIT_OK if report.ok else EXIT_CONFIG), lines


@contextmanager
def _journal(url: str | None) -> Iterator[Journal]:
    url = url or load_settings().database_url.get_secret_value()
    journal = open_journal(url)  # read-only: no writer lock, works beside the daemon
    try:
        yield journal
    finally:
        journal.close()


def cmd_backtest(args: argparse.Namespace, *, now: datetime | None = None) -> int:
    """Replay the window through the candidate; 0 when nothing changes, 1 when something does."""
    candidate = load_policy(args.candidate)
    now = now or datetime.now(UTC)
    since = parse_since(args.since, now)
    longest = max((limit.window for limit in candidate.limits), default=timedelta(0))
    with _journal(args.database_url) as journal:
        before = [Approval(row.chain_id, row.from_address, row.to_address,
                           Decimal(row.amount_text), row.created_at)
                  for row in journal.approvals_since(since - longest)
                  if row.created_at < since] if longest > timedelta(0) else []
        result = backtest(candidate, journal.records(since=since), before)
    if args.json:
        print(json.dumps(result.as_json(candidate, since), ensure_ascii=False))
    else:
        print("\n".join(render(result, candidate)))
    return EXIT_CHANGED if result.changed else EXIT_OK
