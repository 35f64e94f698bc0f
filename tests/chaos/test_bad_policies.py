"""Suite 5, bad policies and bad shards.

Every YAML trap of DESIGN section 3 plus truncated, empty, binary and non-UTF-8 files:
refused at start (``cosigner policy check`` and ``cosigner run`` exit 2), and on a hot
reload of a running daemon (a plain rewrite, and a Kubernetes-style ``..data`` symlink
swap picked up by the file watch) the last good policy stays in force, every time.
Every bad-shard case makes ``cosigner run`` exit 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cosigner.cli import main
from cosigner.cli.daemon import daemon_spec
from cosigner.daemon.build import BuildOptions, build_daemon
from cosigner.errors import PolicyError
from cosigner.policy import load_policy
from cosigner.signing.throwaway import write_private
from tests.chaos.conftest import POLICY, SANCTIONED, Figures, World
from tests.chaos.daemons import init_journal
from tests.conftest import SHARD_PASSWORD, ShardFactory


def _variant(old: str, new: str) -> str:
    assert old in POLICY, old
    return POLICY.replace(old, new, 1)


BAD_POLICIES: dict[str, str | bytes] = {
    "unknown_key": POLICY + "colour: blue\n",
    "duplicate_key": _variant("default: hold\n", "default: hold\ndefault: reject\n"),
    "default_approve": _variant("default: hold", "default: approve"),
    "yaml_boolean": _variant("on_invalid: hold", "on_invalid: no"),
    "unquoted_address": _variant(f'["{SANCTIONED}"]', f"[{SANCTIONED.lower()}]"),
    "float_amount_nan": _variant('max: "100"', "max: .nan"),
    "float_amount_inf": _variant('max: "100"', "max: .inf"),
    "float_amount_exponent": _variant('max: "100"', "max: 1e3"),
    "unquoted_amount": _variant('max: "100"', "max: 100"),
    "negative_limit": _variant("max_count: 400", "max_count: -1"),
    "zero_limit": _variant("max_count: 400", "max_count: 0"),
    "unknown_list": _variant("in: [sanctioned]", "in: [nobody]"),
    "shadowed_rule": POLICY + '  - name: never\n    chain: "56"\n    amount: {max: "5"}\n'
                              "    action: approve\n",
    "bad_address_checksum": _variant(SANCTIONED, SANCTIONED[:5] + SANCTIONED[5].swapcase()
                                     + SANCTIONED[6:]),
    "python_tag": POLICY + "extra: !!python/object/apply:os.system ['true']\n",
    "alias_bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a]\n"
                  "c: &c [*b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c]\n",
    "version_2": _variant("version: 1", "version: 2"),
    "tabs": POLICY.replace("  - name: small", "\t- name: small"),
    "missing_list_file": _variant(f'sanctioned: ["{SANCTIONED}"]',
                                  "sanctioned: {file: lists/missing.txt}"),
    "list_file_outside": _variant(f'sanctioned: ["{SANCTIONED}"]',
                                  "sanctioned: {file: /etc/hostname}"),
    "truncated": POLICY[: len(POLICY) // 2],
    "truncated_mid_key": POLICY[: POLICY.index("max_amount") + 4],
    "empty": "",
    "only_comment": "# nothing\n",
    "not_a_mapping": "- a\n- b\n",
    "binary": os.urandom(512),
    "not_utf8": POLICY.encode("utf-8").replace(b"chaos", b"ch\xffos", 1),
}


def _write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


class TestBadPolicies:
    @pytest.mark.parametrize("name", list(BAD_POLICIES))
    def test_refused_at_load_and_by_policy_check(self, tmp_path: Path, name: str,
                                                 capsys: pytest.CaptureFixture[str],
                                                 figures: Figures) -> None:
        path = tmp_path / "bad.yaml"
        _write(path, BAD_POLICIES[name])
        with pytest.raises(PolicyError):
            load_policy(path)
        assert main(["policy", "check", str(path)]) == 2
        err = capsys.readouterr().err
        assert "bad.yaml:" in err, "the error names file:line"
        figures.add("bad_policies", refused_at_load=1)

    @pytest.mark.timeout(900)  # many processes on a busy machine
    def test_run_exits_2(self, world: World, cosigner_env: Callable[..., None],
                         capsys: pytest.CaptureFixture[str], figures: Figures) -> None:
        """``cosigner run`` with each bad policy: exit 2, nothing posted."""
        for name, content in BAD_POLICIES.items():
            path = world.tmp / "policy" / f"{name}.yaml"
            _write(path, content)
            cosigner_env(**{k.removeprefix("COSIGNER_"): v for k, v in world.env(
                POLICY_PATH=path).items() if k.startswith("COSIGNER_")})
            assert main(["run", "--once"]) == 2, name
            capsys.readouterr()
            figures.add("bad_policies", refused_at_start=1)
        assert world.admin.decisions() == []

    async def test_hot_reloads_keep_the_last_good(self, world: World,
                                                  figures: Figures) -> None:
        """Each bad version written over the running policy: refused, the good one stays."""
        init_journal(world.env(), world.tmp)
        daemon = build_daemon(daemon_spec(world.settings()), BuildOptions(
            install_signals=False, configure_logs=False, watch_interval=0))
        try:
            good = daemon.pipeline.state.policy.sha256
            for name, content in BAD_POLICIES.items():
                _write(world.policy_path, content)
                assert await daemon.reload_policy("chaos") is False, name
                assert daemon.pipeline.state.policy.sha256 == good, name
                figures.add("bad_policies", bad_reloads=1, last_good_kept=1)
            _write(world.policy_path, POLICY.replace("name: chaos", "name: chaos-2"))
            assert await daemon.reload_policy("chaos") is True
            assert daemon.pipeline.state.policy.name == "chaos-2"
        finally:
            daemon.request_stop()
            await daemon.close()

    async def test_configmap_symlink_swaps(self, world: World, figures: Figures) -> None:
        """A Kubernetes ConfigMap volume: ``..data`` swapped atomically to a new directory;
        the file watch reloads a good one and keeps the last good on a bad one."""
        mount = world.tmp / "configmap"
        mount.mkdir()

        def publish(version: int, content: str | bytes) -> None:
            target = mount / f"..2026_11_27_00_00_0{version}.000000001"
            target.mkdir()
            _write(target / "policy.yaml", content)
            tmp_link = mount / "..data_tmp"
            tmp_link.symlink_to(target.name)
            os.replace(tmp_link, mount / "..data")  # the atomic swap kubelet does

        publish(0, POLICY)
        (mount / "policy.yaml").symlink_to("..data/policy.yaml")
        init_journal(world.env(), world.tmp)
        spec = daemon_spec(world.settings(policy_path=mount / "policy.yaml"))
        daemon = build_daemon(spec, BuildOptions(
            install_signals=False, configure_logs=False, watch_interval=0))
        try:
            good = daemon.pipeline.state.policy.sha256
            for version, name in enumerate(["truncated", "default_approve", "binary"], 1):
                publish(version, BAD_POLICIES[name])
                await daemon.watch_job()
                assert daemon.pipeline.state.policy.sha256 == good, name
                figures.add("bad_policies", symlink_swaps=1, last_good_kept=1)
            publish(5, POLICY.replace("name: chaos", "name: chaos-swapped"))
            await daemon.watch_job()
            assert daemon.pipeline.state.policy.name == "chaos-swapped"
            figures.add("bad_policies", symlink_swaps=1)
        finally:
            daemon.request_stop()
            await daemon.close()


class TestBadShards:
    @pytest.mark.timeout(900)  # many processes on a busy machine
    def test_every_bad_shard_exits_2(self, world: World, shard_factory: ShardFactory,
                                     cosigner_env: Callable[..., None],
                                     capsys: pytest.CaptureFixture[str],
                                     figures: Figures) -> None:
        good = world.shard
        now = datetime.now(UTC)
        folder = world.tmp / "shards"
        folder.mkdir()

        def raw(name: str, content: bytes) -> Path:
            path = folder / name
            write_private(path, content)
            return path

        cases: dict[str, tuple[Path, str]] = {
            "wrong_password": (good.path, "not-the-password"),
            "truncated": (raw("truncated.pfx", good.path.read_bytes()[:300]), SHARD_PASSWORD),
            "garbage": (raw("garbage.pfx", os.urandom(2048)), SHARD_PASSWORD),
            "empty": (raw("empty.pfx", b""), SHARD_PASSWORD),
            "pem_not_pfx": (raw("cert.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                            b"-----END CERTIFICATE-----\n"), SHARD_PASSWORD),
            "small_key": (shard_factory("small.pfx", bits=1024).path, SHARD_PASSWORD),
            "expired": (shard_factory("expired.pfx", not_before=now - timedelta(days=30),
                                      not_after=now - timedelta(days=1)).path, SHARD_PASSWORD),
            "group_readable": (shard_factory("loose.pfx", mode=0o640).path, SHARD_PASSWORD),
            "missing": (folder / "missing.pfx", SHARD_PASSWORD),
            "directory": (folder, SHARD_PASSWORD),
        }
        for name, (path, password) in cases.items():
            env = world.env(PFX_PATH=path, PFX_PASSWORD=password)
            cosigner_env(**{k.removeprefix("COSIGNER_"): v for k, v in env.items()
                            if k.startswith("COSIGNER_")})
            assert main(["run", "--once"]) == 2, name
            err = capsys.readouterr().err
            assert password not in err, name
            figures.add("bad_shards", cases=1, exit_2=1)
        assert world.admin.decisions() == []
