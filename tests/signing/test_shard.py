"""Loading the PKCS#12 shard: every file kind merchants meet, and every refusal."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from cosigner.errors import ConfigError, ShardError
from cosigner.signing import EXPIRY_WARNING_DAYS, default_password, load_shard, verify_data
from cosigner.signing.shard import certificate_from_pfx, certificate_pem
from cosigner.signing.throwaway import make_certificate, make_throwaway_shard, write_private
from tests.conftest import SHARD_PASSWORD, ShardFactory, ThrowawayShard
from tests.signing.conftest import PfxMaker

PAYLOAD = '{"isMain":1}'
# Distinctive so that any leak into a message is caught.
SECRET = "1bitpay-Sup3r-S3cret-pw"
WRONG = "Wr0ng-Guess-pw-xyz"


def _refusal(path: Path, password: str = SECRET, **kwargs: object) -> str:
    with pytest.raises(ShardError) as info:
        load_shard(path, password, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert SECRET not in message
    assert WRONG not in message
    assert "\n" not in message
    return message


class TestLoadShard:
    """load_shard accepts every well-formed RSA shard and checks it can sign."""

    @pytest.mark.parametrize("encryption", ["aes", "3des"])
    def test_loads_throwaway_files(self, shard_factory: ShardFactory, encryption: str) -> None:
        """Modern AES (PBES2) and legacy 3DES (PBES1) files made by pyca both load."""
        made = shard_factory(encryption=encryption)
        shard = load_shard(made.path, made.password)
        assert shard.info.key_bits == 2048
        assert shard.info.subject == "CN=cosigner test shard"
        assert verify_data(made.certificate, PAYLOAD, shard.sign(PAYLOAD))

    @pytest.mark.external_service
    def test_loads_openssl_legacy_rc2_3des_file(self, openssl_pfx: PfxMaker) -> None:
        """A file from ``openssl pkcs12 -export -legacy`` (RC2-40 certs, 3DES key) loads."""
        path = openssl_pfx(legacy=True)
        dump = subprocess.run(
            ["openssl", "pkcs12", "-in", str(path), "-info", "-noout", "-legacy",
             "-passin", "env:PFX_PASS"], env={"PFX_PASS": SHARD_PASSWORD, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30, check=True)
        assert "RC2" in dump.stderr + dump.stdout
        assert "TripleDES" in dump.stderr + dump.stdout
        shard = load_shard(path, SHARD_PASSWORD)
        assert shard.info.subject == "O=cosigner,CN=openssl shard"
        assert verify_data(shard.certificate, PAYLOAD, shard.sign(PAYLOAD))

    @pytest.mark.external_service
    def test_loads_openssl_modern_file(self, openssl_pfx: PfxMaker) -> None:
        """A file from a default ``openssl pkcs12 -export`` (AES-256, PBKDF2) loads."""
        shard = load_shard(openssl_pfx(), SHARD_PASSWORD)
        assert shard.info.key_bits == 2048
        assert verify_data(shard.certificate, PAYLOAD, shard.sign(PAYLOAD))

    @pytest.mark.external_service
    def test_loads_keytool_file(self, keytool_pfx: PfxMaker) -> None:
        """A file from ``keytool -genkeypair -storetype PKCS12`` loads."""
        shard = load_shard(keytool_pfx(), SHARD_PASSWORD)
        assert shard.info.subject == "CN=keytool shard,O=cosigner"
        assert verify_data(shard.certificate, PAYLOAD, shard.sign(PAYLOAD))

    def test_loads_4096_bit_key(self, shard_factory: ShardFactory) -> None:
        """Keys larger than 2048 bits are fine and carry longer payloads."""
        made = shard_factory(bits=4096)
        shard = load_shard(made.path, made.password)
        assert shard.info.key_bits == 4096
        assert shard.max_payload == 512 - 11

    def test_info_describes_certificate(self, shard: ThrowawayShard) -> None:
        """ShardInfo carries subject, issuer, size, SHA-256 fingerprint and validity."""
        info = load_shard(shard.path, shard.password, scheme="rsa-sha256").info
        cert = shard.certificate
        assert info.path == str(shard.path)
        assert info.issuer == info.subject == "CN=cosigner test shard"
        assert info.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex(":").upper()
        assert info.not_before == cert.not_valid_before_utc
        assert info.not_after == cert.not_valid_after_utc
        assert info.expiry_timestamp == cert.not_valid_after_utc.timestamp()
        assert info.scheme == "rsa-sha256"
        assert timedelta(days=364) < info.expires_in <= timedelta(days=365)

    def test_info_lines_and_repr_hold_no_secret(self, shard_factory: ShardFactory) -> None:
        """Neither the info lines nor the repr show the password or key material."""
        made = shard_factory(password=SECRET)
        shard = load_shard(made.path, SECRET)
        text = "\n".join(shard.info.lines()) + repr(shard) + repr(shard.info)
        assert SECRET not in text
        assert "PRIVATE" not in text
        assert format(made.key.private_numbers().d, "x")[:16] not in text.replace(":", "").lower()

    def test_expires_soon_uses_the_warning_window(self, shard_factory: ShardFactory) -> None:
        """expires_soon is true exactly within EXPIRY_WARNING_DAYS of not_after."""
        now = datetime.now(UTC)
        made = shard_factory(not_after=now + timedelta(days=EXPIRY_WARNING_DAYS - 1))
        info = load_shard(made.path, made.password).info
        assert info.expires_soon()
        assert not info.expires_soon(now=now - timedelta(days=2))
        assert info.expires_soon(now=now - timedelta(days=2), days=EXPIRY_WARNING_DAYS + 2)

    def test_skipping_the_mode_check(self, shard_factory: ShardFactory) -> None:
        """check_mode=False loads a group-readable file (the sandbox reads only the cert)."""
        made = shard_factory(mode=0o644)
        assert load_shard(made.path, made.password, check_mode=False).info.key_bits == 2048

    def test_make_throwaway_shard_writes_mode_0600(self, tmp_path: Path) -> None:
        """The throwaway helper creates a 0600 file that loads with its password."""
        path = tmp_path / "sub" / "t.pfx"
        cert = make_throwaway_shard(path, SECRET, encryption="3des", common_name="demo")
        assert path.stat().st_mode & 0o777 == 0o600
        assert load_shard(path, SECRET).certificate == cert


class TestShardRefusals:
    """Every unusable shard is a ShardError naming the cause, never the password."""

    def test_wrong_password(self, shard_factory: ShardFactory) -> None:
        """A wrong password is named as such, with the setting it came from."""
        made = shard_factory(password=SECRET)
        message = _refusal(made.path, WRONG)
        assert "wrong password" in message
        assert "COSIGNER_PFX_PASSWORD" in message
        assert str(made.path) in message

    def test_custom_password_setting_name(self, shard_factory: ShardFactory) -> None:
        """The message names whichever setting supplied the password."""
        made = shard_factory(password=SECRET)
        message = _refusal(made.path, WRONG, password_setting="COSIGNER_PFX_PASSWORD_FILE")
        assert "COSIGNER_PFX_PASSWORD_FILE" in message

    def test_not_a_pkcs12_file(self, tmp_path: Path) -> None:
        """A file that is not PKCS#12 at all is refused like a wrong password."""
        path = write_private(tmp_path / "junk.pfx", b"-----BEGIN NOTHING-----\n")
        assert "not a PKCS#12 file" in _refusal(path)

    def test_certificate_only_file(self, tmp_path: Path, shard: ThrowawayShard) -> None:
        """A PKCS#12 holding only a certificate is refused: no private key."""
        blob = pkcs12.serialize_key_and_certificates(
            b"1BitPay", None, None, [shard.certificate], BestAvailableEncryption(SECRET.encode()))
        path = write_private(tmp_path / "cert-only.pfx", blob)
        assert "no private key" in _refusal(path)

    def test_key_without_certificate(self, tmp_path: Path, shard: ThrowawayShard) -> None:
        """A PKCS#12 holding only a key is refused: no certificate."""
        blob = pkcs12.serialize_key_and_certificates(
            b"1BitPay", shard.key, None, None, BestAvailableEncryption(SECRET.encode()))
        path = write_private(tmp_path / "key-only.pfx", blob)
        assert "no certificate" in _refusal(path)

    def test_ec_key(self, tmp_path: Path) -> None:
        """A non-RSA (EC P-256) key is refused, naming its kind."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_certificate(key)  # type: ignore[arg-type]
        blob = pkcs12.serialize_key_and_certificates(
            b"1BitPay", key, cert, None, BestAvailableEncryption(SECRET.encode()))
        path = write_private(tmp_path / "ec.pfx", blob)
        message = _refusal(path)
        assert "not RSA" in message
        assert "EC" in message

    def test_rsa_1024(self, shard_factory: ShardFactory) -> None:
        """An RSA key below 2048 bits is refused with its size."""
        made = shard_factory(bits=1024, password=SECRET)
        message = _refusal(made.path)
        assert "1024 bits" in message
        assert "2048" in message

    def test_key_not_matching_certificate(self, tmp_path: Path, shard: ThrowawayShard,
                                          shard_factory: ShardFactory) -> None:
        """A key stored with another key's certificate is refused as a mismatch."""
        other = shard_factory(bits=2048)
        blob = pkcs12.serialize_key_and_certificates(
            b"1BitPay", shard.key, None, [other.certificate],
            BestAvailableEncryption(SECRET.encode()))
        path = write_private(tmp_path / "mismatch.pfx", blob)
        assert "does not match its certificate" in _refusal(path)

    def test_expired_certificate(self, shard_factory: ShardFactory) -> None:
        """A certificate past its not-after is refused with the date."""
        now = datetime.now(UTC)
        made = shard_factory(password=SECRET, not_before=now - timedelta(days=400),
                             not_after=now - timedelta(days=1))
        message = _refusal(made.path)
        assert "expired" in message
        assert made.certificate.not_valid_after_utc.isoformat() in message

    def test_expiry_is_judged_at_the_given_moment(self, shard: ThrowawayShard) -> None:
        """With ``now`` past not-after, a currently valid shard is refused as expired."""
        later = shard.certificate.not_valid_after_utc + timedelta(seconds=1)
        assert "expired" in _refusal(shard.path, shard.password, now=later)

    def test_not_yet_valid_certificate(self, shard_factory: ShardFactory) -> None:
        """A certificate whose not-before lies ahead is refused."""
        now = datetime.now(UTC)
        made = shard_factory(password=SECRET, not_before=now + timedelta(days=1),
                             not_after=now + timedelta(days=400))
        assert "not valid before" in _refusal(made.path)

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610])
    def test_group_or_other_access(self, shard_factory: ShardFactory, mode: int) -> None:
        """A file accessible to group or others is refused before it is read."""
        made = shard_factory(password=SECRET, mode=mode)
        message = _refusal(made.path)
        assert f"mode is {mode:04o}" in message
        assert "chmod 0400" in message

    @pytest.mark.parametrize("mode", [0o400, 0o600])
    def test_owner_only_modes_are_accepted(self, shard_factory: ShardFactory, mode: int) -> None:
        """0400 and 0600 are the modes a shard may have."""
        made = shard_factory(mode=mode)
        assert load_shard(made.path, made.password).info.key_bits == 2048

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is refused naming COSIGNER_PFX_PATH."""
        message = _refusal(tmp_path / "nope.pfx")
        assert "not found" in message
        assert "COSIGNER_PFX_PATH" in message

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
    def test_unreadable_file(self, shard_factory: ShardFactory) -> None:
        """A file this user cannot read is refused as such."""
        made = shard_factory(password=SECRET, mode=0o000)
        try:
            assert "not readable by this user" in _refusal(made.path)
        finally:
            made.path.chmod(0o600)

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is not a shard."""
        (tmp_path / "dir.pfx").mkdir(mode=0o700)
        assert "is a directory" in _refusal(tmp_path / "dir.pfx")

    def test_unknown_scheme(self, shard: ThrowawayShard) -> None:
        """An unknown signature scheme is refused naming COSIGNER_SIGN_SCHEME."""
        message = _refusal(shard.path, shard.password, scheme="rsa-md5")
        assert "COSIGNER_SIGN_SCHEME" in message

    def test_refusals_are_configuration_errors(self) -> None:
        """ShardError is a ConfigError, so the CLI exits 2 on it."""
        assert issubclass(ShardError, ConfigError)


class TestCertificateFromPfx:
    """certificate_from_pfx gives the sandbox the certificate alone."""

    def test_returns_the_certificate(self, shard: ThrowawayShard) -> None:
        """The certificate in the file comes back, also as PEM."""
        cert = certificate_from_pfx(shard.path, shard.password)
        assert cert == shard.certificate
        assert certificate_pem(cert).startswith("-----BEGIN CERTIFICATE-----")

    def test_wrong_password_is_a_shard_error(self, shard_factory: ShardFactory) -> None:
        """A wrong password raises ShardError without the password."""
        made = shard_factory(password=SECRET)
        with pytest.raises(ShardError) as info:
            certificate_from_pfx(made.path, WRONG)
        assert WRONG not in str(info.value)
        assert SECRET not in str(info.value)

    def test_key_only_file(self, tmp_path: Path, shard: ThrowawayShard) -> None:
        """A file without a certificate raises ShardError."""
        blob = pkcs12.serialize_key_and_certificates(
            b"1BitPay", shard.key, None, None, BestAvailableEncryption(SECRET.encode()))
        path = write_private(tmp_path / "key-only.pfx", blob)
        with pytest.raises(ShardError, match="no certificate"):
            certificate_from_pfx(path, SECRET)


class TestDefaultPassword:
    """The API doc's default shard password."""

    def test_is_1bitpay_plus_merchant_no(self) -> None:
        """The password is "1bitpay" followed by the merchant number."""
        assert default_password("M123") == "1bitpayM123"
