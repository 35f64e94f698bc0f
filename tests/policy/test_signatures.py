"""SSHSIG parsing and verification against real ``ssh-keygen -Y sign`` output, allowed_signers
parsing and the M-of-N quorum (DESIGN section 11)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from cosigner.errors import ConfigError, UnsignedPolicyError
from cosigner.policy.bundle import read_manifest
from cosigner.policy.loader import load_policy
from cosigner.policy.signatures import (
    NAMESPACE,
    SignatureFormatError,
    check_signatures,
    load_allowed_signers,
    parse_allowed_signers,
    parse_signature,
    require_quorum,
    verify,
)
from tests.sshsig import Approvers, make_approvers

pytestmark = pytest.mark.external_service
COSIGNER = Path(sys.executable).with_name("cosigner")
MANIFEST = "a" * 64 + "  policy.yaml\n"
POLICY = """\
version: 1
name: signed
chains:
  "56": {name: bsc, address: evm, decimals: 18}
lists:
  sanctioned: {file: lists/sanctioned.txt}
rules:
  - name: block
    to: {in: [sanctioned]}
    action: reject
"""


@pytest.fixture(scope="module")
def approvers(tmp_path_factory: pytest.TempPathFactory) -> Approvers:
    """alice, bob, carol (allowed) and mallory, with real ssh-keygen keys."""
    return make_approvers(tmp_path_factory.mktemp("approvers"))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "sanctioned.txt").write_text(
        "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8\n")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


class TestVerify:
    """Each supported key type's real signature verifies, and only over its message."""

    @pytest.mark.parametrize("who", ["alice", "bob", "carol"])
    def test_real_signatures_verify(self, approvers: Approvers, who: str) -> None:
        """ed25519, ecdsa-sha2-nistp256 and rsa-sha2-512 signatures by ssh-keygen verify."""
        signature = parse_signature(approvers.sign_text(who, MANIFEST).decode())
        assert signature.namespace == NAMESPACE
        assert verify(signature, MANIFEST.encode())

    @pytest.mark.parametrize("who", ["alice", "bob", "carol"])
    def test_another_message_does_not_verify(self, approvers: Approvers, who: str) -> None:
        """One changed byte of the manifest and the signature is worthless."""
        signature = parse_signature(approvers.sign_text(who, MANIFEST).decode())
        assert not verify(signature, MANIFEST.replace("a", "b", 1).encode())

    def test_another_namespace_does_not_verify(self, approvers: Approvers) -> None:
        """A signature made for git (or anything else) is not a policy approval."""
        signature = parse_signature(approvers.sign_text("alice", MANIFEST, "git").decode())
        assert not verify(signature, MANIFEST.encode())
        # even when the claimed namespace is edited, the signed data no longer matches
        forged = signature.__class__(signature.public_key, NAMESPACE, signature.hash_algorithm,
                                     signature.algorithm, signature.signature)
        assert not verify(forged, MANIFEST.encode())

    def test_a_swapped_key_does_not_verify(self, approvers: Approvers) -> None:
        """Alice's signature with mallory's key inside is refused."""
        alice = parse_signature(approvers.sign_text("alice", MANIFEST).decode())
        mallory = parse_signature(approvers.sign_text("mallory", MANIFEST).decode())
        forged = alice.__class__(mallory.public_key, alice.namespace, alice.hash_algorithm,
                                 alice.algorithm, alice.signature)
        assert not verify(forged, MANIFEST.encode())

    @pytest.mark.parametrize("text", [
        "", "hello", "-----BEGIN SSH SIGNATURE-----\n!!!\n-----END SSH SIGNATURE-----",
        "-----BEGIN SSH SIGNATURE-----\n" + base64.b64encode(b"SSHSIG\x00\x00\x00\x02").decode()
        + "\n-----END SSH SIGNATURE-----",
        "-----BEGIN SSH SIGNATURE-----\n" + base64.b64encode(b"SSHSIG\x00\x00\x00\x01\xff")
        .decode() + "\n-----END SSH SIGNATURE-----",
    ])
    def test_garbage_is_a_format_error(self, text: str) -> None:
        """Malformed armor, base64, version or truncation are SignatureFormatError."""
        with pytest.raises(SignatureFormatError):
            parse_signature(text)


class TestAllowedSigners:
    """The OpenSSH allowed_signers format, failing closed on what is not supported."""

    KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF0vesfsQvPRS0YU1o4rWjsyKhe6/+Mkb/6PBaWQqSzG")

    def test_principals_options_and_comments(self) -> None:
        """Quoted principal lists, namespaces= and trailing comments parse."""
        text = (f'# approvers\n\n"alice@x,al@x" namespaces="git,cosigner-policy" {self.KEY} '
                f'alice laptop\nbob@x {self.KEY}\n')
        signers = parse_allowed_signers(text)
        assert [s.principals for s in signers.signers] == [("alice@x", "al@x"), ("bob@x",)]
        assert signers.signers[0].namespaces == ("git", "cosigner-policy")
        assert signers.signers[1].allows(NAMESPACE)

    def test_other_namespaces_do_not_allow_policy_signing(self) -> None:
        """A key allowed for git only is not an approver."""
        signers = parse_allowed_signers(f'carol@x namespaces="git" {self.KEY}\n')
        assert signers.principals() == []

    def test_unsupported_options_skip_the_line(self) -> None:
        """cert-authority or valid-after lines never count (and say why)."""
        signers = parse_allowed_signers(
            f"ca@x cert-authority {self.KEY}\nold@x valid-before=\"20200101\" {self.KEY}\n")
        assert signers.signers == ()
        assert len(signers.skipped) == 2
        assert "cert-authority" in signers.skipped[0]

    @pytest.mark.parametrize("line", ["alice@x", "alice@x ssh-ed25519", "alice@x ssh-ed25519 !!!",
                                      "alice@x ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIF0vesfsQvPRS0YU"
                                      "1o4rWjsyKhe6/+Mkb/6PBaWQqSzG"])
    def test_malformed_lines_name_file_and_line(self, line: str) -> None:
        """A broken line is a configuration error naming file:line."""
        with pytest.raises(ConfigError, match=r"signers:2: "):
            parse_allowed_signers(f"# x\n{line}\n", "signers")

    def test_nobody_allowed_is_a_config_error(self, tmp_path: Path) -> None:
        """A signers file that lets nobody sign policies is refused at start."""
        path = tmp_path / "signers"
        path.write_text("# empty\n")
        with pytest.raises(ConfigError, match="COSIGNER_POLICY_SIGNERS"):
            load_allowed_signers(path)


class TestQuorum:
    """M valid signatures from distinct principals, over exactly this manifest."""

    def sign(self, approvers: Approvers, tmp_path: Path, *who: str,
             text: str = MANIFEST) -> list[Path]:
        paths = []
        for n, name in enumerate(who):
            path = tmp_path / f"{n}-{name}.sig"
            path.write_bytes(approvers.sign_text(name, text))
            paths.append(path)
        return paths

    def test_two_of_three(self, approvers: Approvers, tmp_path: Path) -> None:
        """alice and bob make 2 of 3; carol is missing."""
        signers = load_allowed_signers(approvers.allowed_signers)
        report = check_signatures(MANIFEST, self.sign(approvers, tmp_path, "alice", "bob"),
                                  signers, 2)
        assert report.ok
        assert report.signed == ("alice@example.com", "bob@example.com")
        assert report.missing == ("carol@example.com",)

    def test_the_same_approver_twice_counts_once(self, approvers: Approvers,
                                                 tmp_path: Path) -> None:
        """Two signatures by alice are one approver."""
        signers = load_allowed_signers(approvers.allowed_signers)
        report = check_signatures(MANIFEST, self.sign(approvers, tmp_path, "alice", "alice"),
                                  signers, 2)
        assert not report.ok
        assert report.signed == ("alice@example.com",)

    def test_an_unlisted_key_counts_for_nothing(self, approvers: Approvers,
                                                tmp_path: Path) -> None:
        """mallory is not in allowed_signers: named as such, not counted."""
        signers = load_allowed_signers(approvers.allowed_signers)
        report = check_signatures(MANIFEST, self.sign(approvers, tmp_path, "alice", "mallory"),
                                  signers, 2)
        assert not report.ok
        assert any("is not in" in p and "SHA256:" in p for p in report.problems)

    def test_a_signature_over_an_older_manifest(self, approvers: Approvers,
                                                tmp_path: Path) -> None:
        """bob signed the previous version of the bundle: it does not count."""
        signers = load_allowed_signers(approvers.allowed_signers)
        paths = self.sign(approvers, tmp_path, "alice")
        paths += self.sign(approvers, tmp_path / "..", "bob", text="b" * 64 + "  policy.yaml\n")
        report = check_signatures(MANIFEST, paths, signers, 2)
        assert not report.ok
        assert any("bob@example.com's signature does not verify" in p for p in report.problems)

    def test_aliases_sharing_a_principal_are_one_approver(self, approvers: Approvers,
                                                          tmp_path: Path) -> None:
        """Two keys listed under the same principal are one person."""
        lines = approvers.allowed_signers.read_text().splitlines()
        merged = [line.replace("bob@example.com", "alice@example.com") for line in lines]
        signers = parse_allowed_signers("\n".join(merged))
        report = check_signatures(MANIFEST, self.sign(approvers, tmp_path, "alice", "bob"),
                                  signers, 2)
        assert not report.ok
        assert len(report.signed) == 1

    def test_require_quorum_raises_unsigned(self, approvers: Approvers, bundle: Path) -> None:
        """Without enough signatures the bundle is an UnsignedPolicyError naming who."""
        signers = load_allowed_signers(approvers.allowed_signers)
        approvers.sign(bundle, "alice")
        policy = load_policy(bundle)
        text = read_manifest(bundle, policy.sources, policy.sha256)
        with pytest.raises(UnsignedPolicyError, match=r"signed: alice@example.com; missing: "
                                                      r"bob@example.com, carol@example.com"):
            require_quorum(text, bundle, signers, 2)
        approvers.sign(bundle, "carol")
        assert require_quorum(text, bundle, signers, 2).ok


class TestCli:
    """``policy sign`` wraps ssh-keygen; ``policy check`` reports the signatures."""

    def run(self, *args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COSIGNER, "policy", *map(str, args)], capture_output=True,
                              text=True, timeout=60)

    def test_sign_then_check(self, approvers: Approvers, bundle: Path) -> None:
        """Two signatures made with `policy sign` satisfy --quorum 2, not 3."""
        for who in ("alice", "bob"):
            done = self.run("sign", bundle, "--key", approvers.key(who), "--name", who)
            assert done.returncode == 0, done.stderr
        ok = self.run("check", bundle, "--signers", approvers.allowed_signers, "--quorum", 2)
        assert ok.returncode == 0, ok.stderr
        assert "signatures ok: 2 of 2 required" in ok.stdout
        short = self.run("check", bundle, "--signers", approvers.allowed_signers, "--quorum", 3)
        assert short.returncode == 2
        assert "missing: carol@example.com" in short.stderr

    def test_manifest_piped_to_ssh_keygen_is_a_valid_signature(self, approvers: Approvers,
                                                               bundle: Path) -> None:
        """The README's command line: policy manifest | ssh-keygen -Y sign."""
        manifest = subprocess.run([COSIGNER, "policy", "manifest", bundle],
                                  capture_output=True, check=True, timeout=60).stdout
        approvers.sign(bundle, "alice", manifest=manifest.decode())
        (bundle.parent / "policy.yaml.signatures" / "carol.sig").write_bytes(
            subprocess.run([approvers.keygen, "-Y", "sign", "-f", approvers.key("carol"),
                            "-n", NAMESPACE], input=manifest, capture_output=True,
                           check=True, timeout=60).stdout)
        ok = self.run("check", bundle, "--signers", approvers.allowed_signers, "--quorum", 2)
        assert ok.returncode == 0, ok.stderr
