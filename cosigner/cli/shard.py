"""``cosigner shard inspect|sign|new``: look at the shard, sign a payload for support cases,
make a throwaway test shard.

No command ever prints key bytes or the password.  A shard that cannot be
used (every refusal of :func:`load_shard`) is a configuration error: exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cosigner.errors import ConfigError, SigningError
from cosigner.settings import load_settings
from cosigner.signing.shard import EXPIRY_WARNING_DAYS, SIGN_SCHEMES, Shard, load_shard
from cosigner.signing.throwaway import make_certificate, pfx_bytes


def register(subparsers: Any) -> None:
    """Add ``shard inspect`` and ``shard sign`` to the ``cosigner`` parser."""
    shard = subparsers.add_parser("shard", help="inspect the PKCS#12 shard or sign a payload")
    sub = shard.add_subparsers(dest="shard_command", metavar="SUBCOMMAND", required=True)

    inspect = sub.add_parser(
        "inspect", help="subject, key size, fingerprint and validity (never a secret)")
    _add_common(inspect)
    inspect.set_defaults(func=_inspect)

    sign = sub.add_parser("sign", help="print the `data` signature of PAYLOAD")
    _add_common(sign)
    sign.add_argument("payload", metavar="PAYLOAD",
                      help="the exact text to sign, or - to read it from stdin "
                           "(one trailing newline is dropped)")
    sign.set_defaults(func=_sign)

    new = sub.add_parser(
        "new", help="a throwaway TEST shard for the sandbox (never for production)")
    new.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="where to write it (mode 0600; an existing file is never replaced)")
    new.set_defaults(func=_new)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pfx", type=Path, metavar="PATH",
                        help="the shard file (default: COSIGNER_PFX_PATH)")
    parser.add_argument("--scheme", choices=SIGN_SCHEMES,
                        help="signature scheme (default: COSIGNER_SIGN_SCHEME)")


def _load(args: argparse.Namespace) -> Shard:
    settings = load_settings()
    path: Path | None = args.pfx
    if path is None:
        settings.require("pfx_path", why="(or pass --pfx PATH)")
        path = settings.pfx_path
    assert path is not None  # checked by require
    return load_shard(path, settings.shard_password(),
                      scheme=args.scheme or settings.sign_scheme)


def _inspect(args: argparse.Namespace) -> int:
    shard = _load(args)
    info = shard.info
    for line in info.lines():
        print(line)
    if info.expires_soon():
        days = max(info.expires_in.days, 0)
        print(f"warning: the certificate expires in {days} days, within "
              f"{EXPIRY_WARNING_DAYS} ({info.not_after.isoformat()}); "
              f"download a new shard from the merchant system")
    return 0


def _read_payload(arg: str) -> str:
    if arg != "-":
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # argv bytes that were not UTF-8 (surrogate escapes)
            raise ConfigError("PAYLOAD: the argument is not UTF-8 text") from None
        return arg
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("PAYLOAD: stdin is not UTF-8 text") from None
    # `echo '{...}' | cosigner shard sign -` must sign the object, not its newline.
    return text.removesuffix("\n").removesuffix("\r")


def _sign(args: argparse.Namespace) -> int:
    payload = _read_payload(args.payload)
    shard = _load(args)
    try:
        data = shard.sign(payload)
    except SigningError as exc:
        # A payload the key cannot carry is bad input, not a runtime failure.
        print(f"cosigner: PAYLOAD: {exc}", file=sys.stderr)
        return 2
    print(data)
    return 0


NOT_FOR_PRODUCTION = (
    "NOT FOR PRODUCTION: a throwaway key made on this machine for the sandbox and tests. "
    "1BitPay knows nothing of it; a real shard is downloaded from the merchant system.")


def _new(args: argparse.Namespace) -> int:
    settings = load_settings()
    password = settings.shard_password()
    path: Path = args.out
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = make_certificate(key, "cosigner throwaway TEST shard - not for production")
    blob = pfx_bytes(key, cert, password)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"--out {path}: the file exists; refusing to overwrite a "
                          "shard") from None
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot create it ({exc.strerror or exc})") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    print(f"wrote {path} (mode 0600), a 2048-bit RSA key with a self-signed certificate, "
          f"protected by COSIGNER_PFX_PASSWORD (default \"1bitpay\" + COSIGNER_MERCHANT_NO)")
    print(NOT_FOR_PRODUCTION, file=sys.stderr)
    return 0
