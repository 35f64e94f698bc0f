"""The shared ``require_tool`` gate: skip without a tool, fail under COSIGNER_REQUIRE_ALL=1."""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.conftest import REQUIRE_ALL_ENV, require_tool

ABSENT = "cosigner-no-such-tool-xyz"


class TestRequireTool:
    """require_tool decides between running, skipping and failing."""

    def test_present_tool_returns_its_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A tool on PATH is returned as its full path."""
        monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
        assert require_tool(sys.executable, "python is missing") == shutil.which(sys.executable)

    def test_absent_tool_skips_with_the_reason(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without COSIGNER_REQUIRE_ALL a missing tool skips, giving the reason."""
        monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
        with pytest.raises(pytest.skip.Exception, match="xyz is not installed"):
            require_tool(ABSENT, "xyz is not installed")

    def test_absent_tool_fails_when_everything_is_required(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With COSIGNER_REQUIRE_ALL=1 a missing tool is a failure, not a skip."""
        monkeypatch.setenv(REQUIRE_ALL_ENV, "1")
        with pytest.raises(pytest.fail.Exception, match=f"xyz is not installed.*{REQUIRE_ALL_ENV}"):
            require_tool(ABSENT, "xyz is not installed")

    @pytest.mark.parametrize(("available", "outcome"), [(True, None),
                                                        (False, pytest.skip.Exception)])
    def test_callable_checks(self, monkeypatch: pytest.MonkeyPatch, available: bool,
                             outcome: type[BaseException] | None) -> None:
        """A callable check (e.g. "can I reach PostgreSQL?") gates the same way."""
        monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
        if outcome is None:
            assert require_tool(lambda: available, "service down") is None
        else:
            with pytest.raises(outcome):
                require_tool(lambda: available, "service down")
