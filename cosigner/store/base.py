"""The journal's interface and value types, as the stores import them.

They are defined once elsewhere: the value types in :mod:`cosigner.journal`, the
:class:`Journal` and :class:`LimitGuard` interfaces in :mod:`cosigner.abc` (with
every other interface).  This module re-exports them for the stores' modules.

Implementations: :class:`~cosigner.store.memory.MemoryJournal` (tests) and
:class:`~cosigner.store.sqlite.SqliteJournal` (the default store).  Every one
passes ``tests/store/test_contract.py``.
"""

from __future__ import annotations

from cosigner.abc import Clock, Journal, LimitGuard, utc_now
from cosigner.journal import (
    DECIDED,
    ENFORCE,
    FAILED,
    GENESIS_HASH,
    GONE,
    MODES,
    OUTCOME_STATES,
    POSTED,
    SHADOW,
    SHADOW_STATE,
    STATES,
    ApprovalRow,
    DecisionRecord,
    Head,
    ItemView,
    NewDecision,
    NewOutcome,
    VerifyResult,
)

__all__ = [
    "DECIDED",
    "ENFORCE",
    "FAILED",
    "GENESIS_HASH",
    "GONE",
    "MODES",
    "OUTCOME_STATES",
    "POSTED",
    "SHADOW",
    "SHADOW_STATE",
    "STATES",
    "ApprovalRow",
    "Clock",
    "DecisionRecord",
    "Head",
    "ItemView",
    "Journal",
    "LimitGuard",
    "NewDecision",
    "NewOutcome",
    "VerifyResult",
    "utc_now",
]
