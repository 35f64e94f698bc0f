"""The merchant's private-key shard: loading, the ``data`` signature, sign objects."""

from cosigner.signing.objects import approval_sign_object, collect_sign_object
from cosigner.signing.shard import (
    EXPIRY_WARNING_DAYS,
    SIGN_SCHEMES,
    Shard,
    ShardInfo,
    SignScheme,
    default_password,
    load_shard,
    verify_data,
)

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "SIGN_SCHEMES",
    "Shard",
    "ShardInfo",
    "SignScheme",
    "approval_sign_object",
    "collect_sign_object",
    "default_password",
    "load_shard",
    "verify_data",
]
