"""Interop proof: our ``data`` is byte-identical to what the API doc's Java snippet makes.

``java/ShardSign.java`` does what the doc's snippet does (``KeyStore`` PKCS12 with
the JDK provider, ``Cipher.getInstance("RSA")``, ``ENCRYPT_MODE`` with the private
key, base64) and also ``DECRYPT_MODE`` with the certificate's public key.  It is
compiled once per session; every PFX is made at run time by keytool, openssl or pyca.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from cosigner.errors import SigningError
from cosigner.signing import (
    Shard,
    approval_sign_object,
    collect_sign_object,
    load_shard,
    verify_data,
)
from cosigner.signing.throwaway import make_throwaway_shard
from tests.conftest import SHARD_PASSWORD, require_tool
from tests.signing.conftest import make_keytool_pfx, make_openssl_pfx

pytestmark = pytest.mark.external_service

JAVA_SOURCE = Path(__file__).parent / "java" / "ShardSign.java"
TRON_A = "TGGh3cGp9P21Ebvg9JitjHoeJaKqrg3bRg"
TRON_B = "TFMQrPdFWuPzFRXb42sxB22ABCVL6xSopV"
MAX_2048 = 256 - 11


def _near_max(size: int) -> str:
    """A JSON-looking payload of exactly ``size`` UTF-8 bytes with multi-byte characters."""
    head = '{"memo":"提现-ü-€-'
    tail = '"}'
    filler = size - len(head.encode()) - len(tail.encode())
    return head + "é" * (filler // 2) + "x" * (filler % 2) + tail


PAYLOADS: Sequence[str] = (
    approval_sign_object(1, TRON_A, TRON_B, "4.10", "56", 1).decode(),
    approval_sign_object(2, TRON_A, TRON_B, "4.1", "56", 2).decode(),
    approval_sign_object(3, "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8", "收款地址-Empfänger",
                         "0.000000000000000001", "56", 1).decode(),
    approval_sign_object(4, "发送方🙂", TRON_B, "250000", "195", 1).decode(),
    collect_sign_object(1).decode(),
    collect_sign_object(0).decode(),
    _near_max(MAX_2048 - 1),
    _near_max(MAX_2048),
)


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ShardSign.java compiled once per session; skips (or fails) without a JDK."""
    for tool in ("javac", "java", "keytool"):
        require_tool(tool, f"{tool} is not installed (Debian: openjdk-17-jdk-headless)")
    out = tmp_path_factory.mktemp("java-classes")
    subprocess.run(["javac", "-encoding", "UTF-8", "-d", str(out), str(JAVA_SOURCE)],
                   check=True, capture_output=True, timeout=120)
    return out


def _java(classes: Path, mode: str, pfx: Path, lines: Sequence[str],
          password: str = SHARD_PASSWORD) -> subprocess.CompletedProcess[bytes]:
    # ShardSign reads one payload per line.
    assert not any(("\n" in line) or ("\r" in line) for line in lines)
    return subprocess.run(
        ["java", "-cp", str(classes), "ShardSign", mode, str(pfx)],
        input="".join(f"{line}\n" for line in lines).encode("utf-8"),
        env={**os.environ, "SHARD_PASSWORD": password},
        capture_output=True, timeout=60, check=False)


def _java_lines(classes: Path, mode: str, pfx: Path, lines: Sequence[str]) -> list[str]:
    done = _java(classes, mode, pfx, lines)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return done.stdout.decode("utf-8").splitlines()


@pytest.fixture(scope="module", params=["keytool", "openssl", "pyca-aes", "pyca-3des"])
def pfx(request: pytest.FixtureRequest, java_classes: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shard made by keytool, by openssl, or by our own throwaway helper."""
    directory = tmp_path_factory.mktemp(f"pfx-{request.param}")
    if request.param == "keytool":
        return make_keytool_pfx(directory)
    if request.param == "openssl":
        require_tool("openssl", "openssl is not installed")
        return make_openssl_pfx(directory)
    path = directory / "throwaway.pfx"
    make_throwaway_shard(path, SHARD_PASSWORD, encryption=request.param.removeprefix("pyca-"))
    return path


@pytest.fixture(scope="module")
def shard(pfx: Path) -> Shard:
    return load_shard(pfx, SHARD_PASSWORD)


class TestJavaInterop:
    """Java's Cipher("RSA") and our java-rsa scheme agree in both directions."""

    def test_payloads_fit_the_key(self) -> None:
        """The near-max payloads are k-12 and exactly k-11 UTF-8 bytes."""
        assert [len(p.encode()) for p in PAYLOADS[-2:]] == [MAX_2048 - 1, MAX_2048]
        assert any(not p.isascii() for p in PAYLOADS[:4])

    def test_data_is_byte_identical_to_java(self, java_classes: Path, pfx: Path,
                                            shard: Shard) -> None:
        """For every payload our data equals Java's ENCRYPT_MODE output, byte for byte."""
        java_data = _java_lines(java_classes, "encrypt", pfx, PAYLOADS)
        assert len(java_data) == len(PAYLOADS)
        for payload, theirs in zip(PAYLOADS, java_data, strict=True):
            assert shard.sign(payload) == theirs, payload

    def test_java_decrypt_recovers_our_payload(self, java_classes: Path, pfx: Path,
                                               shard: Shard) -> None:
        """Java's DECRYPT_MODE with the certificate's public key recovers what we signed."""
        ours = [shard.sign(p) for p in PAYLOADS]
        assert _java_lines(java_classes, "decrypt", pfx, ours) == list(PAYLOADS)

    def test_we_verify_java_data(self, java_classes: Path, pfx: Path, shard: Shard) -> None:
        """verify_data (the sandbox's check) accepts Java-made data."""
        java_data = _java_lines(java_classes, "encrypt", pfx, PAYLOADS[:2])
        for payload, theirs in zip(PAYLOADS[:2], java_data, strict=True):
            assert verify_data(shard.certificate, payload, theirs)
        assert not verify_data(shard.certificate, PAYLOADS[1], java_data[0])

    def test_both_refuse_k_minus_10_bytes(self, java_classes: Path, pfx: Path,
                                          shard: Shard) -> None:
        """A payload one byte over k-11 fails in Java too: no silent chunking either side."""
        too_long = _near_max(MAX_2048 + 1)
        done = _java(java_classes, "encrypt", pfx, [too_long])
        assert done.returncode != 0
        assert b"245" in done.stderr
        with pytest.raises(SigningError):
            shard.sign(too_long)

    def test_java_refuses_a_wrong_password(self, java_classes: Path, pfx: Path) -> None:
        """The Java reference, like load_shard, cannot open the file with another password."""
        done = _java(java_classes, "encrypt", pfx, ["x"], password="not-the-password")
        assert done.returncode != 0
