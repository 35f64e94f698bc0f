"""Policy governance in the daemon (issue 14, DESIGN section 11): M-of-N signed bundles at start
and on reload, loosening only after ``POLICY_LOOSEN_DELAY``, tightening at once, revert vetoes,
and a restart during the delay keeping the same activation time.

Keys are real ``ssh-keygen`` keys (tests/sshsig.py).  Time is moved with ``time-machine``,
never slept through.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from structlog.testing import capture_logs

from cosigner.cli import main
from cosigner.daemon.service import Daemon
from cosigner.errors import UnsignedPolicyError
from cosigner.models import Action
from cosigner.policy.bundle import read_manifest, signature_dir
from cosigner.policy.governance import PENDING_REASON
from cosigner.policy.loader import load_policy
from tests.daemon.conftest import COSIGNER, SANCTIONED, Rig, address, item, wait_for
from tests.daemon.test_service import running
from tests.sshsig import Approvers, make_approvers

pytestmark = pytest.mark.external_service

CUSTOMER = address(0x33)
NEWLY_SANCTIONED = address(0x44)
WALLET = address(0x55)
DELAY = timedelta(seconds=5)

GOVERNED = """\
version: 1
name: governed
default: hold
chains:
  "56": {name: bsc, address: evm, decimals: 18}
lists:
  sanctioned: {file: lists/sanctioned.txt}
  allowlist: {file: lists/allowlist.txt}
rules:
  - name: block-sanctioned
    to: {in: [sanctioned]}
    action: reject
  - name: allowlisted
    chain: "56"
    to: {in: [allowlist]}
    action: approve
  - name: small
    chain: "56"
    amount: {max: "100"}
    action: approve
"""


@pytest.fixture(scope="module")
def approvers(tmp_path_factory: pytest.TempPathFactory) -> Approvers:
    return make_approvers(tmp_path_factory.mktemp("approvers"))


class Bundle:
    """The rig's policy file, its two list files and its signatures."""

    def __init__(self, path: Path, approvers: Approvers) -> None:
        self.path = path
        self.approvers = approvers
        (path.parent / "lists").mkdir(exist_ok=True)

    def write(self, sanctioned: list[str], allowlist: list[str], *signers: str) -> str:
        """Write the bundle, replace its signatures by *signers*'; return its digest."""
        lists = self.path.parent / "lists"
        (lists / "sanctioned.txt").write_text("".join(a + "\n" for a in sanctioned))
        # the allowlist always holds a wallet (an empty list would make its rule dead)
        (lists / "allowlist.txt").write_text("".join(a + "\n" for a in [WALLET, *allowlist]))
        self.path.write_text(GOVERNED)
        self.approvers.unsign(self.path)
        self.approvers.sign(self.path, *signers)
        return load_policy(self.path).sha256

    def manifest(self) -> str:
        policy = load_policy(self.path)
        return read_manifest(self.path, policy.sources, policy.sha256)


@pytest.fixture
def bundle(rig: Rig, approvers: Approvers) -> Bundle:
    bundle = Bundle(rig.policy_path, approvers)
    bundle.write([SANCTIONED], [], "alice", "bob")
    return bundle


def governed(rig: Rig, approvers: Approvers, delay: timedelta = timedelta(0)) -> Daemon:
    """A daemon with 2-of-3 signed policies and *delay*; first sightings are kept in its
    SQLite journal (a restart reads them back)."""
    settings = rig.with_settings(policy_signers=approvers.allowed_signers, policy_quorum=2,
                                 policy_loosen_delay=f"{int(delay.total_seconds())}s")
    return rig.build(settings, watch_interval=0)


async def _p1_then_p2(rig: Rig, approvers: Approvers, bundle: Bundle,
                      clock: time_machine.Coordinates) -> tuple[Daemon, str, str]:
    """A daemon (delay DELAY) that had P1 (allowlists CUSTOMER) in force, then P2 (which
    removes it and sanctions one more address): the daemon and the two digests."""
    daemon = governed(rig, approvers, DELAY)
    p1 = bundle.write([SANCTIONED], [CUSTOMER], "alice", "bob")
    assert await daemon.reload_policy("test") is True
    clock.shift(DELAY * 2)
    assert daemon.pipeline.activate_due()
    p2 = bundle.write([SANCTIONED, NEWLY_SANCTIONED], [], "alice", "bob")
    assert await daemon.reload_policy("test") is True
    clock.shift(DELAY * 2)
    assert daemon.pipeline.activate_due()
    return daemon, p1, p2


def reloads(daemon: Daemon, outcome: str) -> float:
    return daemon.metrics.registry.get_sample_value(
        "cosigner_policy_reloads_total", {"outcome": outcome}) or 0


def metric(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels)


# Each way a bundle can lack its quorum; applied to a bundle signed by alice and bob.
def one_signature(b: Bundle) -> None:
    b.approvers.unsign(b.path, ["bob"])


def unlisted_key(b: Bundle) -> None:
    b.approvers.unsign(b.path, ["bob"])
    b.approvers.sign(b.path, "mallory")


def older_manifest(b: Bundle) -> None:
    older = b.manifest()
    (b.path.parent / "lists" / "allowlist.txt").write_text(f"{WALLET}\n{CUSTOMER}\n")
    b.approvers.unsign(b.path)
    b.approvers.sign(b.path, "alice")                   # alice signed the new version,
    b.approvers.sign(b.path, "bob", manifest=older)      # bob the one before


def list_changed_after_signing(b: Bundle) -> None:
    (b.path.parent / "lists" / "allowlist.txt").write_text(f"{WALLET}\n{CUSTOMER}\n")


REFUSALS = [one_signature, unlisted_key, older_manifest, list_changed_after_signing]


class TestSignedStart:
    """A bundle needs M valid signatures from distinct listed principals to start."""

    async def test_two_of_three_starts(self, rig: Rig, approvers: Approvers,
                                       bundle: Bundle) -> None:
        """alice (ed25519) and bob (ecdsa) make the quorum of 2; carol is missing."""
        with capture_logs() as logs:
            daemon = governed(rig, approvers)
        signed = [e for e in logs if e["event"] == "policy.signed"]
        assert signed[0]["signed_by"] == ["alice@example.com", "bob@example.com"]
        assert signed[0]["missing"] == ["carol@example.com"]
        (small,) = await rig.add(item("5"))
        assert await daemon.poll_job()
        assert rig.latest()[small].action is Action.APPROVE

    async def test_rsa_signatures_count_too(self, rig: Rig, approvers: Approvers,
                                            bundle: Bundle) -> None:
        """alice and carol (rsa-sha2-512) also make the quorum."""
        bundle.write([SANCTIONED], [], "alice", "carol")
        governed(rig, approvers)

    @pytest.mark.parametrize("spoil", REFUSALS, ids=lambda f: f.__name__)
    async def test_refused_at_start(self, rig: Rig, approvers: Approvers, bundle: Bundle,
                                    spoil: object) -> None:
        """Each spoiled bundle is an UnsignedPolicyError (a ConfigError: exit 2)."""
        spoil(bundle)  # type: ignore[operator]
        with pytest.raises(UnsignedPolicyError,
                           match=r"NOT ENOUGH: [01] of 2 required \(signed: .*; missing: .*bob"):
            governed(rig, approvers)

    def test_cosigner_run_exits_2_naming_who_signed(self, rig: Rig, approvers: Approvers,
                                                   bundle: Bundle) -> None:
        """`cosigner run --once` on a 1-signature bundle: exit 2, names signed and missing."""
        one_signature(bundle)
        done = subprocess.run(
            [COSIGNER, "run", "--once"],
            env=rig.env(POLICY_SIGNERS=approvers.allowed_signers, POLICY_QUORUM="2"),
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "signed: alice@example.com; missing: bob@example.com, carol@example.com" \
            in done.stderr


class TestSignedReload:
    """On reload an unsigned bundle is refused: the last good one stays in force."""

    @pytest.mark.parametrize("spoil", REFUSALS, ids=lambda f: f.__name__)
    async def test_refused_on_reload(self, rig: Rig, approvers: Approvers, bundle: Bundle,
                                     spoil: object) -> None:
        """outcome unsigned, policy unchanged, the log names who signed and who is missing."""
        daemon = governed(rig, approvers)
        before = daemon.pipeline.state.policy
        spoil(bundle)  # type: ignore[operator]
        with capture_logs() as logs:
            assert await daemon.reload_policy("test") is False
        assert daemon.pipeline.state.policy is before
        assert reloads(daemon, "unsigned") == 1
        (event,) = [e for e in logs if e["event"] == "policy.unsigned"]
        assert "NOT ENOUGH" in event["problems"][0]
        assert "carol@example.com" in event["problems"][0].split("missing: ")[1]
        # still the old policy: the new allowlist entry (if any) does not approve
        (big,) = await rig.add(item("500", to=CUSTOMER))
        assert await daemon.poll_job()
        assert rig.latest()[big].action is Action.HOLD

    async def test_a_new_signature_is_picked_up_by_the_watch(
            self, rig: Rig, approvers: Approvers, bundle: Bundle) -> None:
        """Adding the missing signature changes the watched stamp, so the bundle reloads."""
        daemon = governed(rig, approvers)
        bundle.write([SANCTIONED, NEWLY_SANCTIONED], [], "alice")
        assert await daemon.reload_policy("test") is False
        approvers.sign(bundle.path, "carol")
        assert daemon._stamp() != daemon._watch_stamp
        await daemon.watch_job()
        assert reloads(daemon, "ok") == 1


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(datetime.now(UTC), tick=True) as traveller:
        yield traveller


class TestLoosenDelay:
    """A loosening waits for the delay; a tightening applies at once; reverting vetoes."""

    async def test_allowlisting_waits_sanctioning_does_not(
            self, rig: Rig, approvers: Approvers, bundle: Bundle,
            clock: time_machine.Coordinates) -> None:
        """CUSTOMER (newly allowlisted) is held until the delay passes; NEWLY_SANCTIONED is
        rejected at once; records under the intersection name both digests."""
        daemon = governed(rig, approvers, DELAY)
        old = daemon.pipeline.state.policy.sha256
        new = bundle.write([SANCTIONED, NEWLY_SANCTIONED], [CUSTOMER], "alice", "bob")
        assert await daemon.reload_policy("test") is True
        pending = daemon.pipeline.state.pending
        assert pending is not None
        assert metric(daemon, "cosigner_policy_pending_info", sha256=new) == 1
        assert metric(daemon, "cosigner_policy_activation_timestamp_seconds") == \
            pending.activates_at.timestamp()

        big, bad = await rig.add(item("500", to=CUSTOMER), item("5", to=NEWLY_SANCTIONED))
        assert await daemon.poll_job()
        latest = rig.latest()
        assert latest[big].action is Action.HOLD
        assert PENDING_REASON in latest[big].reasons
        assert latest[bad].action is Action.REJECT
        assert latest[bad].rule == "block-sanctioned"
        assert latest[big].policy_sha256 == f"{old}+{new}"

        clock.shift(DELAY - timedelta(seconds=1))
        assert await daemon.poll_job()
        assert rig.latest()[big].action is Action.HOLD

        clock.shift(timedelta(seconds=2))
        assert await daemon.poll_job()
        assert rig.latest()[big].action is Action.APPROVE
        assert rig.latest()[big].policy_sha256 == new
        assert daemon.pipeline.state.pending is None
        assert daemon.pipeline.state.policy.sha256 == new
        assert metric(daemon, "cosigner_policy_pending_info", sha256=new) is None

    async def test_reverting_before_the_delay_vetoes(
            self, rig: Rig, approvers: Approvers, bundle: Bundle,
            clock: time_machine.Coordinates) -> None:
        """Putting the old files (and signatures) back drops the pending bundle for good."""
        daemon = governed(rig, approvers, DELAY)
        old = daemon.pipeline.state.policy.sha256
        bundle.write([SANCTIONED], [CUSTOMER], "alice", "bob")
        assert await daemon.reload_policy("test") is True
        assert daemon.pipeline.state.pending is not None

        assert bundle.write([SANCTIONED], [], "alice", "bob") == old
        with capture_logs() as logs:
            assert await daemon.reload_policy("test") is True
        assert [e["event"] for e in logs if e["event"].startswith("policy.")] == [
            "policy.vetoed"]
        assert daemon.pipeline.state.pending is None

        clock.shift(DELAY * 2)
        (big,) = await rig.add(item("500", to=CUSTOMER))
        assert await daemon.poll_job()
        assert rig.latest()[big].action is Action.HOLD
        assert rig.latest()[big].policy_sha256 == old

    async def test_a_restart_during_the_delay_keeps_the_activation_time(
            self, rig: Rig, approvers: Approvers, bundle: Bundle,
            clock: time_machine.Coordinates) -> None:
        """The first sighting is remembered in the journal (remember_policy): a restart
        neither resets nor skips the delay."""
        first = governed(rig, approvers, DELAY)
        (big,) = await rig.add(item("500", to=CUSTOMER))
        assert await first.poll_job()
        new = bundle.write([SANCTIONED], [CUSTOMER], "alice", "bob")
        assert await first.reload_policy("test") is True
        pending = first.pipeline.state.pending
        assert pending is not None
        activates_at = pending.activates_at
        first.request_stop()
        await first.close()

        clock.shift(timedelta(seconds=3))
        second = governed(rig, approvers, DELAY)
        restarted = second.pipeline.state.pending
        assert restarted is not None
        assert restarted.activates_at == activates_at
        assert metric(second, "cosigner_policy_pending_info", sha256=new) == 1
        assert metric(second, "cosigner_policy_activation_timestamp_seconds") == \
            activates_at.timestamp()
        assert await second.poll_job()
        assert rig.latest()[big].action is Action.HOLD

        clock.shift(timedelta(seconds=3))
        assert await second.poll_job()
        assert rig.latest()[big].action is Action.APPROVE

    async def test_rolling_back_to_an_older_signed_bundle_waits_too(
            self, rig: Rig, approvers: Approvers, bundle: Bundle,
            clock: time_machine.Coordinates) -> None:
        """P1 (allowlists CUSTOMER) was in force, P2 removed it; putting P1's files and
        signatures back is a loosening like any other: it waits, also across a restart."""
        daemon, p1, p2 = await _p1_then_p2(rig, approvers, bundle, clock)
        assert daemon.pipeline.state.policy.sha256 == p2
        (big,) = await rig.add(item("500", to=CUSTOMER))
        assert await daemon.poll_job()
        assert rig.latest()[big].action is Action.HOLD

        assert bundle.write([SANCTIONED], [CUSTOMER], "alice", "bob") == p1  # the rollback
        assert await daemon.reload_policy("test") is True
        pending = daemon.pipeline.state.pending
        assert pending is not None
        assert pending.activates_at > datetime.now(UTC)
        daemon.request_stop()
        await daemon.close()

        clock.shift(timedelta(seconds=2))
        again = governed(rig, approvers, DELAY)
        restarted = again.pipeline.state.pending
        assert restarted is not None
        assert restarted.activates_at == pending.activates_at
        assert await again.poll_job()
        assert rig.latest()[big].action is Action.HOLD
        assert rig.latest()[big].policy_sha256 == f"{p2}+{p1}"
        clock.shift(DELAY)
        assert await again.poll_job()
        assert rig.latest()[big].action is Action.APPROVE

    async def test_a_rollback_after_a_quiet_spell_waits_too(
            self, rig: Rig, approvers: Approvers, bundle: Bundle,
            clock: time_machine.Coordinates) -> None:
        """Regression: the policy in force was read only from the decisions of the last
        delay; after a quiet spell longer than that, an older, looser bundle put back
        while the daemon was down found its first sighting long past and was in force at
        once.  It waits the delay like any change."""
        daemon, p1, p2 = await _p1_then_p2(rig, approvers, bundle, clock)
        (big,) = await rig.add(item("500", to=CUSTOMER))
        assert await daemon.poll_job()
        assert rig.latest()[big].policy_sha256 == p2
        daemon.request_stop()
        await daemon.close()

        clock.shift(DELAY * 20)  # nothing decided for far longer than the delay
        assert bundle.write([SANCTIONED], [CUSTOMER], "alice", "bob") == p1
        again = governed(rig, approvers, DELAY)
        pending = again.pipeline.state.pending
        assert pending is not None
        assert pending.policy.sha256 == p1
        assert pending.activates_at > datetime.now(UTC)
        assert await again.poll_job()
        assert rig.latest()[big].action is Action.HOLD

    async def test_cosigner_status_shows_the_pending_bundle(
            self, rig: Rig, approvers: Approvers, bundle: Bundle,
            cosigner_env: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
        """`cosigner status` reads the pending digest and its activation from the daemon."""
        daemon = governed(rig, approvers, timedelta(hours=24))
        new = bundle.write([SANCTIONED], [CUSTOMER], "alice", "bob")
        assert await daemon.reload_policy("test") is True
        pending = daemon.pipeline.state.pending
        assert pending is not None
        async with running(daemon):
            await wait_for(lambda: daemon.polls >= 1, what="the first poll")
            assert daemon.http is not None
            env = rig.env(HTTP_ADDR=f"127.0.0.1:{daemon.http.port}")
            cosigner_env(**{k.removeprefix("COSIGNER_"): v for k, v in env.items()
                            if k.startswith("COSIGNER_") and k != "COSIGNER_REQUIRE_ALL"})
            code = await asyncio.to_thread(main, ["status", "--json"])
            text_code = await asyncio.to_thread(main, ["status"])
        assert code == text_code == 0
        out = capsys.readouterr().out
        report = json.loads(out[out.index("{\n"):out.index("\n}\n") + 2])
        assert report["daemon"]["policy_pending"] == {
            "sha256": new, "takes_effect": pending.activates_at.isoformat()}
        assert f"policy change: PENDING {new[:12]}" in out

    async def test_the_first_policy_of_a_new_journal_is_in_force_at_once(
            self, rig: Rig, approvers: Approvers, bundle: Bundle) -> None:
        """Nothing to loosen from: an empty journal's first bundle is not held back."""
        daemon = governed(rig, approvers, timedelta(hours=24))
        assert daemon.pipeline.state.pending is None
        (small,) = await rig.add(item("5"))
        assert await daemon.poll_job()
        assert rig.latest()[small].action is Action.APPROVE

    async def test_switching_the_delay_on_keeps_the_bundle_in_force(
            self, rig: Rig, approvers: Approvers, bundle: Bundle) -> None:
        """A bundle run with delay 0 stays in force when the daemon restarts with a delay."""
        first = governed(rig, approvers, timedelta(0))
        await rig.add(item("5"))
        assert await first.poll_job()
        first.request_stop()
        await first.close()
        second = governed(rig, approvers, timedelta(hours=24))
        assert second.pipeline.state.pending is None


def test_signature_dir_is_beside_the_policy(tmp_path: Path) -> None:
    """``<policy file>.signatures/`` is where approvers put their .sig files."""
    assert signature_dir(tmp_path / "treasury.yaml") == tmp_path / "treasury.yaml.signatures"


@pytest.mark.parametrize("quorum", [0, None, 4])
def test_a_quorum_outside_one_to_the_signers_is_refused(approvers: Approvers,
                                                        quorum: int | None) -> None:
    """A quorum of 0 with signers (possible for a DaemonSpec built directly, the settings
    refuse it) would accept any unsigned bundle: refused, as is one above the signers."""
    from cosigner.daemon.governed import Governance
    from cosigner.errors import ConfigError
    with pytest.raises(ConfigError, match="COSIGNER_POLICY_QUORUM"):
        Governance.configure(approvers.allowed_signers, quorum, timedelta(0))
