"""The Prometheus files are valid for promtool, and every alert is unit-tested both ways.

``promtool`` comes with the ``prometheus`` package; without it these tests skip
(and fail under ``COSIGNER_REQUIRE_ALL=1``).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool
from tests.deploy.conftest import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_TESTS,
    RULES,
    load_yaml_documents,
)

PROMTOOL_MISSING = "promtool is not installed (apt-get install prometheus)"

# Grafana's variables, replaced by plain PromQL so promtool can parse the queries.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                      "$job": ".*", "$instance": ".*"}


@pytest.fixture
def promtool() -> str:
    found = require_tool("promtool", PROMTOOL_MISSING)
    assert found is not None
    return found


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml_documents(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.mark.external_service
class TestPromtool:
    def test_rules_pass_check(self, promtool: str) -> None:
        """promtool check rules accepts rules.yml (syntax, PromQL, templates)."""
        result = run_promtool(promtool, "check", "rules", str(RULES.relative_to(ROOT)))
        assert result.returncode == 0, result.stdout + result.stderr
        (doc,) = load_yaml_documents(RULES)
        count = sum(len(group["rules"]) for group in doc["groups"])
        assert f"SUCCESS: {count} rules found" in result.stdout

    def test_rule_unit_tests_pass(self, promtool: str) -> None:
        """promtool test rules runs rules.test.yml without a failure."""
        result = run_promtool(promtool, "test", "rules", str(RULE_TESTS.relative_to(ROOT)))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_config_is_valid_and_finds_the_rules(self, promtool: str) -> None:
        """promtool check config accepts prometheus.yml, whose rules.yml path is relative."""
        result = run_promtool(promtool, "check", "config",
                              str(PROMETHEUS_CONFIG.relative_to(ROOT)))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 1 rule files found" in result.stdout

    def test_config_is_valid_from_another_directory(self, promtool: str,
                                                    tmp_path: Path) -> None:
        """The rule file is found relative to prometheus.yml, not the working directory."""
        result = run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_dashboard_queries_parse(self, promtool: str, tmp_path: Path) -> None:
        """Every Grafana query is valid PromQL once its variables are substituted."""
        queries = dashboard_queries()
        assert len(queries) >= 15
        rules = []
        for i, query in enumerate(queries):
            for variable, value in _GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            assert "$" not in query, f"unknown Grafana variable in {query!r}"
            rules.append({"record": f"dashboard:query_{i}", "expr": query})
        path = tmp_path / "dashboard-rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}),
                        encoding="utf-8")
        result = run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    """The PromQL of every panel target and every query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), \w+\)", variable["definition"])
            assert match, variable["definition"]
            queries.append(match.group(1))
    return queries


class TestRuleTestCoverage:
    """Pure YAML checks (no promtool): the unit tests cover every alert in both directions."""

    def test_every_alert_is_tested_firing_and_quiet(self) -> None:
        """Each alert has an eval that expects it and one that expects silence."""
        (tests_doc,) = load_yaml_documents(RULE_TESTS)
        firing: set[str] = set()
        quiet: set[str] = set()
        for case in tests_doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
        names = {rule["alert"] for rule in alert_rules()}
        assert names - firing == set(), "alerts never shown firing"
        assert names - quiet == set(), "alerts never shown quiet"
        assert (firing | quiet) - names == set(), "tests name alerts that do not exist"

    def test_rule_tests_load_the_rules_file(self) -> None:
        """rules.test.yml points at rules.yml next to it."""
        (tests_doc,) = load_yaml_documents(RULE_TESTS)
        assert tests_doc["rule_files"] == ["rules.yml"]

    def test_every_alert_has_severity_and_summary(self) -> None:
        """Alertmanager routes on severity; people read the summary."""
        for rule in alert_rules():
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["alert"].startswith("Cosigner"), rule["alert"]

    def test_the_critical_alerts_are_critical(self) -> None:
        """A mutated item, an unknown post outcome and an expired shard page someone."""
        severities = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
        for name in ("CosignerItemMutation", "CosignerPostOutcomeUnknown",
                     "CosignerShardCertExpired", "CosignerPollStale", "CosignerMetricsAbsent"):
            assert severities[name] == "critical", name

    def test_staleness_is_relative_to_the_configured_intervals(self) -> None:
        """Stale polls: 2 x cosigner_poll_interval_seconds; stale collections: 3 x
        cosigner_collect_interval_seconds (the daemon exports what it was given)."""
        exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
        assert exprs["CosignerPollStale"] == (
            "time() - cosigner_last_poll_success_timestamp_seconds"
            " > 2 * cosigner_poll_interval_seconds")
        assert ("time() - cosigner_last_collect_success_timestamp_seconds"
                " > 3 * cosigner_collect_interval_seconds") in exprs["CosignerCollectionStale"]
        assert not re.search(r"\b(240|900|120|300)\b", " ".join(exprs.values()))
