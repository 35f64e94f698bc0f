"""PKCS#12 files made by the tools merchants and 1BitPay use: openssl and keytool.

Every key is generated at run time; the password reaches the tools through the
environment, never a command line.  The ``make_*`` functions serve fixtures of
any scope; the ``*_pfx`` fixtures gate on the tool and write into ``tmp_path``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SHARD_PASSWORD, require_tool

PfxMaker = Callable[..., Path]


def _run(argv: list[str], password: str, cwd: Path) -> None:
    env = {**os.environ, "PFX_PASS": password}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"{argv[0]} {argv[1]} failed ({done.returncode}): {done.stderr.strip()}")


def make_openssl_pfx(directory: Path, name: str = "openssl.pfx", *, legacy: bool = False,
                     days: int = 365, key: str = "rsa:2048",
                     password: str = SHARD_PASSWORD) -> Path:
    """``openssl req -x509 -newkey`` then ``openssl pkcs12 -export [-legacy]`` (mode 0600)."""
    work = directory / f"{name}.d"
    work.mkdir()
    _run(["openssl", "req", "-x509", "-newkey", key, "-nodes", "-keyout", "key.pem",
          "-out", "cert.pem", "-days", str(days), "-subj", "/CN=openssl shard/O=cosigner"],
         password, work)
    out = directory / name
    _run(["openssl", "pkcs12", "-export", *(["-legacy"] if legacy else []),
          "-inkey", "key.pem", "-in", "cert.pem", "-name", "1BitPay",
          "-out", str(out), "-passout", "env:PFX_PASS"], password, work)
    (work / "key.pem").unlink()
    out.chmod(0o600)
    return out


def make_keytool_pfx(directory: Path, name: str = "keytool.pfx", *, keysize: int = 2048,
                     password: str = SHARD_PASSWORD) -> Path:
    """``keytool -genkeypair -keyalg RSA -storetype PKCS12 -alias 1BitPay`` (mode 0600)."""
    out = directory / name
    _run(["keytool", "-genkeypair", "-keyalg", "RSA", "-keysize", str(keysize),
          "-storetype", "PKCS12", "-alias", "1BitPay", "-dname", "CN=keytool shard, O=cosigner",
          "-validity", "365", "-keystore", str(out),
          "-storepass:env", "PFX_PASS", "-keypass:env", "PFX_PASS", "-noprompt"],
         password, directory)
    out.chmod(0o600)
    return out


@pytest.fixture
def openssl_pfx(tmp_path: Path) -> PfxMaker:
    """``openssl_pfx(name, legacy=..., days=..., key=...)``: a PFX made by openssl."""
    require_tool("openssl", "openssl is not installed")
    return lambda *args, **kwargs: make_openssl_pfx(tmp_path, *args, **kwargs)


@pytest.fixture
def keytool_pfx(tmp_path: Path) -> PfxMaker:
    """``keytool_pfx(name, keysize=...)``: a PFX made by keytool."""
    require_tool("keytool", "keytool (a Java JDK) is not installed")
    return lambda *args, **kwargs: make_keytool_pfx(tmp_path, *args, **kwargs)
