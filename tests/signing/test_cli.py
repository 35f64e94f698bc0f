"""``cosigner shard inspect|sign`` through ``cosigner.cli.main``, settings from the environment."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from cosigner.cli import main
from cosigner.signing import EXPIRY_WARNING_DAYS, verify_data
from cosigner.signing.throwaway import make_certificate, write_private
from tests.conftest import ShardFactory, ThrowawayShard

SECRET = "1bitpay-Cl1-S3cret-pw"
WRONG = "Wr0ng-Cl1-Guess-pw"
SetEnv = Callable[..., None]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["shard", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _ec_file(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    blob = pkcs12.serialize_key_and_certificates(
        b"1BitPay", key, make_certificate(key), None,  # type: ignore[arg-type]
        BestAvailableEncryption(SECRET.encode()))
    return write_private(tmp_path / "ec.pfx", blob)


def _cert_only_file(tmp_path: Path, shard: ThrowawayShard) -> Path:
    blob = pkcs12.serialize_key_and_certificates(
        b"1BitPay", None, None, [shard.certificate], BestAvailableEncryption(SECRET.encode()))
    return write_private(tmp_path / "cert-only.pfx", blob)


def _mismatch_file(tmp_path: Path, shard: ThrowawayShard, factory: ShardFactory) -> Path:
    other = factory(bits=2048)
    blob = pkcs12.serialize_key_and_certificates(
        b"1BitPay", shard.key, None, [other.certificate],
        BestAvailableEncryption(SECRET.encode()))
    return write_private(tmp_path / "mismatch.pfx", blob)


def _bad_shards() -> dict[str, tuple[Callable[..., Path], str, str]]:
    """name -> (make(tmp_path, shard, factory), password to configure, cause in the message)."""
    now = datetime.now(UTC)
    return {
        "wrong password": (lambda t, s, f: f(password=SECRET).path, WRONG, "wrong password"),
        "no private key": (lambda t, s, f: _cert_only_file(t, s), SECRET, "no private key"),
        "ec key": (lambda t, s, f: _ec_file(t), SECRET, "not RSA"),
        "rsa 1024": (lambda t, s, f: f(bits=1024, password=SECRET).path, SECRET, "1024 bits"),
        "mismatch": (lambda t, s, f: _mismatch_file(t, s, f), SECRET,
                     "does not match its certificate"),
        "expired": (lambda t, s, f: f(password=SECRET, not_before=now - timedelta(days=90),
                                      not_after=now - timedelta(hours=1)).path,
                    SECRET, "expired"),
        "not yet valid": (lambda t, s, f: f(password=SECRET, not_before=now + timedelta(days=1),
                                            not_after=now + timedelta(days=90)).path,
                          SECRET, "not valid before"),
        "mode 0644": (lambda t, s, f: f(password=SECRET, mode=0o644).path, SECRET, "mode is 0644"),
        "mode 0640": (lambda t, s, f: f(password=SECRET, mode=0o640).path, SECRET, "mode is 0640"),
        "missing": (lambda t, s, f: t / "absent.pfx", SECRET, "not found"),
    }


class TestShardInspect:
    """``shard inspect`` shows what identifies the shard and nothing secret."""

    def test_prints_identity_and_validity(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                                          capsys: pytest.CaptureFixture[str]) -> None:
        """Subject, issuer, key size, fingerprint, validity and scheme are printed."""
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password)
        code, out, err = _run(capsys, "inspect")
        assert (code, err) == (0, "")
        assert "subject:     CN=cosigner test shard" in out
        assert "issuer:      CN=cosigner test shard" in out
        assert "RSA 2048 bits" in out
        assert "sha256:      " in out
        assert shard.certificate.not_valid_after_utc.isoformat() in out
        assert shard.certificate.not_valid_before_utc.isoformat() in out
        assert "scheme:      java-rsa" in out
        assert "warning" not in out

    def test_never_prints_the_password_or_key(self, cosigner_env: SetEnv,
                                              shard_factory: ShardFactory,
                                              capsys: pytest.CaptureFixture[str]) -> None:
        """Neither the password nor any private-key material appears in the output."""
        made = shard_factory(password=SECRET)
        cosigner_env(pfx_path=made.path, pfx_password=SECRET)
        code, out, err = _run(capsys, "inspect")
        assert code == 0
        assert SECRET not in out + err
        assert "PRIVATE" not in out
        d_hex = format(made.key.private_numbers().d, "X")
        assert d_hex[:16] not in out.replace(":", "")

    def test_warns_when_expiry_is_near(self, cosigner_env: SetEnv, shard_factory: ShardFactory,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """A certificate expiring within EXPIRY_WARNING_DAYS gets a warning line."""
        made = shard_factory(not_after=datetime.now(UTC) + timedelta(days=3, hours=1))
        cosigner_env(pfx_path=made.path, pfx_password=made.password)
        code, out, _ = _run(capsys, "inspect")
        assert code == 0
        warnings = [line for line in out.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1
        assert "expires in 3 days" in warnings[0]
        assert f"within {EXPIRY_WARNING_DAYS}" in warnings[0]

    def test_password_defaults_to_1bitpay_plus_merchant_no(
            self, cosigner_env: SetEnv, shard_factory: ShardFactory,
            capsys: pytest.CaptureFixture[str]) -> None:
        """Without COSIGNER_PFX_PASSWORD the password is "1bitpay" + COSIGNER_MERCHANT_NO."""
        made = shard_factory(password="1bitpayM-778899")
        cosigner_env(pfx_path=made.path, merchant_no="M-778899")
        code, out, _ = _run(capsys, "inspect")
        assert code == 0
        assert "1bitpayM-778899" not in out

    def test_password_file(self, cosigner_env: SetEnv, shard_factory: ShardFactory,
                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """COSIGNER_PFX_PASSWORD_FILE supplies the password from a mounted file."""
        made = shard_factory(password=SECRET)
        secret_file = write_private(tmp_path / "pw", (SECRET + "\n").encode())
        cosigner_env(pfx_path=made.path, pfx_password_file=secret_file)
        code, out, err = _run(capsys, "inspect")
        assert code == 0
        assert SECRET not in out + err

    def test_pfx_option_overrides_the_setting(self, cosigner_env: SetEnv,
                                              shard: ThrowawayShard, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
        """``--pfx PATH`` wins over COSIGNER_PFX_PATH."""
        cosigner_env(pfx_path=tmp_path / "absent.pfx", pfx_password=shard.password)
        code, out, _ = _run(capsys, "inspect", "--pfx", str(shard.path))
        assert code == 0
        assert f"file:        {shard.path}" in out

    def test_scheme_setting_is_shown(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """COSIGNER_SIGN_SCHEME=rsa-sha256 is reported as the scheme."""
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password, sign_scheme="rsa-sha256")
        _, out, _ = _run(capsys, "inspect")
        assert "scheme:      rsa-sha256" in out

    def test_missing_path_setting(self, cosigner_env: SetEnv,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """Without a path the command exits 2 naming COSIGNER_PFX_PATH."""
        cosigner_env(pfx_password=SECRET)
        code, out, err = _run(capsys, "inspect")
        assert code == 2
        assert "COSIGNER_PFX_PATH" in err
        assert SECRET not in out + err

    def test_missing_password_and_merchant(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """Without password or merchant number the command exits 2 naming the setting."""
        cosigner_env(pfx_path=shard.path)
        code, _, err = _run(capsys, "inspect")
        assert code == 2
        assert "COSIGNER_MERCHANT_NO" in err
        assert len(err.strip().splitlines()) == 1

    @pytest.mark.parametrize("case", list(_bad_shards()))
    def test_bad_shard_exits_2_naming_the_cause(
            self, case: str, cosigner_env: SetEnv, shard: ThrowawayShard,
            shard_factory: ShardFactory, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        """Each unusable shard exits 2 with one line naming the cause and no password."""
        make, password, cause = _bad_shards()[case]
        path = make(tmp_path, shard, shard_factory)
        cosigner_env(pfx_path=path, pfx_password=password)
        code, out, err = _run(capsys, "inspect")
        assert code == 2
        assert out == ""
        assert cause in err
        assert err.startswith("cosigner: ")
        assert len(err.strip().splitlines()) == 1
        for secret in (SECRET, WRONG, shard.password):
            assert secret not in out + err


class TestShardSign:
    """``shard sign PAYLOAD`` prints only the data string."""

    def test_prints_only_the_data(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """stdout is exactly one line: data that verifies against the certificate."""
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password)
        code, out, err = _run(capsys, "sign", '{"isMain":1}')
        assert (code, err) == (0, "")
        assert out.endswith("\n")
        assert out.count("\n") == 1
        assert verify_data(shard.certificate, '{"isMain":1}', out.strip())

    def test_dash_reads_stdin(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
        """``-`` signs stdin as UTF-8, dropping one trailing newline."""
        payload = '{"id":1,"from":"发送","to":"b","value":"4.10","chainId":"56","status":1}'
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password)
        _stdin(monkeypatch, (payload + "\n").encode())
        code, out, _ = _run(capsys, "sign", "-")
        assert code == 0
        assert verify_data(shard.certificate, payload, out.strip())

    def test_stdin_must_be_utf8(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
        """Non-UTF-8 stdin exits 2."""
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password)
        _stdin(monkeypatch, b"\xff\xfe")
        code, out, err = _run(capsys, "sign", "-")
        assert (code, out) == (2, "")
        assert "UTF-8" in err

    def test_argument_must_be_utf8(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                                   capsys: pytest.CaptureFixture[str]) -> None:
        """An argv payload that was not UTF-8 (a surrogate escape) exits 2."""
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password)
        code, out, err = _run(capsys, "sign", "caf\udce9")
        assert (code, out) == (2, "")
        assert "UTF-8" in err

    def test_scheme_option(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                           capsys: pytest.CaptureFixture[str]) -> None:
        """``--scheme rsa-sha256`` signs under that scheme."""
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password)
        code, out, _ = _run(capsys, "sign", "--scheme", "rsa-sha256", "x")
        assert code == 0
        assert verify_data(shard.certificate, "x", out.strip(), scheme="rsa-sha256")

    def test_too_long_payload_exits_2(self, cosigner_env: SetEnv, shard: ThrowawayShard,
                                      capsys: pytest.CaptureFixture[str]) -> None:
        """A payload beyond k-11 bytes exits 2 and prints no data."""
        cosigner_env(pfx_path=shard.path, pfx_password=shard.password)
        code, out, err = _run(capsys, "sign", "x" * 246)
        assert (code, out) == (2, "")
        assert "at most 245" in err

    def test_bad_shard_exits_2(self, cosigner_env: SetEnv, shard_factory: ShardFactory,
                               capsys: pytest.CaptureFixture[str]) -> None:
        """A refused shard prints no data and no password."""
        made = shard_factory(password=SECRET)
        cosigner_env(pfx_path=made.path, pfx_password=WRONG)
        code, out, err = _run(capsys, "sign", "x")
        assert (code, out) == (2, "")
        assert SECRET not in err
        assert WRONG not in err
