"""Paths and small readers shared by the deploy tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from cosigner.daemon.metrics import Metrics
from tests.daemon.conftest import rig, test_policy  # noqa: F401 - the daemon tests' fixtures

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules.yml"
RULE_TESTS = PROMETHEUS / "rules.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "cosigner-dashboard.json"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"

METRIC_NAME = re.compile(r"\bcosigner_[a-z0-9_]*[a-z0-9]\b")

_SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "summary": ("_count", "_sum")}


def exported_metric_names() -> set[str]:
    """Every sample name the daemon can export, read from its exposition text."""
    text = Metrics().render().decode("utf-8")
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = _SAMPLE_SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def load_yaml_documents(path: Path) -> list[Any]:
    """Every document of a YAML file (safe loader), empty ones dropped."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def deploy_yaml_files() -> list[Path]:
    """Every YAML file under deploy/."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
