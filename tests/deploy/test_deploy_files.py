"""The deploy files stay true to the code: real metric names, real settings, the
security options the design asks for, and settings and policy that actually load."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from cosigner.policy import load_policy
from cosigner.settings import PREFIX, SECRET_FIELDS, Settings, env_name, load_settings
from tests.deploy.conftest import (
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    DOCKERFILE,
    KUBERNETES,
    METRIC_NAME,
    ROOT,
    RULE_TESTS,
    RULES,
    deploy_yaml_files,
    exported_metric_names,
    load_yaml_documents,
)

SetEnv = Callable[..., None]
#: Paths and addresses inside the container, not on this machine.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the container's listener, on purpose
CONTAINER_TMP = "/tmp"  # noqa: S108 - the tmpfs mount point in the container


# -- metric names ----------------------------------------------------------------------


class TestMetricNames:
    @pytest.mark.parametrize("path", [RULES, RULE_TESTS, DASHBOARD], ids=lambda p: p.name)
    def test_every_referenced_metric_is_exported(self, path: Path) -> None:
        """Every cosigner_* name in the file is a sample name of Metrics().render()."""
        referenced = set(METRIC_NAME.findall(path.read_text(encoding="utf-8")))
        assert referenced, f"{path.name} names no cosigner_ metric"
        assert referenced - exported_metric_names() == set()

    def test_exported_names_follow_the_design(self) -> None:
        """Counters end in _total and the histograms give _bucket (the parser is right)."""
        names = exported_metric_names()
        assert "cosigner_item_mutations_total" in names
        assert "cosigner_poll_duration_seconds_bucket" in names
        assert "cosigner_leader" in names

    def test_every_metric_is_watched(self) -> None:
        """Each metric family is on the dashboard or in an alert (a new one is not forgotten)."""
        used = " ".join(p.read_text(encoding="utf-8") for p in (RULES, DASHBOARD))
        families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exported_metric_names()
                    if n.startswith("cosigner_")}  # process_* and python_info are standard
        unwatched = {f for f in families if not re.search(rf"\b{f}(_[a-z]+)?\b", used)}
        assert unwatched == set()


# -- the dashboard -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


class TestDashboard:
    def test_is_an_importable_dashboard(self, dashboard: dict[str, Any]) -> None:
        """Title, uid, schema version, unique panel ids and a Prometheus data source variable."""
        assert dashboard["uid"] == "cosigner"
        assert dashboard["title"]
        assert isinstance(dashboard["schemaVersion"], int)
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus"

    def test_every_query_panel_uses_the_variable_data_source(
            self, dashboard: dict[str, Any]) -> None:
        """No hard-coded data source uid: the dashboard imports into any Grafana."""
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].strip(), panel["title"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]

    @pytest.mark.parametrize("needle", [
        "cosigner_decisions_total", "sum by (action)", "sum by (rule)", "cosigner_pending_items",
        "histogram_quantile(0.95, sum by (le) (rate(cosigner_poll_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, endpoint) "
        "(rate(cosigner_api_request_duration_seconds_bucket",
        "sum by (endpoint, kind) (rate(cosigner_api_errors_total", "cosigner_collections_total",
        "cosigner_limit_usage_ratio", "cosigner_shard_cert_expiry_timestamp_seconds",
        "cosigner_policy_info"])
    def test_has_the_panels_operators_need(self, dashboard: dict[str, Any], needle: str) -> None:
        """Decisions, pending, p95s, API errors, collections, limits, shard expiry, policy."""
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert any(needle in expr for expr in exprs)


# -- YAML and security options -----------------------------------------------------------


@pytest.mark.parametrize("path", deploy_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    """Every YAML file under deploy/ is valid YAML (safe loader, every document)."""
    assert load_yaml_documents(path)


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            yield path, doc


def k8s_object(kind: str, *, path: Path | None = None) -> dict[str, Any]:
    (found,) = [doc for p, doc in k8s_objects()
                if doc.get("kind") == kind and (path is None or p == path)]
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_yaml_documents(COMPOSE)
    assert isinstance(doc, dict)
    return doc


class TestCompose:
    @pytest.mark.parametrize("name", ["cosigner", "sandbox"])
    def test_cosigner_containers_are_locked_down(self, compose: dict[str, Any],
                                                 name: str) -> None:
        """Read-only root, tmpfs /tmp, every capability dropped, no-new-privileges, uid 10001."""
        service = compose["services"][name]
        assert service["read_only"] is True
        assert any(entry.split(":")[0] == CONTAINER_TMP for entry in service["tmpfs"])
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["user"] == "10001:10001"

    def test_daemon_reads_secrets_from_files(self, compose: dict[str, Any]) -> None:
        """api secret, shard password and shard are Compose secrets; no plain secret variable."""
        service = compose["services"]["cosigner"]
        env = service["environment"]
        assert env["COSIGNER_API_SECRET_FILE"] == "/run/secrets/api_secret"
        assert env["COSIGNER_PFX_PASSWORD_FILE"] == "/run/secrets/pfx_password"
        assert env["COSIGNER_PFX_PATH"] == "/run/secrets/shard.pfx"
        assert "COSIGNER_API_SECRET" not in env
        assert "COSIGNER_PFX_PASSWORD" not in env
        sources = {s if isinstance(s, str) else s["source"] for s in service["secrets"]}
        assert sources == {"api_secret", "pfx_password", "shard"}
        assert set(compose["secrets"]) == sources

    def test_daemon_keeps_its_journal_in_a_volume(self, compose: dict[str, Any]) -> None:
        """The journal survives a re-create; the policy is mounted read-only."""
        volumes = compose["services"]["cosigner"]["volumes"]
        assert "journal:/var/lib/cosigner" in volumes
        assert any(v.endswith(":/etc/cosigner/policy:ro") for v in volumes)
        assert "journal" in compose["volumes"]
        assert compose["services"]["cosigner"]["env_file"] == ".env"

    def test_profiles_for_rehearsal_and_monitoring(self, compose: dict[str, Any]) -> None:
        """sandbox and prometheus only start when their profile is asked for."""
        services = compose["services"]
        assert "profiles" not in services["cosigner"]
        assert services["sandbox"]["profiles"] == ["sandbox"]
        assert services["sandbox"]["command"][:3] == ["sandbox", "--host", ALL_INTERFACES]
        assert services["prometheus"]["profiles"] == ["prometheus"]
        mounts = " ".join(services["prometheus"]["volumes"])
        assert "./prometheus/prometheus.yml:" in mounts
        assert "./prometheus/rules.yml:" in mounts

    def test_ports_are_published_on_loopback_only(self, compose: dict[str, Any]) -> None:
        """Nothing is published on every interface of the host."""
        for name, service in compose["services"].items():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), name

    def test_secret_files_are_ignored_by_git(self) -> None:
        """deploy/secrets/ keeps nothing but its .gitignore."""
        ignore = (DEPLOY / "secrets" / ".gitignore").read_text(encoding="utf-8").split()
        assert "*" in ignore
        assert "!.gitignore" in ignore


class TestKubernetes:
    def test_every_manifest_is_in_the_kustomization_but_the_secret(self) -> None:
        """kustomization.yaml lists every manifest; never the placeholder Secret."""
        kustomization = k8s_object("Kustomization")
        resources = set(kustomization["resources"])
        manifests = {p.name for p in KUBERNETES.glob("*.yaml")}
        # the journal-init Job is applied once, by hand (deploy/README.md), never with -k
        assert resources == manifests - {"kustomization.yaml", "secret.example.yaml",
                                         "journal-init-job.yaml"}

    def test_secret_example_holds_placeholders_only(self) -> None:
        """No secret value is committed: every entry is REPLACE_ME or empty."""
        secret = k8s_object("Secret")
        values = {**secret.get("stringData", {}), **secret.get("data", {})}
        assert set(values) == {"api_secret", "pfx_password", "shard.pfx"}
        assert set(values.values()) <= {"REPLACE_ME", ""}
        assert "PLACEHOLDERS" in (KUBERNETES / "secret.example.yaml").read_text("utf-8")

    def test_one_replica_recreated(self) -> None:
        """The SQLite journal is single-writer: never two pods at once."""
        spec = k8s_object("Deployment")["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}

    def test_pod_runs_restricted(self) -> None:
        """Non-root 10001, RuntimeDefault seccomp, no service-account token."""
        pod = k8s_object("Deployment")["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 10001
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False

    def test_every_container_is_locked_down(self) -> None:
        """Read-only root, no privilege escalation, every capability dropped, a memory limit."""
        pod = k8s_object("Deployment")["spec"]["template"]["spec"]
        containers = pod["containers"] + pod.get("initContainers", [])
        assert len(containers) == 2
        for container in containers:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "memory" in container["resources"]["limits"], container["name"]

    def test_probes_and_port(self) -> None:
        """Liveness on /healthz, readiness on /readyz, both on the metrics port 9464."""
        (container,) = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["run"]
        assert container["ports"] == [
            {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},
            {"name": "callbacks", "containerPort": 9465, "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        service = k8s_object("Service")["spec"]
        assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [
            (9464, "metrics"), (9465, "callbacks")]

    def test_callback_listener_is_on_its_own_port(self) -> None:
        """COSIGNER_CALLBACK_ADDR is the callbacks port, not the metrics one."""
        (container,) = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["COSIGNER_CALLBACK_ADDR"] == "0.0.0.0:9465"
        assert env["COSIGNER_HTTP_ADDR"] == "0.0.0.0:9464"

    def test_volumes_journal_policy_and_secrets(self) -> None:
        """PVC journal; policy from a ConfigMap; secrets read-only; the shard copied 0400."""
        pod = k8s_object("Deployment")["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["journal"]["persistentVolumeClaim"]["claimName"] == (
            k8s_object("PersistentVolumeClaim")["metadata"]["name"])
        assert volumes["policy"]["configMap"]["name"] == "cosigner-policy"
        assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"
        for name in ("secrets", "shard-src"):
            assert volumes[name]["secret"]["secretName"] == k8s_object("Secret")["metadata"]["name"]
            assert volumes[name]["secret"]["defaultMode"] & 0o007 == 0, name
        (init,) = pod["initContainers"]
        assert init["command"][:3] == ["install", "-m", "0400"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["journal"]["mountPath"] == "/var/lib/cosigner"
        assert "shard-src" not in mounts
        for name in ("shard", "secrets", "policy"):
            assert mounts[name]["readOnly"] is True, name

    def test_network_policy_allows_only_dns_and_https_out(self) -> None:
        """Egress to port 53 (DNS) and 443 (the API); ingress to 9464 from monitoring only,
        to 9465 (callbacks) from the provider's addresses only."""
        policy = k8s_object("NetworkPolicy", path=KUBERNETES / "networkpolicy.yaml")["spec"]
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
        assert policy["podSelector"]["matchLabels"] == (
            k8s_object("Deployment")["spec"]["selector"]["matchLabels"])
        egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"]
                        for p in rule["ports"]}
        assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
        ingress = {tuple(p["port"] for p in rule["ports"]): rule["from"]
                   for rule in policy["ingress"]}
        assert set(ingress) == {(9464,), (9465,)}
        assert [set(peer) for peer in ingress[(9464,)]] == [{"namespaceSelector"}]
        assert [set(peer) for peer in ingress[(9465,)]] == [{"ipBlock"}]

    def test_https_egress_over_ipv4_and_ipv6(self) -> None:
        """Port 443 is reachable on 0.0.0.0/0 and ::/0 (dual-stack and IPv6-only clusters),
        cloud metadata excepted on both."""
        policy = k8s_object("NetworkPolicy", path=KUBERNETES / "networkpolicy.yaml")["spec"]
        (https,) = [rule for rule in policy["egress"]
                    if {p["port"] for p in rule["ports"]} == {443}]
        blocks = {peer["ipBlock"]["cidr"]: peer["ipBlock"].get("except", [])
                  for peer in https["to"]}
        assert set(blocks) == {"0.0.0.0/0", "::/0"}
        assert all(blocks.values())

    def test_journal_init_job_has_no_network(self) -> None:
        """The init Job's pod is selected by a policy that admits nothing in or out."""
        job = k8s_object("Job")["spec"]["template"]
        policy = k8s_object("NetworkPolicy",
                            path=KUBERNETES / "networkpolicy-journal-init.yaml")["spec"]
        assert policy["podSelector"]["matchLabels"] == job["metadata"]["labels"]
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
        assert "ingress" not in policy
        assert "egress" not in policy

    def test_startup_probe_and_cpu_limit(self) -> None:
        """A startupProbe covers the start-up checks; every container has a CPU limit."""
        pod = k8s_object("Deployment")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        for each in pod["containers"] + pod["initContainers"]:
            assert "cpu" in each["resources"]["limits"], each["name"]

    def test_no_pod_disruption_budget(self) -> None:
        """With one replica a PodDisruptionBudget would only block node drains."""
        assert all(doc.get("kind") != "PodDisruptionBudget" for _, doc in k8s_objects())


# -- settings named in the deploy files ----------------------------------------------------

SETTING_NAME = re.compile(r"\bCOSIGNER_[A-Z0-9_]*[A-Z0-9]\b")


def known_setting_names() -> set[str]:
    names = {env_name(field) for field in Settings.model_fields}
    return names | {env_name(field) + "_FILE" for field in SECRET_FIELDS}


def deploy_text_files() -> list[Path]:
    files = [DOCKERFILE, ROOT / ".dockerignore"]
    files += [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".gitignore"]
    return sorted(files)


class TestSettingNames:
    @pytest.mark.parametrize("path", deploy_text_files(), ids=lambda p: str(p.relative_to(ROOT)))
    def test_every_cosigner_variable_is_a_real_setting(self, path: Path) -> None:
        """A COSIGNER_* name in a deploy file is a field of Settings (or a *_FILE secret)."""
        named = set(SETTING_NAME.findall(path.read_text(encoding="utf-8")))
        assert named - known_setting_names() == set()

    def test_the_check_sees_the_settings(self) -> None:
        """The deploy files do name settings (the regex is not blind)."""
        named = set().union(*(SETTING_NAME.findall(p.read_text(encoding="utf-8"))
                              for p in deploy_text_files()))
        assert {"COSIGNER_API_SECRET_FILE", "COSIGNER_PFX_PATH", "COSIGNER_HTTP_ADDR"} <= named
        assert all(name.startswith(PREFIX) for name in named)


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (KEYWORD, arguments), continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


class TestDockerfile:
    def values(self, instructions: list[tuple[str, str]], keyword: str) -> list[str]:
        return [value for key, value in instructions if key == keyword]

    def test_base_user_port_and_command(self, instructions: list[tuple[str, str]]) -> None:
        """python:3.11-slim-bookworm pinned by digest (build and runtime stages), uid 10001,
        port 9464, ``cosigner run``."""
        froms = self.values(instructions, "FROM")
        assert [f.split()[0].split("@")[0] for f in froms] == ["python:3.11-slim-bookworm"] * 2
        assert froms[0].endswith(" AS build")
        assert self.values(instructions, "USER") == ["10001:10001"]
        assert self.values(instructions, "EXPOSE") == ["9464"]
        assert self.values(instructions, "ENTRYPOINT") == ['["cosigner"]']
        assert self.values(instructions, "CMD") == ['["run"]']
        assert instructions[-1][0] == "CMD"

    def test_journal_volume_is_private(self, instructions: list[tuple[str, str]]) -> None:
        """/var/lib/cosigner is made 0700 for 10001 before it is declared a volume."""
        text = " ".join(f"{k} {v}" for k, v in instructions)
        made = text.index("install -d -o 10001 -g 10001 -m 0700 /var/lib/cosigner")
        assert made < text.index('VOLUME ["/var/lib/cosigner"]')

    def test_environment_and_healthcheck(self, instructions: list[tuple[str, str]]) -> None:
        """Listens on 0.0.0.0:9464; the shard path is the mounted secret; /healthz via urllib."""
        env = " ".join(self.values(instructions, "ENV"))
        assert "COSIGNER_HTTP_ADDR=0.0.0.0:9464" in env
        assert "COSIGNER_PFX_PATH=/run/secrets/shard.pfx" in env
        assert "COSIGNER_DATABASE_URL=" not in env  # would clash with *_FILE
        (check,) = self.values(instructions, "HEALTHCHECK")
        assert "urllib.request" in check
        assert "/healthz" in check

    def test_dockerignore_keeps_secrets_out(self) -> None:
        """The build context is an allow-list, and secrets are excluded even inside it."""
        lines = [line.strip() for line in
                 (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.startswith("#")]
        assert lines[0] == "*"
        for pattern in ("**/.env", "**/*.pfx", "**/*.p12", "**/*.key", "**/*.db"):
            assert pattern in lines


# -- the settings and policy the manifests give actually load -----------------------------


def _secret_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("api_secret", "pfx_password"):
        files[name] = tmp_path / name
        files[name].write_text("placeholder-value\n", encoding="utf-8")
    return files


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a Compose env file (``#`` lines skipped, no quoting used)."""
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def _expand_compose(value: str) -> str:
    """``${NAME:-default}`` as Compose expands it when NAME is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


class TestManifestsLoad:
    def test_compose_settings_load(self, cosigner_env: SetEnv, tmp_path: Path) -> None:
        """.env.example plus the service's environment is a valid, conflict-free Settings."""
        (compose,) = load_yaml_documents(COMPOSE)
        service = compose["services"]["cosigner"]
        env = {k: v for k, v in read_env_file(DEPLOY / ".env.example").items()
               if k.startswith(PREFIX)}
        env.update({k: _expand_compose(str(v)) for k, v in service["environment"].items()})
        files = _secret_files(tmp_path)
        env["COSIGNER_API_SECRET_FILE"] = str(files["api_secret"])
        env["COSIGNER_PFX_PASSWORD_FILE"] = str(files["pfx_password"])
        cosigner_env(**{k.removeprefix(PREFIX).lower(): v for k, v in env.items()})
        settings = load_settings()
        assert settings.http_host_port == (ALL_INTERFACES, 9464)
        assert settings.api_secret is not None
        assert settings.api_secret.get_secret_value() == "placeholder-value"
        assert settings.database_url.get_secret_value() == "sqlite:///var/lib/cosigner/journal.db"

    def test_compose_policy_path_names_a_policy_that_loads(self) -> None:
        """The policy mount plus COSIGNER_POLICY_PATH lands on a repository policy."""
        (compose,) = load_yaml_documents(COMPOSE)
        service = compose["services"]["cosigner"]
        (mount,) = [v for v in service["volumes"] if v.endswith(":ro")]
        host, container, _ = _expand_compose(mount).split(":")
        policy = PurePosixPath(_expand_compose(service["environment"]["COSIGNER_POLICY_PATH"]))
        local = (COMPOSE.parent / host / policy.relative_to(container)).resolve()
        assert load_policy(local).name

    def test_kubernetes_settings_load(self, cosigner_env: SetEnv, tmp_path: Path) -> None:
        """The settings ConfigMap plus the container's env is a valid, conflict-free Settings."""
        (container,) = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
        (source,) = container["envFrom"]
        configmap = k8s_object("ConfigMap", path=KUBERNETES / "configmap-settings.yaml")
        assert configmap["metadata"]["name"] == source["configMapRef"]["name"]
        env = dict(configmap["data"])
        env.update({item["name"]: item["value"] for item in container["env"]})
        files = _secret_files(tmp_path)
        env["COSIGNER_API_SECRET_FILE"] = str(files["api_secret"])
        env["COSIGNER_PFX_PASSWORD_FILE"] = str(files["pfx_password"])
        cosigner_env(**{k.removeprefix(PREFIX).lower(): v for k, v in env.items()})
        settings = load_settings()
        assert settings.http_host_port == (ALL_INTERFACES, 9464)
        assert settings.mode == "shadow"
        assert settings.poll_interval == 120

    def test_kubernetes_paths_match_the_mounts(self) -> None:
        """Every *_FILE, the shard and the policy path sit inside the volume that holds them."""
        pod = k8s_object("Deployment")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {item["name"]: item["value"] for item in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}

        def item_paths(volume: str) -> set[str]:
            source = volumes[volume].get("secret") or volumes[volume]["configMap"]
            return {f"{mounts[volume]}/{item['path']}" for item in source["items"]}

        assert env["COSIGNER_API_SECRET_FILE"] in item_paths("secrets")
        assert env["COSIGNER_PFX_PASSWORD_FILE"] in item_paths("secrets")
        assert env["COSIGNER_POLICY_PATH"] in item_paths("policy")
        (init,) = pod["initContainers"]
        assert init["command"][-1] == env["COSIGNER_PFX_PATH"]
        assert init["command"][-2] in {f"{m['mountPath']}/shard.pfx"
                                       for m in init["volumeMounts"] if m["name"] == "shard-src"}

    def test_kubernetes_policy_configmap_loads(self, tmp_path: Path) -> None:
        """The example policy in the ConfigMap, laid out as the pod sees it, loads and lints."""
        pod = k8s_object("Deployment")["spec"]["template"]["spec"]
        (policy_volume,) = [v for v in pod["volumes"] if v["name"] == "policy"]
        configmap = k8s_object("ConfigMap", path=KUBERNETES / "configmap-policy.yaml")
        for item in policy_volume["configMap"]["items"]:
            target = tmp_path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(configmap["data"][item["key"]], encoding="utf-8")
        policy = load_policy(tmp_path / "policy.yaml")
        assert policy.name == "treasury-prod"
