"""The two-replica PostgreSQL examples (issue 9) say what the code does."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAY = DEPLOY / "kubernetes-ha"


def _documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


class TestComposeHa:
    @pytest.fixture
    def compose(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.ha.yaml").read_text())
        return loaded

    def test_two_replicas_read_the_url_from_a_secret_file(self, compose: dict[str, Any]) -> None:
        """Both replicas use COSIGNER_DATABASE_URL_FILE, never a plain URL variable."""
        replicas = [s for n, s in compose["services"].items() if n.startswith("cosigner-")]
        assert len(replicas) == 2
        for service in replicas:
            env = service["environment"]
            assert env["COSIGNER_DATABASE_URL_FILE"] == "/run/secrets/database_url"
            assert "COSIGNER_DATABASE_URL" not in env
            assert "database_url" in service["secrets"]
            assert service["command"] == ["run"]
            assert all(p.startswith("127.0.0.1:") for p in service["ports"])

    def test_journal_init_and_postgres(self, compose: dict[str, Any]) -> None:
        """The journal is created explicitly; PostgreSQL's password is a secret file too."""
        assert compose["services"]["journal-init"]["command"] == ["journal", "init"]
        postgres = compose["services"]["postgres"]
        assert "POSTGRES_PASSWORD" not in postgres["environment"]
        assert postgres["environment"]["POSTGRES_PASSWORD_FILE"]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/kubernetes-ha`` (skips without kubectl)."""
    kubectl = require_tool("kubectl", "kubectl is needed to build the kustomization")
    assert kubectl is not None
    built = subprocess.run([kubectl, "kustomize", str(OVERLAY)], check=True,
                           capture_output=True, text=True, timeout=60)
    return _documents(built.stdout)


class TestKubernetesHa:

    def _one(self, manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        [found] = [m for m in manifests if m["kind"] == kind]
        return found

    @pytest.mark.external_service
    def test_two_replicas_rolling_update(self, manifests: list[dict[str, Any]]) -> None:
        """2 replicas, RollingUpdate that never drops below 2, the URL from the Secret."""
        deployment = self._one(manifests, "Deployment")
        spec = deployment["spec"]
        assert spec["replicas"] == 2
        assert spec["strategy"] == {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        [container] = spec["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["COSIGNER_DATABASE_URL_FILE"] == "/run/secrets/cosigner/database_url"
        assert "COSIGNER_DATABASE_URL" not in env
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert "persistentVolumeClaim" not in volumes["journal"]
        keys = {i["key"] for i in volumes["secrets"]["secret"]["items"]}
        assert "database_url" in keys

    @pytest.mark.external_service
    def test_pdb_network_and_no_pvc(self, manifests: list[dict[str, Any]]) -> None:
        """One pod may be disrupted at a time; egress to 5432 is allowed; no journal PVC."""
        pdb = self._one(manifests, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert not [m for m in manifests if m["kind"] == "PersistentVolumeClaim"]
        ports = [p["port"] for m in manifests if m["kind"] == "NetworkPolicy"
                 for rule in m["spec"].get("egress", []) for p in rule.get("ports", [])]
        assert 5432 in ports
        assert {m["metadata"].get("namespace") for m in manifests
                if m["kind"] != "Namespace"} == {"cosigner"}
