"""Fixtures of the sandbox tests: a merchant with a throwaway shard, a running sandbox
on a loopback socket, its admin helper and our API client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from cosigner.api.client import ApiClient
from cosigner.sandbox import Merchant, SandboxAdmin, SandboxConfig, SandboxServer
from cosigner.signing import Shard, approval_sign_object, load_shard
from cosigner.signing.shard import certificate_pem
from tests.conftest import ThrowawayShard

MERCHANT_NO = "M-TEST-0001"
API_KEY = "ak-test-0001"
API_SECRET = "sandbox-test-secret"
#: Order steps and callback retries run 10,000 times faster (2 minutes: 12 ms).
TIME_SCALE = 0.0001


@pytest.fixture
def signer(shard: ThrowawayShard) -> Shard:
    """The merchant's shard, loaded for signing approve and collect ``data``."""
    return load_shard(shard.path, shard.password)


@pytest.fixture
def merchant(shard: ThrowawayShard) -> Merchant:
    """The test merchant with the shard's certificate registered."""
    return Merchant(MERCHANT_NO, API_KEY, API_SECRET,
                    certificate_pem=certificate_pem(shard.certificate))


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig(callback_time_scale=TIME_SCALE)


@pytest.fixture
async def server(merchant: Merchant, sandbox_config: SandboxConfig
                 ) -> AsyncIterator[SandboxServer]:
    """A sandbox serving on 127.0.0.1 (random port) in the test's event loop."""
    async with SandboxServer(merchants=[merchant], config=sandbox_config) as running:
        yield running


@pytest.fixture
async def admin(server: SandboxServer) -> AsyncIterator[SandboxAdmin]:
    async with SandboxAdmin(server.url) as helper:
        yield helper


def make_client(url: str, *, secret: str = API_SECRET, **kwargs: Any) -> ApiClient:
    """Our API client for the test merchant: one attempt, so each answer is observed."""
    kwargs.setdefault("retries", 1)
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("backoff", (0.001, 0.01))
    return ApiClient(url, MERCHANT_NO, API_KEY, secret, **kwargs)


@pytest.fixture
async def client(server: SandboxServer) -> AsyncIterator[ApiClient]:
    async with make_client(server.url) as api:
        yield api


def approval(signer: Shard, item: Mapping[str, Any], status: int = 1,
             **changes: Any) -> tuple[dict[str, Any], str]:
    """The approve fields for a listed ``item`` (``changes`` applied after signing) and
    their ``data``."""
    fields: dict[str, Any] = {"id": item["id"], "from": item["fromAddress"],
                              "to": item["toAddress"], "value": str(item["amount"]),
                              "chainId": item["chainId"], "status": status}
    data = signer.sign(approval_sign_object(fields["id"], fields["from"], fields["to"],
                                            fields["value"], fields["chainId"], status))
    fields.update(changes)
    return fields, data
