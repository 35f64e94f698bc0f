"""The approval policy: strict YAML loading, first-match rules, rolling limits.

Pure code except :func:`load_policy` (which reads the policy and its list
files).  The daemon loads once (or reloads with :func:`try_load_policy`), keeps a
:class:`Ledger` of approvals for the limits, and per item calls
:func:`evaluate`; when the decision approves, it adds ``Approval.from_item``.
"""

from __future__ import annotations

from cosigner.policy.engine import (
    DEFAULT_RULE,
    INVALID_REASONS,
    INVALID_RULE,
    Decision,
    LimitEffect,
    evaluate,
    validate_item,
)
from cosigner.policy.ledger import Approval, Ledger
from cosigner.policy.loader import load_policy, try_load_policy
from cosigner.policy.model import Chain, CompiledPolicy, Limit, Rule

__all__ = [
    "DEFAULT_RULE",
    "INVALID_REASONS",
    "INVALID_RULE",
    "Approval",
    "Chain",
    "CompiledPolicy",
    "Decision",
    "Ledger",
    "Limit",
    "LimitEffect",
    "Rule",
    "evaluate",
    "load_policy",
    "try_load_policy",
    "validate_item",
]
