"""Approvers with real ``ssh-keygen`` keys, for the signed-policy tests (DESIGN section 11).

Keys are made at run time in the test's directory: alice (ed25519), bob (ecdsa
nistp256), carol (rsa, signing with rsa-sha2-512) are the allowed signers;
mallory (ed25519) is not in ``allowed_signers``.  Signatures are made exactly as
the README tells approvers to: ``ssh-keygen -Y sign -n cosigner-policy`` over the
manifest bytes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cosigner.policy.bundle import read_manifest, signature_dir
from cosigner.policy.loader import load_policy
from cosigner.policy.signatures import NAMESPACE
from tests.conftest import require_tool

KEY_TYPES = {"alice": ("ed25519", []), "bob": ("ecdsa", ["-b", "256"]),
             "carol": ("rsa", ["-b", "2048"]), "mallory": ("ed25519", [])}
ALLOWED = ("alice", "bob", "carol")


def ssh_keygen() -> str:
    """The path of ``ssh-keygen`` (skip, or fail under COSIGNER_REQUIRE_ALL=1, without it)."""
    found = require_tool("ssh-keygen", "ssh-keygen is not installed (Debian: openssh-client)")
    assert found is not None
    return found


@dataclass
class Approvers:
    """Keys in ``directory`` and an ``allowed_signers`` file naming alice, bob and carol."""

    directory: Path
    keygen: str

    @property
    def allowed_signers(self) -> Path:
        return self.directory / "allowed_signers"

    def key(self, who: str) -> Path:
        return self.directory / who

    def sign_text(self, who: str, text: str, namespace: str = NAMESPACE) -> bytes:
        """An armored SSHSIG by *who* over *text*."""
        done = subprocess.run([self.keygen, "-Y", "sign", "-f", str(self.key(who)),
                               "-n", namespace], input=text.encode("utf-8"),
                              capture_output=True, check=True, timeout=60)
        return done.stdout

    def sign(self, policy: Path, *who: str, manifest: str | None = None) -> None:
        """Each of *who* signs the bundle's current manifest (or *manifest*) into
        ``<policy>.signatures/<who>.sig``."""
        if manifest is None:
            compiled = load_policy(policy)
            manifest = read_manifest(policy, compiled.sources, compiled.sha256)
        directory = signature_dir(policy)
        directory.mkdir(exist_ok=True)
        for name in who:
            (directory / f"{name}.sig").write_bytes(self.sign_text(name, manifest))

    def unsign(self, policy: Path, who: Iterable[str] | None = None) -> None:
        """Remove *who*'s signatures (default: all)."""
        directory = signature_dir(policy)
        for path in directory.glob("*.sig"):
            if who is None or path.stem in who:
                path.unlink()


def make_approvers(directory: Path) -> Approvers:
    """Generate the four keys and the allowed_signers file."""
    keygen = ssh_keygen()
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for who, (kind, extra) in KEY_TYPES.items():
        subprocess.run([keygen, "-q", "-t", kind, *extra, "-N", "", "-C", f"{who}@test",
                        "-f", str(directory / who)], check=True, timeout=120)
        if who in ALLOWED:
            public = (directory / f"{who}.pub").read_text().split()
            lines.append(f'{who}@example.com namespaces="{NAMESPACE}" {public[0]} {public[1]}')
    (directory / "allowed_signers").write_text("\n".join(lines) + "\n")
    return Approvers(directory, keygen)

