"""The ``data`` signature: java-rsa (the default) and rsa-sha256, and their verification."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from cosigner.errors import SigningError
from cosigner.signing import Shard, load_shard, verify_data
from cosigner.signing.throwaway import make_certificate
from tests.conftest import ShardFactory, ThrowawayShard

PAYLOAD = ('{"id":1,"from":"TGGh3cGp9P21Ebvg9JitjHoeJaKqrg3bRg",'
           '"to":"TFMQrPdFWuPzFRXb42sxB22ABCVL6xSopV","value":"4.10","chainId":"56","status":1}')


@pytest.fixture
def java_rsa(shard: ThrowawayShard) -> Shard:
    return load_shard(shard.path, shard.password)


@pytest.fixture
def rsa_sha256(shard: ThrowawayShard) -> Shard:
    return load_shard(shard.path, shard.password, scheme="rsa-sha256")


def _raw_rsa_public(shard: ThrowawayShard, data: str) -> bytes:
    """s^e mod n: the encoded message under the signature, computed independently."""
    numbers = shard.key.public_key().public_numbers()
    sig = int.from_bytes(base64.b64decode(data), "big")
    k = (numbers.n.bit_length() + 7) // 8
    return pow(sig, numbers.e, numbers.n).to_bytes(k, "big")


class TestJavaRsa:
    """java-rsa is RSA private-key encryption with type-1 padding and no DigestInfo."""

    def test_is_deterministic(self, java_rsa: Shard) -> None:
        """Signing the same payload twice gives the same data."""
        assert java_rsa.sign(PAYLOAD) == java_rsa.sign(PAYLOAD)

    def test_is_recoverable_with_the_certificate(self, java_rsa: Shard,
                                                 shard: ThrowawayShard) -> None:
        """verify_data recovers exactly the payload from the data."""
        data = java_rsa.sign(PAYLOAD)
        assert verify_data(shard.certificate, PAYLOAD, data)
        assert verify_data(shard.certificate, PAYLOAD.encode(), data, scheme="java-rsa")

    def test_encodes_emsa_pkcs1_type1_without_digestinfo(self, java_rsa: Shard,
                                                          shard: ThrowawayShard) -> None:
        """Under the signature lies 00 01 FF..FF 00 followed by the payload itself."""
        em = _raw_rsa_public(shard, java_rsa.sign(PAYLOAD))
        body = PAYLOAD.encode()
        pad = len(em) - len(body) - 3
        assert em == b"\x00\x01" + b"\xff" * pad + b"\x00" + body
        assert pad >= 8

    def test_data_is_base64_of_k_bytes(self, java_rsa: Shard) -> None:
        """data is standard base64 of exactly k = 256 bytes for a 2048-bit key."""
        data = java_rsa.sign(PAYLOAD)
        assert len(base64.b64decode(data, validate=True)) == 256
        assert "\n" not in data

    def test_str_and_utf8_bytes_sign_alike(self, java_rsa: Shard) -> None:
        """A str payload is signed as its UTF-8 bytes."""
        text = '{"memo":"提现 ü"}'
        assert java_rsa.sign(text) == java_rsa.sign(text.encode("utf-8"))

    def test_max_payload_is_k_minus_11(self, java_rsa: Shard, shard: ThrowawayShard) -> None:
        """A payload of exactly k-11 bytes is signed and recovered."""
        assert java_rsa.max_payload == 245
        payload = b"x" * 245
        assert verify_data(shard.certificate, payload, java_rsa.sign(payload))

    def test_k_minus_10_bytes_is_refused(self, java_rsa: Shard) -> None:
        """One byte more than k-11 raises SigningError, never a silent split."""
        with pytest.raises(SigningError, match=r"246 bytes.*at most 245"):
            java_rsa.sign(b"x" * 246)

    def test_length_counts_utf8_bytes(self, java_rsa: Shard) -> None:
        """The limit applies to UTF-8 bytes, not characters."""
        java_rsa.sign("é" * 122 + "x")  # 245 bytes
        with pytest.raises(SigningError):
            java_rsa.sign("é" * 123)  # 123 characters, 246 bytes

    def test_other_payload_does_not_verify(self, java_rsa: Shard,
                                           shard: ThrowawayShard) -> None:
        """Data for one payload does not verify another, even one byte apart."""
        data = java_rsa.sign(PAYLOAD)
        assert not verify_data(shard.certificate, PAYLOAD.replace("4.10", "4.11"), data)
        assert not verify_data(shard.certificate, PAYLOAD + " ", data)

    def test_other_certificate_does_not_verify(self, java_rsa: Shard,
                                               shard_factory: ShardFactory) -> None:
        """Data made by one shard does not verify under another's certificate."""
        other = shard_factory(bits=2048)
        assert not verify_data(other.certificate, PAYLOAD, java_rsa.sign(PAYLOAD))

    @pytest.mark.parametrize("data", ["", "not base64!", "AAAA", "QUJD\n", "=" * 8])
    def test_garbage_data_does_not_verify(self, shard: ThrowawayShard, data: str) -> None:
        """Malformed or short data is a False, not an exception."""
        assert not verify_data(shard.certificate, PAYLOAD, data)

    def test_rsa_sha256_data_is_not_java_rsa(self, rsa_sha256: Shard,
                                             shard: ThrowawayShard) -> None:
        """Schemes do not cross-verify."""
        assert not verify_data(shard.certificate, PAYLOAD, rsa_sha256.sign(PAYLOAD))

    def test_non_rsa_certificate_does_not_verify(self, java_rsa: Shard) -> None:
        """A certificate with an EC key verifies nothing."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_certificate(key)  # type: ignore[arg-type]
        assert not verify_data(cert, PAYLOAD, java_rsa.sign(PAYLOAD))


class TestRsaSha256:
    """rsa-sha256 is RSASSA-PKCS1-v1_5 over SHA-256."""

    def test_verifies_with_the_public_key(self, rsa_sha256: Shard,
                                          shard: ThrowawayShard) -> None:
        """The data verifies as a standard PKCS#1 v1.5 SHA-256 signature."""
        raw = base64.b64decode(rsa_sha256.sign(PAYLOAD))
        shard.key.public_key().verify(raw, PAYLOAD.encode(), padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(InvalidSignature):
            shard.key.public_key().verify(raw, b"other", padding.PKCS1v15(), hashes.SHA256())

    def test_verify_data_accepts_it(self, rsa_sha256: Shard, shard: ThrowawayShard) -> None:
        """verify_data with scheme rsa-sha256 accepts the data and refuses others."""
        data = rsa_sha256.sign(PAYLOAD)
        assert verify_data(shard.certificate, PAYLOAD, data, scheme="rsa-sha256")
        assert not verify_data(shard.certificate, PAYLOAD + "x", data, scheme="rsa-sha256")

    def test_is_deterministic(self, rsa_sha256: Shard) -> None:
        """PKCS#1 v1.5 signatures are deterministic."""
        assert rsa_sha256.sign(PAYLOAD) == rsa_sha256.sign(PAYLOAD)

    def test_has_no_length_limit(self, rsa_sha256: Shard, shard: ThrowawayShard) -> None:
        """The payload is hashed, so payloads beyond k-11 bytes sign fine."""
        payload = b"y" * 4096
        assert verify_data(shard.certificate, payload, rsa_sha256.sign(payload),
                           scheme="rsa-sha256")
