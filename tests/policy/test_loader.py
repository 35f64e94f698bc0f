"""The strict loader: every trap of issue 4 refused with its exact file:line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cosigner.errors import ConfigError, PolicyError
from cosigner.models import Action
from cosigner.policy import CompiledPolicy, load_policy, try_load_policy

from .conftest import CUSTOMER, HEADER, T_TREASURY, TREASURY, evm, tron

Problems = Callable[..., list[str]]


def only(found: list[str], prefix: str, fragment: str) -> None:
    """Assert exactly one problem, starting with *prefix* (file:line) and containing *fragment*."""
    assert len(found) == 1, found
    assert found[0].startswith(prefix + ": "), found
    assert fragment in found[0], found


class TestKeys:
    def test_unknown_top_level_key(self, problems: Problems) -> None:
        """An unknown key at the top is refused at its line."""
        only(problems("acton: hold\n"), "p.yaml:6", "unknown key 'acton'")

    def test_unknown_key_in_rule(self, problems: Problems) -> None:
        """A misspelt condition in a rule is refused, not ignored."""
        found = problems("""\
            rules:
              - name: r
                too: {in: [x]}
                action: hold
            """)
        only(found, "p.yaml:8", "unknown key 'too' in entry of rules")

    def test_duplicate_top_level_key(self, problems: Problems) -> None:
        """A key given twice is refused with both lines."""
        only(problems("default: hold\ndefault: reject\n"), "p.yaml:7",
             "duplicate key 'default' in the policy (first at line 6)")

    def test_duplicate_key_in_rule(self, problems: Problems) -> None:
        """A duplicate key inside a rule is refused (YAML would keep the last silently)."""
        found = problems("""\
            rules:
              - name: r
                action: approve
                action: hold
            """)
        only(found, "p.yaml:9", "duplicate key 'action'")

    def test_missing_required_key(self, problems: Problems) -> None:
        """A rule without an action is refused at the rule."""
        only(problems("rules:\n  - name: r\n"), "p.yaml:7", "missing required key 'action'")

    def test_unquoted_chain_id(self, problems: Problems) -> None:
        """A chain id YAML read as a number is refused."""
        header = "version: 1\nname: t\nchains:\n  56: {name: bsc, address: evm, decimals: 18}\n"
        only(problems("", header=header), "p.yaml:4", "56 unquoted, which YAML reads as a number")


class TestNumbersWhereStringsBelong:
    def test_unquoted_hex_address_in_list(self, problems: Problems) -> None:
        """An unquoted 0x address is a YAML hex integer and is refused."""
        found = problems(f"lists:\n  treasury:\n    - {TREASURY}\n")
        only(found, "p.yaml:8", "reads as a hex number (quote it)")

    def test_unquoted_hex_address_in_rule(self, problems: Problems) -> None:
        """An unquoted 0x address in a rule condition is refused."""
        found = problems(f"rules:\n  - name: r\n    to: {{in: [{TREASURY}]}}\n    action: hold\n")
        only(found, "p.yaml:8", "hex number")

    def test_unquoted_integer_amount(self, problems: Problems) -> None:
        """An amount written as a bare number is refused."""
        found = problems("rules:\n  - name: r\n    amount: {max: 1000}\n    action: hold\n")
        only(found, "p.yaml:8", "quoted decimal string")

    def test_leading_zero_octal_amount(self, problems: Problems) -> None:
        """``012`` is a YAML 1.1 octal integer, refused as an amount."""
        found = problems("rules:\n  - name: r\n    amount: {min: 012}\n    action: hold\n")
        only(found, "p.yaml:8", "012 unquoted, which YAML reads as a number")

    def test_octal_count(self, problems: Problems) -> None:
        """A whole number written in octal is refused even where a number is expected."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_count: 012\n")
        only(found, "p.yaml:9", "plain decimal digits, not 012")

    def test_hex_count(self, problems: Problems) -> None:
        """A whole number written in hex is refused."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_count: 0x1F\n")
        only(found, "p.yaml:9", "plain decimal digits, not 0x1F")

    def test_exponent_amount(self, problems: Problems) -> None:
        """``1e3`` is not a plain decimal amount."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_amount: 1e3\n")
        only(found, "p.yaml:9", "plain decimal like")

    def test_float_amount(self, problems: Problems) -> None:
        """A float amount is refused (money is never a float)."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_amount: 10.5\n")
        only(found, "p.yaml:9", "10.5 unquoted, which YAML reads as a float")

    def test_float_exponent_amount(self, problems: Problems) -> None:
        """``1.0e+3`` is a YAML float and refused."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_amount: 1.0e+3\n")
        only(found, "p.yaml:9", "reads as a float")

    def test_nan_amount(self, problems: Problems) -> None:
        """``.nan`` is refused."""
        found = problems("rules:\n  - name: r\n    amount: {max: .nan}\n    action: hold\n")
        only(found, "p.yaml:8", ".nan unquoted")

    def test_inf_amount(self, problems: Problems) -> None:
        """``.inf`` is refused."""
        found = problems("rules:\n  - name: r\n    amount: {max: .inf}\n    action: hold\n")
        only(found, "p.yaml:8", ".inf unquoted")

    def test_quoted_nan_amount(self, problems: Problems) -> None:
        """A quoted ``"NaN"`` is not a plain decimal either."""
        found = problems("rules:\n  - name: r\n    amount: {max: \"NaN\"}\n    action: hold\n")
        only(found, "p.yaml:8", "plain decimal")


class TestBooleans:
    def test_no_as_default(self, problems: Problems) -> None:
        """``default: no`` is a YAML boolean, not an action."""
        only(problems("default: no\n"), "p.yaml:6",
             "no unquoted, which YAML 1.1 reads as a boolean")

    def test_off_as_name(self, problems: Problems) -> None:
        """``off`` where a string is expected is refused."""
        found = problems("rules:\n  - name: off\n    action: hold\n")
        only(found, "p.yaml:7", "off unquoted, which YAML 1.1 reads as a boolean")

    def test_boolean_day(self, problems: Problems) -> None:
        """A boolean in a list of days is refused."""
        found = problems("rules:\n  - name: r\n    time: {days: [on]}\n    action: hold\n")
        only(found, "p.yaml:8", "boolean")


class TestLimits:
    def test_negative_max_amount(self, problems: Problems) -> None:
        """A negative max_amount is refused."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_amount: \"-5\"\n")
        only(found, "p.yaml:9", "must be positive")

    def test_zero_max_amount(self, problems: Problems) -> None:
        """A zero max_amount is refused (it would be a disguised deny)."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_amount: \"0\"\n")
        only(found, "p.yaml:9", "must be positive")

    def test_negative_max_count(self, problems: Problems) -> None:
        """A negative max_count is refused."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_count: -1\n")
        only(found, "p.yaml:9", "must be at least 1")

    def test_zero_max_count(self, problems: Problems) -> None:
        """A zero max_count is refused."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_count: 0\n")
        only(found, "p.yaml:9", "must be at least 1")

    def test_limit_without_maximum(self, problems: Problems) -> None:
        """A limit with neither max_amount nor max_count is refused."""
        only(problems("limits:\n  - name: l\n    window: 1h\n"), "p.yaml:7",
             "needs max_amount and/or max_count")

    def test_bad_window(self, problems: Problems) -> None:
        """A window must be a number and a unit."""
        found = problems("limits:\n  - name: l\n    window: 1w\n    max_count: 1\n")
        only(found, "p.yaml:8", "must look like 30m, 24h or 7d")

    def test_window_too_long(self, problems: Problems) -> None:
        """A window beyond a year is refused."""
        found = problems("limits:\n  - name: l\n    window: 400d\n    max_count: 1\n")
        only(found, "p.yaml:8", "longer than 366d")

    def test_bad_per(self, problems: Problems) -> None:
        """``per`` is chain, to or from."""
        found = problems("limits:\n  - name: l\n    window: 1h\n    max_count: 1\n    per: day\n")
        only(found, "p.yaml:10", "per of limit 'l' must be one of chain, to, from")

    def test_duplicate_limit_name(self, problems: Problems) -> None:
        """Two limits with one name are refused."""
        found = problems("limits:\n  - {name: l, window: 1h, max_count: 1}\n"
                         "  - {name: l, window: 1h, max_count: 2}\n")
        only(found, "p.yaml:8", "duplicate name 'l' in limits (first at line 7)")


class TestLists:
    def test_rule_names_missing_list(self, problems: Problems) -> None:
        """A rule naming a list that does not exist is refused."""
        found = problems("rules:\n  - name: r\n    to: {in: [treasury]}\n    action: approve\n")
        only(found, "p.yaml:8", "names list 'treasury', which does not exist")

    def test_missing_list_file(self, problems: Problems) -> None:
        """A list file that does not exist is refused at its line in the policy."""
        found = problems("lists:\n  bad: {file: lists/nope.txt}\n")
        only(found, "p.yaml:7", "list file 'lists/nope.txt' not found")

    def test_bad_checksum_inline(self, problems: Problems) -> None:
        """A mixed-case evm address with a wrong EIP-55 checksum is refused."""
        broken = TREASURY[:-1] + ("A" if TREASURY[-1] != "A" else "B")
        broken = broken[:2] + broken[2:3].swapcase() + broken[3:]
        found = problems(f"lists:\n  x: [\"{broken}\"]\n")
        only(found, "p.yaml:7", "EIP-55")

    def test_bad_tron_checksum_in_list_file(self, problems: Problems) -> None:
        """A tron address failing base58check in a list file is refused with the list file line."""
        good = tron("x")
        bad = good[:-1] + ("1" if good[-1] != "1" else "2")
        found = problems("lists:\n  s: {file: lists/s.txt}\n",
                         files={"lists/s.txt": f"# header\n{good}\n\n{bad}  # typo\n"})
        only(found, "lists/s.txt:4", "fails its tron base58check checksum")

    def test_list_file_entries_load(self, compile_: Callable[..., CompiledPolicy]) -> None:
        """List files accept comments, blank lines and lowercase evm addresses."""
        policy = compile_("lists:\n  s: {file: lists/s.txt}\n",
                          files={"lists/s.txt": f"# c\n{TREASURY.lower()}\n\n{tron('y')} # t\n"})
        assert policy.lists["s"].size == 2
        assert len(policy.sources) == 2

    def test_address_with_whitespace(self, problems: Problems) -> None:
        """An address with a zero-width character is refused."""
        found = problems(f"lists:\n  x: [\"{TREASURY}\\u200b\"]\n")
        only(found, "p.yaml:7", "zero-width")

    def test_address_of_no_declared_format(self, problems: Problems) -> None:
        """An address that is neither evm nor tron needs an ``other`` chain."""
        found = problems("lists:\n  x: [\"bc1qxyz\"]\n")
        only(found, "p.yaml:7", "neither evm nor tron")

    def test_other_format_accepts_any_clean_text(self, write: Callable[..., Path]) -> None:
        """With an ``other`` chain, arbitrary printable addresses are accepted."""
        path = write("version: 1\nname: t\nchains:\n  \"7\": {name: x, address: other, decimals: 8}"
                     "\nlists:\n  x: [\"bc1qxyz\", \"" + TREASURY + "\", \"" + T_TREASURY + "\"]\n")
        assert load_policy(path).lists["x"].size == 3

    def test_bad_list_name(self, problems: Problems) -> None:
        """List names are lowercase identifiers."""
        only(problems("lists:\n  Treasury: []\n"), "p.yaml:7", "list name 'Treasury'")

    def test_list_file_not_utf8(self, problems: Problems, tmp_path: Path) -> None:
        """A list file that is not UTF-8 is refused with its line."""
        (tmp_path / "l.txt").write_bytes(b"# ok\n\xff\xfe\n")
        found = problems("lists:\n  s: {file: l.txt}\n")
        only(found, "l.txt:2", "not valid UTF-8")


class TestActions:
    def test_default_approve(self, problems: Problems) -> None:
        """``default: approve`` is refused."""
        only(problems("default: approve\n"), "p.yaml:6", "default: approve is refused")

    def test_on_limit_approve(self, problems: Problems) -> None:
        """``on_limit: approve`` is refused."""
        only(problems("on_limit: approve\n"), "p.yaml:6", "on_limit: approve is refused")

    def test_on_invalid_unknown(self, problems: Problems) -> None:
        """``on_invalid`` is hold or reject."""
        only(problems("on_invalid: ignore\n"), "p.yaml:6", "must be hold or reject")

    def test_unknown_rule_action(self, problems: Problems) -> None:
        """A rule action outside approve/reject/hold is refused."""
        only(problems("rules:\n  - name: r\n    action: allow\n"), "p.yaml:8",
             "must be one of approve, reject, hold")

    def test_fallbacks_default_to_hold(self, compile_: Callable[..., CompiledPolicy]) -> None:
        """Without default/on_invalid/on_limit every fallback is hold."""
        policy = compile_()
        assert (policy.default, policy.on_invalid, policy.on_limit) == (Action.HOLD,) * 3

    def test_fallbacks_may_reject(self, compile_: Callable[..., CompiledPolicy]) -> None:
        """Fallbacks may be reject."""
        policy = compile_("default: reject\non_invalid: reject\non_limit: reject\n")
        assert (policy.default, policy.on_invalid, policy.on_limit) == (Action.REJECT,) * 3


class TestShadowing:
    def test_rule_behind_broader_rule(self, problems: Problems) -> None:
        """A rule an earlier broader rule always matches first is refused, naming both."""
        found = problems(f"""\
            rules:
              - name: all-small
                amount: {{max: "1000"}}
                action: reject
              - name: small-to-customer
                chain: "56"
                to: {{in: ["{CUSTOMER}"]}}
                amount: {{max: "10"}}
                action: approve
            """)
        only(found, "p.yaml:10", "rule 'small-to-customer' can never match: the earlier rule "
                                 "'all-small' (line 7)")

    def test_rule_with_list_behind_list_rule(self, problems: Problems) -> None:
        """A literal destination inside an earlier rule's list is shadowed."""
        found = problems(f"""\
            lists:
              t: ["{TREASURY}", "{CUSTOMER}"]
            rules:
              - name: to-list
                to: {{in: [t]}}
                action: approve
              - name: to-one
                to: {{in: ["{TREASURY.lower()}"]}}
                action: reject
            """)
        only(found, "p.yaml:12", "'to-one' can never match: the earlier rule 'to-list'")

    def test_not_in_excludes_everything(self, problems: Problems) -> None:
        """A rule whose not_in removes all of its in can never match."""
        found = problems(f"""\
            rules:
              - name: empty
                to: {{in: ["{CUSTOMER}"], not_in: ["{CUSTOMER}"]}}
                action: approve
            """)
        only(found, "p.yaml:7", "its not_in excludes every address of its in")

    def test_narrower_rule_first_is_fine(self, compile_: Callable[..., CompiledPolicy]) -> None:
        """A narrow rule before a broad one is the normal way to write policies."""
        policy = compile_("""\
            rules:
              - name: tiny
                amount: {max: "10"}
                action: approve
              - name: small
                amount: {max: "1000"}
                action: hold
            """)
        assert [r.name for r in policy.rules] == ["tiny", "small"]

    def test_time_window_does_not_cover_wider(
            self, compile_: Callable[..., CompiledPolicy]) -> None:
        """A business-hours rule does not shadow an any-time rule after it."""
        policy = compile_("""\
            rules:
              - name: office
                time: {hours: "08:00-20:00"}
                action: approve
              - name: always
                chain: "56"
                action: hold
            """)
        assert len(policy.rules) == 2


class TestConditions:
    def test_unknown_chain_in_rule(self, problems: Problems) -> None:
        """A rule naming an undeclared chain is refused."""
        only(problems("rules:\n  - name: r\n    chain: \"7\"\n    action: hold\n"), "p.yaml:8",
             "names chain '7', which is not declared")

    def test_min_above_max(self, problems: Problems) -> None:
        """An amount range with min above max is refused."""
        found = problems("rules:\n  - name: r\n    amount: {min: \"5\", max: \"1\"}\n"
                         "    action: hold\n")
        only(found, "p.yaml:8", "min 5 is above max 1")

    def test_empty_amount(self, problems: Problems) -> None:
        """``amount: {}`` is refused."""
        only(problems("rules:\n  - name: r\n    amount: {}\n    action: hold\n"), "p.yaml:8",
             "needs min and/or max")

    def test_empty_address_condition(self, problems: Problems) -> None:
        """``to: {}`` is refused."""
        only(problems("rules:\n  - name: r\n    to: {}\n    action: hold\n"), "p.yaml:8",
             "needs in and/or not_in")

    def test_empty_in(self, problems: Problems) -> None:
        """``in: []`` is refused."""
        only(problems("rules:\n  - name: r\n    to: {in: []}\n    action: hold\n"), "p.yaml:8",
             "must not be empty")

    def test_bad_hours(self, problems: Problems) -> None:
        """Hours must be HH:MM-HH:MM."""
        found = problems("rules:\n  - name: r\n    time: {hours: \"8-20\"}\n    action: hold\n")
        only(found, "p.yaml:8", "must look like \"08:00-20:00\"")

    def test_empty_hour_range(self, problems: Problems) -> None:
        """A range that starts where it ends is refused."""
        found = problems("rules:\n  - name: r\n    time: {hours: \"08:00-08:00\"}\n"
                         "    action: hold\n")
        only(found, "p.yaml:8", "is not a range")

    def test_unknown_time_zone(self, problems: Problems) -> None:
        """An unknown tz is refused."""
        found = problems("rules:\n  - name: r\n    time: {hours: \"08:00-20:00\", tz: Mars/Base}"
                         "\n    action: hold\n")
        only(found, "p.yaml:8", "unknown time zone 'Mars/Base'")

    def test_bad_day(self, problems: Problems) -> None:
        """Days are three-letter English names."""
        found = problems("rules:\n  - name: r\n    time: {days: [monday]}\n    action: hold\n")
        only(found, "p.yaml:8", "day 'monday'")

    def test_time_without_days_or_hours(self, problems: Problems) -> None:
        """``time: {tz: UTC}`` alone is refused."""
        only(problems("rules:\n  - name: r\n    time: {tz: UTC}\n    action: hold\n"), "p.yaml:8",
             "needs days and/or hours")

    def test_bad_rule_name(self, problems: Problems) -> None:
        """Rule names are metric-label safe."""
        only(problems("rules:\n  - name: \"a b\"\n    action: hold\n"), "p.yaml:7",
             "name 'a b' in rules")

    def test_rules_not_a_list(self, problems: Problems) -> None:
        """``rules`` must be a list."""
        only(problems("rules: {}\n"), "p.yaml:6", "rules must be a list, not a mapping")


class TestFiles:
    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing policy file is a PolicyError (a ConfigError: exit 2)."""
        with pytest.raises(ConfigError, match=r"nope.yaml:1: file not found"):
            load_policy(tmp_path / "nope.yaml")

    def test_unreadable_path(self, tmp_path: Path) -> None:
        """A directory instead of a file is refused."""
        with pytest.raises(PolicyError, match="cannot read"):
            load_policy(tmp_path)

    def test_empty_file(self, write: Callable[..., Path]) -> None:
        """An empty policy is refused: it can never approve anything."""
        with pytest.raises(PolicyError, match=r"p.yaml:1: the policy is empty"):
            load_policy(write(""))

    def test_not_a_mapping(self, write: Callable[..., Path]) -> None:
        """A top-level list is refused."""
        with pytest.raises(PolicyError, match=r"p.yaml:1: the policy must be a mapping"):
            load_policy(write("- a\n"))

    def test_yaml_syntax_error(self, write: Callable[..., Path]) -> None:
        """A YAML syntax error carries its line."""
        with pytest.raises(PolicyError, match=r"p.yaml:3: YAML syntax"):
            load_policy(write("version: 1\nname: t\n  bad: [\n"))

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A policy that is not UTF-8 is refused."""
        path = tmp_path / "p.yaml"
        path.write_bytes(b"version: 1\nname: \xff\n")
        with pytest.raises(PolicyError, match=r"p.yaml:2: not valid UTF-8"):
            load_policy(path)

    def test_missing_required_top_keys(self, write: Callable[..., Path]) -> None:
        """version, name and chains are required."""
        with pytest.raises(PolicyError) as info:
            load_policy(write("default: hold\n"))
        assert len(info.value.problems) == 3

    def test_wrong_version(self, problems: Problems) -> None:
        """Only version 1 exists."""
        found = problems("", header=HEADER.replace("version: 1", "version: 2"))
        only(found, "p.yaml:1", "unsupported policy version 2")

    def test_every_problem_is_reported(self, problems: Problems) -> None:
        """The loader collects every problem, not just the first."""
        found = problems("default: approve\non_limit: no\nrules:\n  - name: r\n"
                         "    action: allow\n")
        assert [p.split(": ")[0] for p in found] == ["p.yaml:6", "p.yaml:7", "p.yaml:10"]


class TestCompiled:
    def test_sha256_is_stable_and_covers_list_files(
            self, write: Callable[..., Path], tmp_path: Path) -> None:
        """The sha256 is the same on reload and changes when a list file changes."""
        path = write(HEADER + "lists:\n  s: {file: s.txt}\n", files={"s.txt": TREASURY + "\n"})
        first, again = load_policy(path), load_policy(path)
        assert first.sha256 == again.sha256
        assert len(first.sha256) == 64
        (tmp_path / "s.txt").write_text(evm("other") + "\n", encoding="utf-8")
        assert load_policy(path).sha256 != first.sha256
        assert first.sources == (path, tmp_path / "s.txt")

    def test_try_load_returns_error(self, write: Callable[..., Path]) -> None:
        """try_load_policy returns the PolicyError instead of raising."""
        result = try_load_policy(write("default: approve\n"))
        assert isinstance(result, PolicyError)

    def test_try_load_returns_policy(self) -> None:
        """try_load_policy returns the compiled policy for a good file."""
        result = try_load_policy("policies/treasury.yaml")
        assert isinstance(result, CompiledPolicy)
        assert result.chains["195"].decimals == 6
        assert result.chains["1"].address == "evm"

    def test_limits_and_windows(self) -> None:
        """Limits expose name and window as timedelta."""
        policy = load_policy("policies/treasury.yaml")
        assert {lim.name: lim.window.total_seconds() for lim in policy.limits}["payouts-hourly"] \
            == 3600

    def test_summary(self) -> None:
        """The summary names the counts check prints."""
        summary = load_policy("policies/treasury.yaml").summary()
        assert "3 chains, 2 lists, 10 addresses, 5 rules, 5 limits" in summary
