"""The bundle's canonical manifest and digest (DESIGN section 11)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from cosigner.errors import PolicyError
from cosigner.policy.bundle import digest, manifest, read_manifest, relative_name
from cosigner.policy.loader import load_policy

COSIGNER = Path(sys.executable).with_name("cosigner")

POLICY = """\
version: 1
name: bundle-test
chains:
  "56": {name: bsc, address: evm, decimals: 18}
lists:
  zeta: {file: lists/zeta.txt}
  alpha: {file: ./lists/alpha.txt}
  again: {file: lists/zeta.txt}
rules:
  - name: block
    to: {in: [zeta, alpha, again]}
    action: reject
"""
ZETA = "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8\n"
ALPHA = "# comment only\n"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "zeta.txt").write_text(ZETA)
    (tmp_path / "lists" / "alpha.txt").write_text(ALPHA)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TestManifest:
    """The manifest is canonical: sorted relative paths, two spaces, newline-terminated."""

    def test_exact_text(self, bundle: Path) -> None:
        """Every file once, sorted by path, relative to the policy's directory."""
        policy = load_policy(bundle)
        text = read_manifest(bundle, policy.sources, policy.sha256)
        assert text == (f"{sha(ALPHA)}  lists/alpha.txt\n"
                        f"{sha(ZETA)}  lists/zeta.txt\n"
                        f"{sha(POLICY)}  policy.yaml\n")

    def test_the_policy_sha256_is_the_digest_of_the_manifest(self, bundle: Path) -> None:
        """What metrics and the journal call the policy's sha256 is the bundle digest."""
        policy = load_policy(bundle)
        text = read_manifest(bundle, policy.sources, policy.sha256)
        assert policy.sha256 == digest(text) == sha(text)

    def test_a_list_file_change_changes_the_digest(self, bundle: Path) -> None:
        """Editing a referenced list file is editing the bundle."""
        before = load_policy(bundle).sha256
        (bundle.parent / "lists" / "alpha.txt").write_text(ZETA)
        assert load_policy(bundle).sha256 != before

    def test_files_changed_since_loading_are_refused(self, bundle: Path) -> None:
        """read_manifest never returns a manifest of other bytes than were loaded."""
        policy = load_policy(bundle)
        (bundle.parent / "lists" / "zeta.txt").write_text(ALPHA)
        with pytest.raises(PolicyError, match="changed while it was read"):
            read_manifest(bundle, policy.sources, policy.sha256)

    def test_pure_manifest_dedupes_and_sorts(self) -> None:
        """The same file twice is one line; order of reading does not matter."""
        files = [("b", b"2"), ("a", b"1"), ("b", b"2")]
        assert manifest(files) == manifest(list(reversed(files)))
        assert manifest(files).count("\n") == 2

    def test_relative_name_outside_the_directory(self, tmp_path: Path) -> None:
        """A list beside the policy's directory keeps its ../ path."""
        name = relative_name(tmp_path / "p" / "policy.yaml", tmp_path / "shared" / "x.txt")
        assert name == "../shared/x.txt"


class TestCommands:
    """``cosigner policy manifest|digest`` print exactly the manifest and its sha256."""

    def test_manifest_and_digest(self, bundle: Path) -> None:
        """The printed manifest's sha256 is the printed digest."""
        out = subprocess.run([COSIGNER, "policy", "manifest", bundle], capture_output=True,
                             check=True, timeout=60).stdout
        dig = subprocess.run([COSIGNER, "policy", "digest", bundle], capture_output=True,
                             check=True, text=True, timeout=60).stdout.strip()
        assert hashlib.sha256(out).hexdigest() == dig == load_policy(bundle).sha256
        assert out.endswith(b"\n")
        assert out.count(b"\n") == 3

    def test_a_broken_policy_exits_2(self, bundle: Path) -> None:
        """No manifest of a policy that does not load."""
        bundle.write_text("version: 1\n")
        done = subprocess.run([COSIGNER, "policy", "digest", bundle], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2
        assert str(bundle) in done.stderr
