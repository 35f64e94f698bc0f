"""``cosigner shard new --out FILE`` (issue 11 item 6): a throwaway test shard the sandbox
walkthrough can use, loudly not for production, never overwriting a file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cosigner.cli import main
from cosigner.signing import load_shard


class TestShardNew:
    def test_writes_a_loadable_0600_shard(self, tmp_path: Path,
                                          cosigner_env: Callable[..., None],
                                          capsys: pytest.CaptureFixture[str]) -> None:
        """The file loads with the default password ("1bitpay" + merchant no), mode 0600,
        and stderr says it is not for production."""
        cosigner_env(MERCHANT_NO="M-NEW-1")
        out = tmp_path / "keys" / "shard.pfx"
        assert main(["shard", "new", "--out", str(out)]) == 0
        captured = capsys.readouterr()
        assert "NOT FOR PRODUCTION" in captured.err
        assert out.stat().st_mode & 0o777 == 0o600
        shard = load_shard(out, "1bitpayM-NEW-1")
        assert shard.info.key_bits == 2048
        assert "not for production" in shard.info.subject

    def test_refuses_to_overwrite(self, tmp_path: Path, cosigner_env: Callable[..., None],
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """An existing file is left alone: exit 2 naming --out."""
        cosigner_env(MERCHANT_NO="M-NEW-1")
        out = tmp_path / "shard.pfx"
        out.write_bytes(b"precious")
        assert main(["shard", "new", "--out", str(out)]) == 2
        assert "refusing to overwrite" in capsys.readouterr().err
        assert out.read_bytes() == b"precious"
