"""The deploy files as the ecosystem's own checkers see them (issue 11 item 7).

hadolint on the Dockerfile; checkov on the Dockerfile and the Kubernetes manifests, raw
and rendered by kustomize; kubernetes-validate --strict on every manifest; amtool on the
Alertmanager config; promtool on the generated PrometheusRule.  Each tool missing skips
with the reason (``make tools`` / apt), and fails under ``COSIGNER_REQUIRE_ALL=1``.
Pure checks (one source for the rules, runbook links, the lock file, the base image pin)
need no tool.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import require_tool
from tests.deploy.conftest import DEPLOY, DOCKERFILE, KUBERNETES, ROOT, RULES, load_yaml_documents

MONITORING = KUBERNETES / "monitoring"
PROMETHEUSRULE = MONITORING / "prometheusrule.yaml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
LOCK = ROOT / "requirements.lock"
TOOLS_HINT = "(make tools; .ci/run installs it)"

#: checkov checks skipped, each with why.  Anything else failing fails the test.
CHECKOV_SKIPS_RAW = {
    # The namespace comes from kustomization.yaml; the rendered manifests are checked too.
    "CKV_K8S_21": "namespace set by kustomize",
    # `image: cosigner` is a name kustomize's `images:` replaces; checked rendered below.
    "CKV_K8S_14": "image set by kustomize",
    "CKV_K8S_43": "image set by kustomize",
}
CHECKOV_SKIPS_RENDERED = {
    # Your registry's digest is unknown until you push the image: set `digest:` under
    # `images:` in kustomization.yaml then (deploy/README.md says so).
    "CKV_K8S_43": "digest known only after pushing to your registry",
    # IfNotPresent is right for an immutable tag or digest; `Always` makes every restart
    # depend on the registry being reachable from the enclave.
    "CKV_K8S_15": "imagePullPolicy Always would tie restarts to the registry",
}
#: Kinds without a schema in kubernetes-validate: Kustomize's own file and the
#: Prometheus Operator's CRDs (whose rules promtool checks below).
NO_SCHEMA_KINDS = {"Kustomization", "PodMonitor", "PrometheusRule"}


def run(argv: list[str], *, cwd: Path = ROOT, timeout: float = 300,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, input=stdin)


def manifests() -> list[Path]:
    """Every Kubernetes manifest shipped (not kustomization files)."""
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """deploy/kubernetes and its monitoring overlay rendered by `kubectl kustomize`."""
    kubectl = require_tool("kubectl", "kubectl is not installed (renders the kustomizations)")
    assert kubectl is not None
    out = tmp_path_factory.mktemp("rendered")
    paths = {}
    for name, source in (("app", KUBERNETES), ("monitoring", MONITORING)):
        result = run([kubectl, "kustomize", str(source)], timeout=60)
        assert result.returncode == 0, result.stderr
        path = out / name / f"{name}.yaml"
        path.parent.mkdir()
        path.write_text(result.stdout, encoding="utf-8")
        paths[name] = path
    return paths


@pytest.mark.external_service
class TestHadolint:
    def test_dockerfile_is_clean(self) -> None:
        """hadolint finds nothing, at any level."""
        hadolint = require_tool("hadolint", f"hadolint is not installed {TOOLS_HINT}")
        assert hadolint is not None
        result = run([hadolint, "--failure-threshold", "style", str(DOCKERFILE)])
        assert result.returncode == 0, result.stdout + result.stderr


def _checkov_failures(checkov: str, target: list[str], framework: str,
                      skips: dict[str, str]) -> list[str]:
    argv = [checkov, *target, "--framework", framework, "--output", "json", "--quiet",
            "--compact", "--skip-download"]
    if skips:
        argv += ["--skip-check", ",".join(sorted(skips))]
    result = run(argv)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    data: Any = json.loads(result.stdout) if result.stdout.strip() else []
    reports = data if isinstance(data, list) else [data]
    failures = []
    for report in reports:
        results = report.get("results", {}) if isinstance(report, dict) else {}
        failures += [f"{c['check_id']} {c['resource']} ({c['file_path']})"
                     for c in results.get("failed_checks", [])]
        assert isinstance(report, dict)
        summary = report.get("summary", {})
        assert summary.get("passed", 0) > 0 or not results, report
    return failures


@pytest.mark.external_service
@pytest.mark.slow
class TestCheckov:
    @pytest.fixture
    def checkov(self) -> str:
        found = require_tool("checkov", f"checkov is not installed {TOOLS_HINT}")
        assert found is not None
        return found

    def test_dockerfile(self, checkov: str) -> None:
        """Every Dockerfile check passes, none skipped."""
        assert _checkov_failures(checkov, ["-f", str(DOCKERFILE)], "dockerfile", {}) == []

    def test_raw_manifests(self, checkov: str) -> None:
        """Every Kubernetes check passes on the files as shipped (skips justified above)."""
        assert _checkov_failures(checkov, ["-d", str(KUBERNETES)], "kubernetes",
                                 CHECKOV_SKIPS_RAW) == []

    def test_rendered_manifests(self, checkov: str, rendered: dict[str, Path]) -> None:
        """What `kubectl apply -k` would apply passes too (skips justified above)."""
        target = ["-f", str(rendered["app"]), "-f", str(rendered["monitoring"])]
        assert _checkov_failures(checkov, target, "kubernetes", CHECKOV_SKIPS_RENDERED) == []


@pytest.mark.external_service
class TestKubernetesValidate:
    @pytest.fixture
    def validator(self) -> str:
        found = require_tool("kubernetes-validate",
                             f"kubernetes-validate is not installed {TOOLS_HINT}")
        assert found is not None
        return found

    def _check(self, validator: str, paths: list[Path]) -> None:
        result = run([validator, "--strict", *map(str, paths)], timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        unknown = re.findall(r"Couldn't find schema for kind (\w+)", output)
        assert set(unknown) <= NO_SCHEMA_KINDS, output
        assert "ERROR" not in output, output

    def test_every_manifest_strictly(self, validator: str) -> None:
        """Each shipped manifest validates with unknown fields rejected."""
        self._check(validator, manifests())

    def test_rendered_manifests_strictly(self, validator: str,
                                         rendered: dict[str, Path]) -> None:
        """The kustomize output validates too (labels, namespace and image applied)."""
        self._check(validator, [rendered["app"], rendered["monitoring"]])


@pytest.mark.external_service
class TestMonitoringConfigs:
    def test_alertmanager_config(self) -> None:
        """amtool accepts alertmanager.yml: routes, inhibitions, receivers."""
        amtool = require_tool("amtool", "amtool is not installed (apt-get install "
                                        "prometheus-alertmanager)")
        assert amtool is not None
        result = run([amtool, "check-config", str(ALERTMANAGER)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_prometheusrule_rules_pass_promtool(self, tmp_path: Path) -> None:
        """The PrometheusRule's groups are valid rules for promtool."""
        promtool = require_tool("promtool", "promtool is not installed (apt-get install "
                                            "prometheus)")
        assert promtool is not None
        (manifest,) = load_yaml_documents(PROMETHEUSRULE)
        path = tmp_path / "rules.yml"
        path.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}), "utf-8")
        result = run([promtool, "check", "rules", str(path)])
        assert result.returncode == 0, result.stdout + result.stderr


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "prometheusrule", DEPLOY / "prometheus" / "prometheusrule.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestOneSourceOfRules:
    def test_prometheusrule_is_generated_from_rules_yml(self) -> None:
        """prometheusrule.yaml is byte for byte what `make deploy-rules` writes now."""
        expected = _generator().render(RULES.read_text(encoding="utf-8"))
        assert PROMETHEUSRULE.read_text(encoding="utf-8") == expected, (
            "run `make deploy-rules`")

    def test_same_groups(self) -> None:
        """Loaded, the PrometheusRule holds exactly the groups of rules.yml."""
        (rules,) = load_yaml_documents(RULES)
        (manifest,) = load_yaml_documents(PROMETHEUSRULE)
        assert manifest["kind"] == "PrometheusRule"
        assert manifest["spec"]["groups"] == rules["groups"]

    def test_podmonitor_gives_the_job_name_the_rules_use(self) -> None:
        """The PodMonitor scrapes the metrics port and yields job="cosigner"."""
        (monitor,) = load_yaml_documents(MONITORING / "podmonitor.yaml")
        assert monitor["kind"] == "PodMonitor"
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
        assert monitor["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/name": "cosigner"}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        assert 'up{job="cosigner"}' in RULES.read_text(encoding="utf-8")


def _alerts() -> list[dict[str, Any]]:
    (doc,) = load_yaml_documents(RULES)
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


class TestRunbook:
    def test_every_alert_links_its_runbook_section(self) -> None:
        """runbook_url = docs/runbook.md#<alert in lower case>, and that heading exists."""
        headings = {line[4:].strip().lower() for line in
                    RUNBOOK.read_text(encoding="utf-8").splitlines() if line.startswith("### ")}
        for rule in _alerts():
            name = rule["alert"]
            assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
            assert name.lower() in headings, f"docs/runbook.md has no section {name}"

    def test_every_runbook_section_is_an_alert(self) -> None:
        """No section for an alert that no longer exists."""
        text = RUNBOOK.read_text(encoding="utf-8")
        alerts_part = text.split("## Alerts", 1)[1].split("\n## ", 1)[0]
        sections = {line[4:].strip() for line in alerts_part.splitlines()
                    if line.startswith("### ")}
        assert sections == {rule["alert"] for rule in _alerts()}


class TestReproducibleImage:
    def test_both_stages_use_the_same_pinned_base(self) -> None:
        """Every FROM names python:3.11-slim-bookworm by sha256 digest, the same one."""
        froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text("utf-8"), re.MULTILINE)
        assert len(froms) == 2
        assert len(set(froms)) == 1
        assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", froms[0])

    def test_dependencies_install_from_the_lock_with_hashes(self) -> None:
        """The build stage installs requirements.lock with --require-hashes into a venv
        without pip; the runtime stage copies only that venv."""
        text = DOCKERFILE.read_text(encoding="utf-8")
        assert "python -m venv --without-pip /opt/cosigner" in text
        assert "--require-hashes" in text
        assert "-r requirements.lock" in text
        assert "COPY --from=build /opt/cosigner /opt/cosigner" in text
        runtime = text.split("\nFROM ", 2)[2]
        assert "pip install" not in runtime
        assert "gcc" not in runtime
        assert "!requirements.lock" in (ROOT / ".dockerignore").read_text("utf-8")

    def test_lock_pins_every_dependency_with_hashes(self) -> None:
        """Each pyproject dependency is pinned in the lock at a version its range allows,
        and every pin carries a sha256 hash."""
        import tomllib
        project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
        text = LOCK.read_text(encoding="utf-8")
        pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^ \\\n;]+)", text, re.MULTILINE))
        normal = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
        for spec in project["dependencies"]:
            req = Requirement(spec)
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            assert name in normal, f"{req.name} is not in requirements.lock: run make lock"
            assert req.specifier.contains(normal[name], prereleases=True), (
                f"{req.name}=={normal[name]} is outside {req.specifier}: run make lock")
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        for block in blocks:
            if "==" in block:
                assert "--hash=sha256:" in block, block.splitlines()[0]
