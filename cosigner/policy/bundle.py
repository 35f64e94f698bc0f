"""A policy's bundle, its canonical manifest and its digest (DESIGN section 11).

The bundle is the policy file plus every list file it references.  Its
manifest is UTF-8 text, one line per file, ``<sha256 hex>  <relative/path>``,
sorted by path and newline-terminated; the bundle digest is the sha256 of the
manifest bytes.  Approvers sign exactly those bytes, so the loader computes the
compiled policy's ``sha256`` with :func:`digest` over the very bytes it parsed:
a verified signature over a manifest whose digest equals the compiled policy's
``sha256`` covers what is enforced, whatever happens to the files afterwards.

Pure code except :func:`read_manifest` and :func:`signature_files`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from cosigner.errors import PolicyError

#: The signatures of ``<policy file>`` are in ``<policy file>.signatures/``
#: (:mod:`cosigner.policy.signatures`).  Where they are is here, in the light module:
#: the daemon watches that directory without importing the signature checks.
SIGNATURE_SUFFIX = ".signatures"


def relative_name(policy_path: Path, file_path: Path) -> str:
    """The manifest's name for *file_path*: relative to the policy's directory, ``/``-separated."""
    relative = os.path.relpath(file_path, policy_path.parent)
    return posixpath.normpath(relative.replace(os.sep, "/"))


def manifest(files: Iterable[tuple[str, bytes]]) -> str:
    """The canonical manifest of ``(relative name, content)`` pairs (duplicates once)."""
    entries = {(name, hashlib.sha256(data).hexdigest()) for name, data in files}
    return "".join(f"{sha}  {name}\n" for name, sha in sorted(entries))


def digest(manifest_text: str) -> str:
    """The bundle digest: sha256 of the manifest's UTF-8 bytes."""
    return hashlib.sha256(manifest_text.encode("utf-8")).hexdigest()


def signature_dir(policy_path: Path) -> Path:
    """Where the bundle's signatures live: ``<policy file>.signatures/``."""
    return policy_path.with_name(policy_path.name + SIGNATURE_SUFFIX)


def signature_files(policy_path: Path) -> list[Path]:
    """The ``*.sig`` files of the bundle, sorted (none when the directory is absent)."""
    directory = signature_dir(policy_path)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.sig") if p.is_file())


def read_manifest(policy_path: Path, sources: Iterable[Path], expected_sha256: str) -> str:
    """Read the bundle's files again and return its manifest.

    *sources* and *expected_sha256* come from the compiled policy; the manifest
    is only returned when its digest is the policy's, i.e. the files on disk are
    still exactly what was loaded.

    Raises:
        PolicyError: a file cannot be read, or changed since the policy was loaded.
    """
    files: list[tuple[str, bytes]] = []
    for source in sources:
        try:
            files.append((relative_name(policy_path, source), source.read_bytes()))
        except OSError as exc:
            raise PolicyError([f"{source}:1: cannot read: {exc.strerror or exc}"]) from None
    text = manifest(files)
    if digest(text) != expected_sha256:
        raise PolicyError([f"{policy_path}:1: the bundle's files changed while it was read; "
                           f"try again"])
    return text
