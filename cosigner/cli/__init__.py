"""The ``cosigner`` command line.  Each module of this package registers its subcommands.

The command-line modules are the only readers of the settings: they turn them into
plain values and pass those down (DESIGN section 9).

Exit codes (DESIGN section 5): 0 success, 1 runtime failure, 2 bad usage or
configuration, with one line naming the setting or file and what is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence

from cosigner import __version__
from cosigner.errors import ConfigError, CosignerError

# Each module has ``register(subparsers)`` adding its commands; a command's
# handler is stored as ``func`` and returns the exit code.  Listed with the
# top-level commands each registers (a test keeps the two equal): ``cosigner run``
# imports only the module of ``run``, not the sandbox, the shard tools or the
# policy tools it never uses (start-up time, docs/performance.md).
_COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "cosigner.cli.daemon": ("run", "demo", "bench", "pause", "resume", "status"),
    "cosigner.cli.sandbox": ("sandbox",),
    "cosigner.cli.policy": ("policy",),
    "cosigner.cli.shard": ("shard",),
    "cosigner.cli.audit": ("journal", "audit"),
    "cosigner.cli.otc": ("otc",),
    "cosigner.cli.orders": ("orders",),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command, or with *argv* starting with a known
    command, only that command's module (the help, usage and errors stay the same)."""
    parser = argparse.ArgumentParser(
        prog="cosigner", description="Fail-closed co-signer for the 1BitPay merchant API.")
    parser.add_argument("--version", action="version", version=f"cosigner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _modules_for(argv):
        if importlib.util.find_spec(name) is None:  # pragma: no cover - during development only
            continue
        importlib.import_module(name).register(sub)
    return parser


def _modules_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The modules to register: the one owning ``argv[0]``, or all of them (no command
    first, e.g. ``--help``, an option, or an unknown word that the error lists commands for)."""
    if argv:
        for name, commands in _COMMAND_MODULES.items():
            if argv[0] in commands:
                return (name,)
    return tuple(_COMMAND_MODULES)


@contextlib.contextmanager
def long_lived(*, freeze: bool) -> Iterator[None]:
    """Build what lives as long as the process (modules, the daemon and its policy) without
    the cycle collector; with *freeze*, then exempt it from later collections (``gc.freeze``).

    Start-up allocates hundreds of thousands of objects and frees almost none; collecting
    while it runs rescans them again and again (~0.1 s of ``cosigner run``'s start with a
    100,000-address policy, docs/performance.md).  Frozen objects are still freed by
    reference counting, a replaced policy included (it holds no reference cycle); only the
    ``cosigner`` process itself freezes (a caller of :func:`main`, such as a test, keeps
    its collector as it was).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


#: The cycle collector's thresholds in a daemon process (``run``, and ``bench`` which
#: measures it).  A poll cycle allocates millions of short-lived, acyclic objects that
#: reference counting frees; at Python's default (700, 10, 10) a 50,000-item cycle ran
#: ~1,500 collections costing 1.2 s, 0.77 s of it in 11 full collections rescanning the
#: whole heap.  At (10,000, 10, 10): 26 collections, 0.13 s (docs/performance.md).
DAEMON_GC_THRESHOLDS = (10_000, 10, 10)


def tune_collector(args: object) -> None:
    """Set :data:`DAEMON_GC_THRESHOLDS` when this process is the ``cosigner`` command
    (a caller of :func:`main`, such as a test, keeps its collector as it was)."""
    if getattr(args, "program", False):
        gc.set_threshold(*DAEMON_GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cosigner`` command (*argv* None: this process is it, arguments from sys.argv)."""
    program = argv is None
    if argv is None:
        argv = sys.argv[1:]
    with long_lived(freeze=program):
        parser = build_parser(argv)
        args = parser.parse_args(argv)
    args.program = program  # `run` freezes what it builds too (cosigner.cli.daemon)
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
