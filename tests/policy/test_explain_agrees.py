"""``policy explain`` is the daemon's decision: for random policies and items, the JSON that
``cosigner policy explain --json`` prints names the action and rule the daemon's
:func:`cosigner.decide.decide` gives (issue 8, section 3)."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cosigner.cli import main
from cosigner.decide import decide
from cosigner.models import Action, PendingItem, loads_checked
from cosigner.policy import CompiledPolicy, Ledger, try_load_policy

from .test_properties import EVM_POOL, POLICIES, TRON_POOL, _deny_rule, structured_items, times

RULE_ACTIONS = st.sampled_from(["reject", "hold", "approve"])


def _policy_dir(rule: str, tmp: Path) -> Path:
    text = (POLICIES / "treasury.yaml").read_text(encoding="utf-8")
    head, tail = text.split("rules:\n", 1)
    (tmp / "lists").mkdir()
    (tmp / "lists" / "sanctioned.txt").write_bytes(
        (POLICIES / "lists" / "sanctioned.txt").read_bytes())
    path = tmp / "p.yaml"
    path.write_text(head + "rules:\n" + rule + tail, encoding="utf-8")
    return path


def _explain_json(policy: Path, raw: dict[str, Any], now: datetime) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["policy", "explain", "--json", str(policy), json.dumps(raw),
                     "--now", now.isoformat()])
    assert code == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # one JSON object
    result: dict[str, Any] = json.loads(lines[0])
    return result


class TestExplainIsTheDaemon:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(action=RULE_ACTIONS, chain=st.sampled_from([None, "56", "1", "195"]),
           to=st.sampled_from([None, *EVM_POOL[3:], *TRON_POOL[2:]]),
           max_amount=st.sampled_from([None, "1", "500", "5000"]),
           raws=st.lists(structured_items, min_size=1, max_size=5), now=times)
    def test_explain_action_and_rule_are_the_daemons(
            self, action: str, chain: str | None, to: str | None, max_amount: str | None,
            raws: list[dict[str, Any]], now: datetime) -> None:
        """Random policy (a random rule on top of the example) and items: explain's action
        and rule are decide()'s as the daemon calls it; its trace's MATCH line (the rules
        walked through each condition's own definition) names the same rule."""
        with tempfile.TemporaryDirectory() as tmp:
            path = _policy_dir(_deny_rule(action, chain, to, max_amount), Path(tmp))
            policy = try_load_policy(path)
            assume(isinstance(policy, CompiledPolicy))  # a rule hiding every other is refused
            assert isinstance(policy, CompiledPolicy)
            for raw in raws:
                shown = _explain_json(path, raw, now)
                # The daemon reads items from the API's JSON, as explain reads its argument
                # (a float such as 0.0 comes back as the exact number text "0.0").
                item = PendingItem(loads_checked(json.dumps(raw)))
                daemon = decide(item, None, policy, Ledger(policy), now)
                assert (shown["action"], shown["rule"]) == (daemon.action.value, daemon.rule)
                assert shown["reasons"] == list(daemon.reasons)
                assert isinstance(shown["trace"], list)
                matches = [line for line in shown["trace"] if ": MATCH -> " in line]
                if daemon.rule.startswith("<"):
                    assert matches == []
                else:
                    assert matches[0].startswith(f"rule {daemon.rule} ")


class TestExplainJson:
    def test_one_object_with_action_rule_reasons_trace(self) -> None:
        """``--json`` prints one object with at least action, rule, reasons and trace."""
        raw = {"id": 1, "fromAddress": EVM_POOL[3], "toAddress": EVM_POOL[1],
               "amount": "120", "chainId": "56"}
        shown = _explain_json(POLICIES / "treasury.yaml", raw,
                              datetime.fromisoformat("2024-06-03T10:00:00+00:00"))
        assert {"action", "rule", "reasons", "trace"} <= shown.keys()
        assert shown["action"] in {a.value for a in Action}
        assert shown["trace"][-1].startswith("decision: ")

    def test_a_duplicate_key_is_held_as_the_daemon_holds_it(self, tmp_path: Path) -> None:
        """An ITEM_JSON repeating a key is held (duplicate_key), as the daemon would."""
        text = (f'{{"id": 1, "fromAddress": "{EVM_POOL[3]}", "toAddress": "{EVM_POOL[0]}", '
                f'"toAddress": "{EVM_POOL[4]}", "amount": "1", "chainId": "56"}}')
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["policy", "explain", "--json", str(POLICIES / "treasury.yaml"),
                         text]) == 0
        shown = json.loads(out.getvalue())
        assert (shown["action"], shown["reasons"]) == ("hold", ["invalid:duplicate_key"])
