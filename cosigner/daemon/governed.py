"""Policy governance in the daemon: signed bundles at start and on reload, the loosening delay.

:func:`load_governed` is the one way the daemon loads a policy: the bundle must
load, and with ``COSIGNER_POLICY_SIGNERS`` set it needs the quorum of approver
signatures over exactly the bytes that were loaded (else
:class:`~cosigner.errors.UnsignedPolicyError`, exit 2 at start, last good kept
on reload).  :func:`next_state` decides what a newly loaded bundle does to the
state in force: nothing (unchanged), replace it (no delay, or its delay already
passed), become pending (enforced as the intersection until it is due), or veto
the pending one (the files were reverted to the bundle in force).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cosigner.errors import ConfigError
from cosigner.policy import CompiledPolicy, Ledger, load_policy
from cosigner.policy.bundle import read_manifest
from cosigner.policy.governance import Pending, PolicyMemory, pending_for
from cosigner.store.base import Journal

from .metrics import Metrics
from .pipeline import PolicyState

if TYPE_CHECKING:
    from cosigner.policy.signatures import AllowedSigners, SignatureReport

#: The first sighting recorded for a bundle put in force without waiting.
IN_FORCE_SINCE = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Governance:
    """``POLICY_SIGNERS`` (parsed), ``POLICY_QUORUM``, ``POLICY_LOOSEN_DELAY`` and where
    first sightings are kept."""

    signers: AllowedSigners | None = None
    quorum: int = 0
    delay: timedelta = timedelta(0)
    memory: PolicyMemory | None = None

    @classmethod
    def configure(cls, signers_path: Path | None, quorum: int | None,
                  delay: timedelta) -> Governance:
        """Check the governance settings against each other.

        Raises:
            ConfigError: the signers file is unusable or the quorum exceeds its principals.
        """
        signers = None
        if signers_path is not None:
            # Only with signers: the signature checks (and their imports) cost start-up time.
            from cosigner.policy.signatures import NAMESPACE, load_allowed_signers
            signers = load_allowed_signers(signers_path)
            allowed = len(signers.principals(NAMESPACE))
            if quorum is None or quorum < 1:
                # 0 signatures of 0 needed would let any unsigned bundle through
                raise ConfigError(f"COSIGNER_POLICY_QUORUM: {quorum} with signers in "
                                  f"{signers_path}: at least 1 is needed")
            if quorum > allowed:
                raise ConfigError(f"COSIGNER_POLICY_QUORUM: {quorum} is more than the "
                                  f"{allowed} principal(s) of {signers_path}")
        return cls(signers, quorum or 0, delay)

    def with_journal(self, journal: object, memory: PolicyMemory | None = None
                     ) -> Governance:
        """The same settings, remembering first sightings in *journal* (or *memory*).

        Raises:
            ConfigError: a delay is set but the journal cannot remember policies.
        """
        memory = memory or _memory_of(journal)
        if self.delay > timedelta(0) and memory is None:
            raise ConfigError("COSIGNER_POLICY_LOOSEN_DELAY: this journal cannot remember when "
                              "a policy was first seen (remember_policy); set it to 0")
        return replace(self, memory=memory)


def _memory_of(journal: object) -> PolicyMemory | None:
    remember = getattr(journal, "remember_policy", None)
    return journal if callable(remember) else None  # type: ignore[return-value]


def load_governed(path: Path, governance: Governance
                  ) -> tuple[CompiledPolicy, SignatureReport | None]:
    """Load the bundle at *path* and check its signatures (when signers are configured).

    Raises:
        PolicyError: it does not load (or changed while being read);
        UnsignedPolicyError: fewer than the quorum of approvers signed its manifest.
    """
    policy = load_policy(path)
    if governance.signers is None:
        return policy, None
    from cosigner.policy.signatures import require_quorum  # imported only when signers are set
    manifest = read_manifest(path, policy.sources, policy.sha256)
    report = require_quorum(manifest, path, governance.signers, governance.quorum)
    return policy, report


def first_seen(governance: Governance, sha256: str, now: datetime, *,
               already_due: bool = False, previous: str | None = None) -> datetime | None:
    """When this digest was first seen (persisted), or None without a memory.

    With *previous* (the digest in force it replaces), the later of the digest's first
    sighting and the first sighting of the *transition* ``previous -> sha256``: rolling
    back to an older bundle that was signed and seen long ago is a change like any
    other and waits the delay too (the contract's "since first seen" alone would let
    it through at once).

    ``already_due`` records a bundle adopted without waiting (the first policy of a
    journal, or any policy while the delay is 0) as seen at the Unix epoch, so a later
    restart, or a delay switched on later, does not hold it back again.
    """
    memory = governance.memory
    if memory is None:
        return None
    seen_at = IN_FORCE_SINCE if already_due else now
    seen = memory.remember_policy(sha256, seen_at)
    if previous is not None and previous != sha256:
        seen = max(seen, memory.remember_policy(transition_key(previous, sha256), seen_at))
    return seen


def transition_key(previous: str, sha256: str) -> str:
    """The digest under which the first sighting of ``previous -> sha256`` is remembered."""
    return hashlib.sha256(f"cosigner-policy-transition\n{previous}\n{sha256}\n"
                          .encode("ascii")).hexdigest()


def last_in_force(journal: Journal, since: datetime | None) -> str | None:
    """The digest in force when the journal's latest decision after *since* (or ever)
    was made (the first of ``in-force+pending``), or None when there is none."""
    latest = None
    for record in journal.records(since=since):
        latest = record.policy_sha256
    return latest.split("+", 1)[0] if latest is not None else None


def latest_in_force(journal: Journal, now: datetime, delay: timedelta) -> str | None:
    """The digest in force at the journal's latest decision: looked for in the last
    *delay*, then in ever longer spans back, then in the whole journal.  A quiet spell
    longer than the delay must not lose it: without it, an older bundle put back while
    the daemon was down would find its own first sighting long past and skip the delay.
    """
    for span in (delay, delay * 8, delay * 64):
        found = last_in_force(journal, now - span)
        if found is not None:
            return found
    return last_in_force(journal, None)


def start_state(policy: CompiledPolicy, ledger: Ledger, path: Path, governance: Governance,
                journal: Journal, now: datetime) -> PolicyState:
    """The state to start in: in force, or pending against an unknown previous policy.

    A bundle still within its delay at start (a restart during the delay, or files
    changed while the daemon was down) is pending; the policy that was in force is
    gone with its files, so only the bundle's refusals apply until it is due.  The
    digest that was in force is read from the journal's latest decision (so the
    transition's first sighting counts too).  A journal with no decision at all
    has no policy to loosen: its first bundle is in force at once.
    """
    if governance.delay <= timedelta(0):
        first_seen(governance, policy.sha256, now, already_due=True)
        return PolicyState(policy, ledger, path)
    if next(iter(journal.records(limit=1)), None) is None:
        first_seen(governance, policy.sha256, now, already_due=True)
        return PolicyState(policy, ledger, path)
    previous = latest_in_force(journal, now, governance.delay)
    if previous == policy.sha256:
        first_seen(governance, policy.sha256, now)
        return PolicyState(policy, ledger, path)
    seen = first_seen(governance, policy.sha256, now, previous=previous)
    assert seen is not None  # Governance.with_journal refuses a delay without a memory
    pending = pending_for(policy, ledger, seen, governance.delay, now, previous_known=False,
                          previous_sha256=previous)
    return _state(policy, ledger, path, pending)


def _state(policy: CompiledPolicy, ledger: Ledger, path: Path | None,
           pending: Pending | None) -> PolicyState:
    state = PolicyState(policy, ledger, path)
    state.pending = pending
    return state


@dataclass(frozen=True)
class Transition:
    """What a reload does: the new state (None = unchanged) and the log event's name."""

    state: PolicyState | None
    event: str


def next_state(state: PolicyState, candidate: CompiledPolicy, ledger: Ledger,
               governance: Governance, now: datetime) -> Transition:
    """The state after *candidate* (loaded, signed) replaces the files of *state*.

    *ledger* is *candidate*'s ledger, rebuilt from the journal.
    """
    pending = state.pending
    path = state.path
    if pending is not None and candidate.sha256 == pending.policy.sha256:
        return Transition(None, "policy.unchanged")
    if candidate.sha256 == state.policy.sha256 and (pending is None or pending.previous_known):
        if pending is None:
            return Transition(None, "policy.unchanged")
        return Transition(PolicyState(state.policy, state.ledger, path), "policy.vetoed")
    if governance.delay <= timedelta(0):
        first_seen(governance, candidate.sha256, now, already_due=True)
        return Transition(PolicyState(candidate, ledger, path), "policy.reloaded")
    known = pending is None or pending.previous_known
    previous = state.policy.sha256 if known else pending.previous_sha256 if pending else None
    seen = first_seen(governance, candidate.sha256, now, previous=previous)
    assert seen is not None
    new_pending = pending_for(candidate, ledger, seen, governance.delay, now,
                              previous_known=known,
                              previous_sha256=None if known else previous)
    if new_pending is None:
        return Transition(PolicyState(candidate, ledger, path), "policy.reloaded")
    if known:
        return Transition(_state(state.policy, state.ledger, path, new_pending),
                          "policy.pending")
    return Transition(_state(candidate, ledger, path, new_pending), "policy.pending")


def show(metrics: Metrics, state: PolicyState, now: datetime) -> None:
    """Export the policy in force and the pending bundle (if any); *now* is when the state
    took effect."""
    metrics.set_policy(state.policy.name, state.policy.sha256)
    metrics.set_limit_scopes({lim.name: lim.per for lim in state.policy.limits})
    pending = state.pending
    if pending is None:
        metrics.set_policy_pending(None, now.timestamp())
    else:
        metrics.set_policy_pending(pending.policy.sha256, pending.activates_at.timestamp())


def pending_status(state: PolicyState) -> dict[str, object] | None:
    """The pending bundle for ``cosigner status``: digest, first seen, takes effect at."""
    pending = state.pending
    if pending is None:
        return None
    return {"sha256": pending.policy.sha256, "name": pending.policy.name,
            "first_seen": pending.first_seen.isoformat(),
            "takes_effect": pending.activates_at.isoformat(),
            "in_force": state.policy.sha256 if pending.previous_known else "unknown"}


def pending_from_metrics(pending_labels: dict[str, str] | None,
                         activation: float | None) -> dict[str, object] | None:
    """The pending bundle as ``cosigner status`` reads it from the daemon's ``/metrics``
    (``cosigner_policy_pending_info`` labels and
    ``cosigner_policy_activation_timestamp_seconds``); None when nothing is pending."""
    if not pending_labels or "sha256" not in pending_labels:
        return None
    takes_effect = (datetime.fromtimestamp(activation, UTC).isoformat()
                    if activation is not None else None)
    return {"sha256": pending_labels["sha256"], "takes_effect": takes_effect}


def pending_line(pending: dict[str, object] | None) -> str:
    """One line for ``cosigner status``."""
    if pending is None:
        return "policy change: none pending"
    return (f"policy change: PENDING {str(pending['sha256'])[:12]}, takes effect "
            f"{pending['takes_effect'] or 'at an unknown time'} (until then the old AND the "
            f"new policy must approve; revert the files to veto it)")
