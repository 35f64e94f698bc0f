"""`cosigner policy explain` is the daemon's own decision: for every item of an integration
run (approvable, sanctioned, over the amount bound, malformed, over a limit), explain --json
at the decision's time and with the approvals recorded before it gives the action and rule
the daemon journaled."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cosigner.cli import main
from tests.daemon.conftest import MAX_COUNT, SANCTIONED, Rig, address, item


@pytest.fixture
def explain(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(policy: str, raw: dict[str, Any], now: str, history: str) -> dict[str, Any]:
        capsys.readouterr()
        code = main(["policy", "explain", "--json", "--now", now, "--history", history,
                     policy, json.dumps(raw)])
        out = capsys.readouterr().out
        assert code in (0, 1), out
        result: dict[str, Any] = json.loads(out)
        return result
    return run


async def test_explain_agrees_with_every_journaled_decision(rig: Rig, explain: Any) -> None:
    """Each item's journaled action and rule are what explain says, limits included."""
    await rig.add(*(item("1", to=address(0x70 + n)) for n in range(MAX_COUNT + 2)),
                  item("5", to=SANCTIONED), item("500"), item("-1"),
                  item("1", to=address(0x7A) + " "), item("2", chain="999"))
    daemon = rig.build()
    assert (await daemon.pipeline.poll()).ok
    records = rig.latest()
    listed = {int(i["item"]["id"]): i["item"] for i in await rig.admin.items()}
    assert set(records) == set(listed)
    approvals: list[dict[str, Any]] = []
    checked = 0
    for record in sorted(records.values(), key=lambda r: r.seq):
        history = rig.tmp / f"history-{record.item_id}.json"
        now = record.created_at
        history.write_text(json.dumps([
            {"chainId": a["chainId"], "amount": a["amount"], "to": a["to"],
             "from": a["from"], "ago": f"{max(0, int((now - a['at']).total_seconds()))}s"}
            for a in approvals]), encoding="utf-8")
        said = explain(str(rig.policy_path), listed[record.item_id], now.isoformat(),
                       str(history))
        assert (said["action"], said["rule"]) == (record.action.value, record.rule), record
        checked += 1
        if record.action.value == "approve":
            approvals.append({"chainId": record.chain_id, "amount": record.amount_text,
                              "to": record.to_address, "from": record.from_address,
                              "at": record.created_at})
    assert checked == len(listed)
    assert sum(r.reasons == (f"limit:{'bsc-count'}",) for r in records.values()) == 2
    await daemon.close()
