"""Write the Prometheus Operator's PrometheusRule for cosigner from rules.yml (one source).

    python deploy/prometheus/prometheusrule.py > deploy/kubernetes/monitoring/prometheusrule.yaml

(`make deploy-rules` does exactly that; tests/deploy fails when the two differ.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).with_name("rules.yml")

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by `make deploy-rules`: do not edit by hand.
#
# For the Prometheus Operator (kube-prometheus-stack): the same alerting rules as the
# Compose setup. Your Prometheus's ruleSelector must match this object's labels; with
# kube-prometheus-stack add `release: <your helm release>` in kustomization.yaml.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line PromQL as literal blocks, as readable as in rules.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(rules_text: str) -> str:
    """The PrometheusRule manifest holding the groups of ``rules_text``."""
    rules: dict[str, Any] = yaml.safe_load(rules_text)
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cosigner"},
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)


def main() -> int:
    sys.stdout.write(render(RULES.read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
