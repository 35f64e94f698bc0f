"""Policy test files (``*.test.yaml``, DESIGN section 3), like ``opa test``.

Each case is decided by :func:`cosigner.decide.decide`, the daemon's own decision.

::

    policy: treasury.yaml                 # relative to the test file
    now: "2024-06-03T10:00:00+00:00"      # optional; per case too; default: the current time
    cases:
      - name: daily limit holds the next approval
        history: [{chainId: "56", amount: "249999", ago: 1h}]   # to/from default to the item's
        item: {id: 2, fromAddress: "0x...", toAddress: "0x...", amount: "2", chainId: "56"}
        expect: {action: hold, reason: "limit:bsc-daily"}       # and/or rule, invalid

A broken test file (or a policy that does not load) raises :class:`PolicyError`;
a case whose decision differs from ``expect`` is a failed :class:`CaseResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from cosigner.decide import Outcome, decide
from cosigner.durations import EXAMPLES as DURATION_EXAMPLES
from cosigner.durations import parse_duration
from cosigner.errors import PolicyError
from cosigner.models import Action, JsonNumber, PendingItem
from cosigner.policy.ledger import Approval, Ledger
from cosigner.policy.loader import load_policy
from cosigner.policy.model import CompiledPolicy
from cosigner.policy.nodes import BOOL, FLOAT, INT, NULL, STR, Reader, describe, line

FILE_KEYS = ("policy", "now", "cases")
CASE_KEYS = ("name", "now", "history", "item", "expect")
EXPECT_KEYS = ("action", "rule", "reason", "invalid")
HISTORY_KEYS = ("chainId", "amount", "ago", "to", "from")
TIMESTAMP = "tag:yaml.org,2002:timestamp"


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one test case."""

    file: str
    name: str
    line: int
    passed: bool
    detail: str
    trace: tuple[str, ...] = ()  # the decision's trace (every rule and limit tried)


@dataclass(frozen=True, slots=True)
class _Expect:
    action: Action
    rule: str | None
    reason: str | None
    invalid: str | None

    def mismatch(self, d: Outcome) -> str | None:
        wrong = []
        if d.action is not self.action:
            wrong.append(f"action {self.action.value}")
        if self.rule is not None and d.rule != self.rule:
            wrong.append(f"rule {self.rule}")
        if self.reason is not None and self.reason not in d.reasons:
            wrong.append(f"reason {self.reason}")
        if self.invalid is not None and d.invalid_reason != self.invalid:
            wrong.append(f"invalid {self.invalid}")
        if not wrong:
            return None
        return (f"expected {', '.join(wrong)}; got {d.action.value} (rule {d.rule}; "
                f"{', '.join(d.reasons)})")


def _value(node: yaml.Node) -> Any:
    """A node as the JSON-ish value the API would send (floats keep their text)."""
    if isinstance(node, yaml.MappingNode):
        return {str(_value(k)): _value(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_value(v) for v in node.value]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == INT:
        return yaml.SafeLoader("").construct_yaml_int(node)
    if node.tag == FLOAT:
        return JsonNumber(node.value)
    if node.tag == BOOL:
        return yaml.SafeLoader("").construct_yaml_bool(node)
    if node.tag == NULL:
        return None
    return node.value


_Case = tuple[str, int, dict[str, Any], list[Approval], "_Expect", datetime]


class _TestFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.r = Reader(str(path), self.problems)

    def _now(self, node: yaml.Node) -> datetime | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (STR, TIMESTAMP):
            self.r.error(node, f"now must be an ISO 8601 time, not {describe(node)}")
            return None
        try:
            now = datetime.fromisoformat(node.value)
        except ValueError:
            now = None
        if now is None or now.tzinfo is None:
            self.r.error(node, f"now must be an ISO 8601 time with a UTC offset, "
                               f"not {node.value!r}")
            return None
        return now

    def _history(self, node: yaml.Node, item: dict[str, Any],
                 now: datetime) -> list[Approval]:
        r = self.r
        out = []
        for entry in r.sequence(node, "history", non_empty=False):
            spec = r.mapping(entry, "history entry", HISTORY_KEYS, ("chainId", "amount", "ago"))
            if spec is None or len(spec) < 3 or not {"chainId", "amount", "ago"} <= spec.keys():
                continue
            chain = r.string(spec["chainId"][1], "chainId of history entry")
            amount = r.decimal(spec["amount"][1], "amount of history entry", positive=True)
            ago_text = r.string(spec["ago"][1], "ago of history entry")
            ago = parse_duration(ago_text) if ago_text is not None else None
            if ago_text is not None and ago is None:
                r.error(spec["ago"][1], f"ago must look like {DURATION_EXAMPLES}, "
                                        f"not {ago_text!r}")
            to = r.each(spec, "to", r.string, "to of history entry")
            source = r.each(spec, "from", r.string, "from of history entry")
            if chain is None or amount is None or ago is None:
                continue
            out.append(Approval(chain, str(source or item.get("fromAddress", "")),
                                str(to or item.get("toAddress", "")), amount, now - ago))
        return out

    def _expect(self, node: yaml.Node) -> _Expect | None:
        r = self.r
        spec = r.mapping(node, "expect", EXPECT_KEYS, ("action",))
        if spec is None or "action" not in spec:
            return None
        action = r.choice(spec["action"][1], "expected action", tuple(a.value for a in Action))
        rule = r.each(spec, "rule", r.string, "expected rule")
        reason = r.each(spec, "reason", r.string, "expected reason")
        invalid = r.each(spec, "invalid", r.string, "expected invalid reason")
        return None if action is None else _Expect(Action(action), rule, reason, invalid)

    def _root(self) -> yaml.Node:
        try:
            text = self.path.read_text(encoding="utf-8")
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError([f"{self.path}:1: cannot read test file: {exc}"]) from exc
        except yaml.MarkedYAMLError as exc:
            at = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
            raise PolicyError([f"{self.path}:{at}: YAML syntax: {exc.problem}"]) from exc
        if root is None:
            raise PolicyError([f"{self.path}:1: the test file is empty"])
        return root

    def _case(self, case: yaml.Node, file_now: datetime) -> _Case | None:
        r = self.r
        spec = r.mapping(case, "case", CASE_KEYS, ("name", "item", "expect"))
        if spec is None or not {"name", "item", "expect"} <= spec.keys():
            return None
        name = r.string(spec["name"][1], "case name")
        now = r.each(spec, "now", self._now) or file_now
        item = _value(spec["item"][1])
        if not isinstance(item, dict):
            r.error(spec["item"][1], "item must be a mapping")
            return None
        history = r.each(spec, "history", lambda n, i=item, t=now: self._history(n, i, t))
        expect = self._expect(spec["expect"][1])
        if name is None or expect is None:
            return None
        return name, line(case), item, history or [], expect, now

    def run(self, default_now: datetime) -> list[CaseResult]:
        r = self.r
        top = r.mapping(self._root(), "the test file", FILE_KEYS, ("policy", "cases"))
        if top is None or "policy" not in top or "cases" not in top:
            raise PolicyError(self.problems)
        policy_name = r.string(top["policy"][1], "policy")
        file_now = r.each(top, "now", self._now) or default_now
        if policy_name is None:
            raise PolicyError(self.problems)
        policy = load_policy(self.path.parent / policy_name)
        cases = [c for c in (self._case(case, file_now)
                             for case in r.sequence(top["cases"][1], "cases")) if c is not None]
        if self.problems:
            raise PolicyError(self.problems)
        return [self._run_case(policy, *c) for c in cases]

    def _run_case(self, policy: CompiledPolicy, name: str, at: int, item: dict[str, Any],
                  history: list[Approval], expect: _Expect, now: datetime) -> CaseResult:
        # The daemon's own decision (cosigner.decide), for an id never seen before.
        outcome = decide(PendingItem(item), None, policy, Ledger(policy, history), now,
                         explain=True)
        why = expect.mismatch(outcome)
        return CaseResult(str(self.path), name, at, why is None, why or "", outcome.trace)


def run_test_file(path: str | Path, now: datetime | None = None) -> list[CaseResult]:
    """Run every case of the test file at *path*; PolicyError when the file or policy is broken."""
    return _TestFile(Path(path)).run(now or datetime.now(UTC))


def load_history(path: str | Path, item: dict[str, Any], now: datetime) -> list[Approval]:
    """Approvals from a YAML/JSON list in the test-file ``history`` format."""
    reader = _TestFile(Path(path))
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyError([f"{path}:1: cannot read history: {exc}"]) from exc
    if root is None:
        return []
    approvals = reader._history(root, item, now)
    if reader.problems:
        raise PolicyError(reader.problems)
    return approvals
