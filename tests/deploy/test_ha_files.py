"""The two-replica PostgreSQL examples (issue 9) say what the code does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

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


def _load(name: str) -> list[dict[str, Any]]:
    return _documents((OVERLAY / name).read_text(encoding="utf-8"))


class TestKubernetesHa:
    """The overlay's files as written (``kubectl apply -k deploy/kubernetes-ha``)."""

    def test_overlay_builds_on_the_base(self) -> None:
        """It takes the single-replica base, adds the PDB and the egress rule, and
        deletes the journal PVC."""
        [kustomization] = _load("kustomization.yaml")
        assert kustomization["namespace"] == "cosigner"
        assert kustomization["resources"] == ["../kubernetes", "pdb.yaml",
                                              "networkpolicy-postgres.yaml"]
        patches = kustomization["patches"]
        assert {"path": "deployment-patch.yaml"} in patches
        assert any(p.get("target") == {"kind": "PersistentVolumeClaim",
                                       "name": "cosigner-journal"}
                   and "$patch: delete" in p["patch"] for p in patches)
        listed = {"kustomization.yaml", "deployment-patch.yaml", "job-journal-init.yaml",
                  *kustomization["resources"][1:]}
        assert {p.name for p in OVERLAY.glob("*.yaml")} == listed

    def test_two_replicas_rolling_update(self) -> None:
        """2 replicas, RollingUpdate that never drops below 2, the URL from the Secret."""
        [deployment] = _load("deployment-patch.yaml")
        spec = deployment["spec"]
        assert spec["replicas"] == 2
        assert spec["strategy"] == {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        [container] = spec["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["COSIGNER_DATABASE_URL_FILE"] == "/run/secrets/cosigner/database_url"
        assert "COSIGNER_DATABASE_URL" not in env
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert volumes["journal"]["persistentVolumeClaim"] is None  # removed by the merge
        keys = {i["key"] for i in volumes["secrets"]["secret"]["items"]}
        assert keys == {"api_secret", "pfx_password", "database_url"}

    def test_pdb_and_network(self) -> None:
        """One pod may be disrupted at a time; egress to PostgreSQL's port is allowed."""
        [pdb] = _load("pdb.yaml")
        assert pdb["spec"]["maxUnavailable"] == 1
        [policy] = _load("networkpolicy-postgres.yaml")
        assert [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]] == [5432]

    def test_journal_init_job(self) -> None:
        """The Job runs `cosigner journal init` with only the database URL mounted."""
        [job] = _load("job-journal-init.yaml")
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["journal", "init"]
        assert container["env"] == [{"name": "COSIGNER_DATABASE_URL_FILE",
                                     "value": "/run/secrets/cosigner/database_url"}]
