"""``cosigner policy check|test|explain`` through the real entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import pytest

from cosigner.cli import main
from cosigner.cli.policy_tests import run_test_file

from .conftest import CUSTOMER, HEADER, HOT

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NOW = "2024-06-03T10:00:00+00:00"
TREASURY = "0x268cA167F7014588d08eEda38110721E7b8422Ca"  # in policies/*.yaml


class TestCheck:
    def test_good_policy(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A good policy exits 0 with a one-line summary."""
        assert main(["policy", "check", str(POLICIES / "treasury.yaml")]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1
        assert "5 rules, 5 limits" in out

    def test_bad_policy_lists_every_problem(self, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
        """A bad policy exits 2 and prints each problem with file:line."""
        path = tmp_path / "p.yaml"
        path.write_text(HEADER + "default: approve\non_limit: off\n", encoding="utf-8")
        assert main(["policy", "check", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}:6: default: approve is refused" in err
        assert f"{path}:7: on_limit must be a string" in err
        assert "2 problem(s)" in err


class TestTest:
    def test_example_policies_pass(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Every case of the shipped test files passes."""
        files = sorted(str(p) for p in POLICIES.glob("*.test.yaml"))
        assert len(files) == 2
        assert main(["policy", "test", *files]) == 0
        assert " 0 failed" in capsys.readouterr().out

    def test_broken_case_fails(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A case whose expectation is wrong fails with exit 1."""
        shutil.copy(POLICIES / "minimal.yaml", tmp_path / "minimal.yaml")
        (tmp_path / "m.test.yaml").write_text(f"""\
policy: minimal.yaml
now: "{NOW}"
cases:
  - name: wrongly expects approval
    item: {{id: 1, fromAddress: "{HOT}", toAddress: "{CUSTOMER}", amount: "1", chainId: "56"}}
    expect: {{action: approve, rule: treasury-sweeps, reason: "rule:x", invalid: bad_type}}
  - name: right
    item: {{id: 2, fromAddress: "{HOT}", toAddress: "{TREASURY}", amount: "1", chainId: "56"}}
    expect: {{action: approve}}
""", encoding="utf-8")
        assert main(["policy", "test", str(tmp_path / "m.test.yaml")]) == 1
        out = capsys.readouterr().out
        assert "FAIL" in out
        assert "expected action approve, rule treasury-sweeps" in out
        assert "    rule treasury-sweeps (line 14): no match: to is not in [treasury]" in out
        assert out.strip().endswith("1 passed, 1 failed")

    @pytest.mark.parametrize(("body", "fragment"), [
        ("policy: minimal.yaml\ncases: []\n", "cases must not be empty"),
        ("policy: minimal.yaml\ncases:\n  - {name: x, item: {}, expect: {action: go}}\n",
         "expected action must be one of"),
        ("policy: minimal.yaml\nnow: yesterday\ncases:\n  - {name: x, item: {}, "
         "expect: {action: hold}}\n", "now must be an ISO 8601 time"),
        ("policy: minimal.yaml\ncases:\n  - {name: x, item: [], expect: {action: hold}}\n",
         "item must be a mapping"),
        ("policy: minimal.yaml\ncases:\n  - name: x\n    item: {}\n    expect: {action: hold}\n"
         "    history: [{chainId: \"56\", amount: 5, ago: 1w}]\n", "amount of history entry"),
        ("policy: nope.yaml\ncases:\n  - {name: x, item: {}, expect: {action: hold}}\n",
         "file not found"),
        ("policy: [\n", "YAML syntax"),
        ("", "the test file is empty"),
        ("cases: []\n", "missing required key 'policy'"),
    ])
    def test_broken_test_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              body: str, fragment: str) -> None:
        """A broken test file exits 2 with file:line."""
        shutil.copy(POLICIES / "minimal.yaml", tmp_path / "minimal.yaml")
        (tmp_path / "t.test.yaml").write_text(body, encoding="utf-8")
        assert main(["policy", "test", str(tmp_path / "t.test.yaml")]) == 2
        assert fragment in capsys.readouterr().err

    def test_history_defaults_to_item_addresses(self) -> None:
        """run_test_file is usable as a library and returns one result per case."""
        results = run_test_file(POLICIES / "treasury.test.yaml")
        assert all(r.passed for r in results)
        assert len(results) == 18

    def test_bad_now_option(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--now must be an aware ISO time (exit 2 through the top-level handler)."""
        assert main(["policy", "test", "--now", "2024-01-01T00:00:00",
                     str(POLICIES / "minimal.test.yaml")]) == 2
        assert "needs a UTC offset" in capsys.readouterr().err
        assert main(["policy", "test", "--now", "soon", str(POLICIES / "minimal.test.yaml")]) == 2


class TestExplain:
    ITEM: ClassVar[dict[str, object]] = {"id": 7, "fromAddress": HOT, "toAddress": CUSTOMER,
                                         "amount": "2500", "chainId": "56"}

    def test_explains_rules_and_limits(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Every rule tried, every limit with usage, and the final action are printed."""
        code = main(["policy", "explain", str(POLICIES / "treasury.yaml"),
                     json.dumps(self.ITEM), "--now", "2024-06-08T12:00:00+00:00"])
        out = capsys.readouterr().out
        assert code == 0
        assert "rule small-payouts (line 63): no match: amount 2500 is not <= max 1000" in out
        assert ("rule business-hours-payouts (line 67): no match: sat 14:00 is outside days "
                "mon, tue, wed, thu, fri") in out
        assert "limit ethereum-daily: not in scope" in out
        assert "limit bsc-daily (bucket 56, window 1d): amount 0 + 2500 of 250000" in out
        assert out.strip().endswith("decision: hold (rule <default>; default)")

    def test_item_file_and_history(self, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
        """ITEM_JSON may be a file; --history adds approvals; the match is shown."""
        item_path = tmp_path / "item.json"
        item_path.write_text(json.dumps(self.ITEM | {"toAddress": TREASURY}), encoding="utf-8")
        history = tmp_path / "h.yaml"
        history.write_text('[{"chainId": "56", "amount": "249000", "ago": "2h"}]',
                           encoding="utf-8")
        code = main(["policy", "explain", str(POLICIES / "treasury.yaml"), str(item_path),
                     "--history", str(history), "--now", NOW])
        out = capsys.readouterr().out
        assert code == 0
        assert "rule treasury-sweeps (line 60): MATCH -> approve" in out
        assert "WOULD EXCEED" in out
        assert "limit:bsc-daily" in out

    def test_invalid_item(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An invalid item shows its reason."""
        main(["policy", "explain", str(POLICIES / "minimal.yaml"),
              json.dumps(self.ITEM | {"amount": "-1"})])
        assert "invalid item: amount_not_positive -> on_invalid hold" in capsys.readouterr().out

    @pytest.mark.parametrize("arg", ["{not json", "[1]", "/nonexistent/item.json"])
    def test_bad_item(self, arg: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Bad ITEM_JSON exits 2."""
        assert main(["policy", "explain", str(POLICIES / "minimal.yaml"), arg]) == 2
        assert "ITEM_JSON" in capsys.readouterr().err

    def test_bad_history(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad history file exits 2."""
        history = tmp_path / "h.yaml"
        history.write_text('[{"chainId": 56, "amount": "1", "ago": "2h"}]', encoding="utf-8")
        args = ["policy", "explain", str(POLICIES / "minimal.yaml"), json.dumps(self.ITEM)]
        assert main([*args, "--history", str(history)]) == 2
        assert main([*args, "--history", str(tmp_path / "missing.yaml")]) == 2
        history.write_text("", encoding="utf-8")
        assert main([*args, "--history", str(history)]) == 0
        capsys.readouterr()
