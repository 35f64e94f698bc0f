"""The ``cosigner`` command line.  Each module of this package registers its subcommands.

The command-line modules are the only readers of the settings: they turn them into
plain values and pass those down (DESIGN section 9).

Exit codes (DESIGN section 5): 0 success, 1 runtime failure, 2 bad usage or
configuration, with one line naming the setting or file and what is wrong.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from cosigner import __version__
from cosigner.errors import ConfigError, CosignerError

# Each module has ``register(subparsers)`` adding its commands; a command's
# handler is stored as ``func`` and returns the exit code.
_COMMAND_MODULES = (
    "cosigner.cli.daemon",       # run, demo, bench, pause, resume, status
    "cosigner.cli.sandbox",      # sandbox
    "cosigner.cli.policy",       # policy check|test|explain
    "cosigner.cli.shard",        # shard inspect|sign
    "cosigner.cli.audit",        # journal init, audit list|export|verify
    "cosigner.cli.otc",          # otc rate|create
    "cosigner.cli.orders",       # orders list|show
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosigner", description="Fail-closed co-signer for the 1BitPay merchant API.")
    parser.add_argument("--version", action="version", version=f"cosigner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:  # pragma: no cover - during development only
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe is found here, not at exit
    except BrokenPipeError:
        # The reader went away (`cosigner audit list | head`): not a failure of ours.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except ConfigError as exc:
        print(f"cosigner: {exc}", file=sys.stderr)
        return 2
    except CosignerError as exc:
        print(f"cosigner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
