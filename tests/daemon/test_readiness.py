"""``/readyz``: every check reflects reality, and each one can fail (issue 8, section 3)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cosigner.errors import StoreError
from tests.daemon.conftest import Rig, item


class _BrokenWrites:
    """The daemon's journal, except that every write fails."""

    def __init__(self, journal: Any) -> None:
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

    def record_decisions(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreError("journal test: disk full")


class TestEachCheckCanFail:
    async def test_all_checks_pass_after_a_poll(self, rig: Rig) -> None:
        """A daemon that polled once is ready on every count."""
        daemon = rig.build()
        assert daemon.readiness()["recent_poll"] is False  # no poll yet
        assert await daemon.poll_job()
        assert all(daemon.readiness().values()), daemon.readiness()

    async def test_recent_poll_goes_stale(self, rig: Rig) -> None:
        """Two poll intervals after the last success the poll is no longer recent."""
        daemon = rig.build()
        assert await daemon.poll_job()
        real = daemon.pipeline.clock
        assert daemon.readiness()["recent_poll"] is True
        daemon.pipeline.clock = lambda: real() + timedelta(minutes=5)
        assert daemon.readiness()["recent_poll"] is False

    async def test_policy_in_force_fails_after_a_failed_reload(self, rig: Rig) -> None:
        """A policy file that no longer loads: the last good policy decides, but the policy
        on disk is not in force, so the daemon is not ready; a good reload fixes it."""
        daemon = rig.build()
        good = rig.policy_path.read_text(encoding="utf-8")
        rig.policy_path.write_text(good.replace("default: hold", "default: approve"),
                                   encoding="utf-8")
        assert await daemon.reload_policy("test") is False
        assert daemon.readiness()["policy_in_force"] is False
        rig.policy_path.write_text(good, encoding="utf-8")
        assert await daemon.reload_policy("test") is True
        assert daemon.readiness()["policy_in_force"] is True

    async def test_shard_usable_fails_once_the_certificate_expired(self, rig: Rig) -> None:
        """After the certificate's not_after the shard is not usable."""
        daemon = rig.build()
        expiry = daemon.pipeline.shard.info.not_after
        daemon.pipeline.clock = lambda: expiry + timedelta(seconds=1)
        assert daemon.readiness()["shard_usable"] is False

    async def test_shard_usable_fails_when_signing_fails(self, rig: Rig) -> None:
        """A signer that breaks makes the shard unusable until signing works again."""
        daemon = rig.build()

        async def broken(_payloads: Any) -> Any:
            raise OSError("worker died")

        daemon.pipeline.signer.sign_many = broken  # type: ignore[method-assign]
        await rig.add(item("5"))
        await daemon.poll_job()
        assert daemon.readiness()["shard_usable"] is False

    async def test_journal_writable_fails_when_a_write_fails(self, rig: Rig) -> None:
        """A decision write that fails makes the journal not writable (and nothing is posted)."""
        daemon = rig.build()
        daemon.pipeline.journal = _BrokenWrites(daemon.pipeline.journal)  # type: ignore[assignment]
        await rig.add(item("5"))
        await daemon.poll_job()
        assert daemon.readiness()["journal_writable"] is False
        assert await rig.received() == []

    async def test_journal_writable_fails_once_closed(self, rig: Rig) -> None:
        """A closed journal is not writable."""
        daemon = rig.build()
        await daemon.close()
        assert daemon.readiness()["journal_writable"] is False

    async def test_lock_held_follows_the_store(self, rig: Rig) -> None:
        """When the store says its writer lock is lost, the daemon is not ready."""
        daemon = rig.build()
        held = {"value": True}
        object.__setattr__(daemon.journal, "lock_held", lambda: held["value"])
        assert daemon.readiness()["lock_held"] is True
        held["value"] = False
        assert daemon.readiness()["lock_held"] is False

    async def test_a_broken_lock_probe_is_not_ready(self, rig: Rig) -> None:
        """A lock probe that raises counts as a lock not held."""
        daemon = rig.build()

        def broken() -> bool:
            raise OSError("lock file gone")

        object.__setattr__(daemon.journal, "lock_held", broken)
        assert daemon.readiness()["lock_held"] is False
