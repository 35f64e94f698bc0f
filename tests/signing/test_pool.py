"""BatchSigner: big batches in a worker process, small ones inline, same bytes either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cosigner.errors import SigningError
from cosigner.signing import collect_sign_object, load_shard, verify_data
from cosigner.signing.objects import approval_sign_object
from cosigner.signing.pool import BatchSigner
from tests.chaos.procs import LINUX, kill_all, reap, subreaper, wait_gone

REPO = Path(__file__).resolve().parents[2]


def _payloads(n: int) -> list[bytes]:
    return [approval_sign_object(i, "0xfrom", "0xto", f"{i}.10", "56", 1 + i % 2)
            for i in range(n)]


class TestBatchSigner:
    async def test_worker_process_signs_exactly_like_inline(self, shard: Any) -> None:
        """A batch signed in the worker process is byte-identical to inline signing."""
        loaded = load_shard(shard.path, shard.password)
        signer = BatchSigner(loaded, path=shard.path, password=shard.password, threshold=2)
        try:
            payloads = [*_payloads(5), collect_sign_object(1)]
            pooled = await signer.sign_many(payloads)
            assert signer._pool is not None  # the worker really ran
            assert pooled == signer.sign_inline(payloads)
            assert all(verify_data(shard.certificate, p, d) for p, d in zip(payloads, pooled,
                                                                       strict=True))
        finally:
            await signer.aclose()

    async def test_small_batches_never_start_a_worker(self, shard: Any) -> None:
        """Below the threshold nothing is spawned."""
        loaded = load_shard(shard.path, shard.password)
        signer = BatchSigner(loaded, path=shard.path, password=shard.password, threshold=10)
        result = await signer.sign_many(_payloads(3))
        assert signer._pool is None
        assert len(result) == 3
        await signer.aclose()

    async def test_too_long_payload_is_an_error_per_item(self, shard: Any) -> None:
        """A payload too long for the key comes back as its SigningError; the others sign."""
        loaded = load_shard(shard.path, shard.password)
        signer = BatchSigner(loaded, path=shard.path, password=shard.password, threshold=1)
        try:
            result = await signer.sign_many([b"x" * 300, collect_sign_object(0)])
            assert isinstance(result[0], SigningError)
            assert isinstance(result[1], str)
        finally:
            await signer.aclose()

    async def test_changed_shard_file_falls_back_to_the_loaded_shard(
            self, shard_factory: Any) -> None:
        """A worker that finds another shard in the file is refused; signing stays inline."""
        original = shard_factory("a.pfx")
        loaded = load_shard(original.path, original.password)
        other = shard_factory("b.pfx", bits=2048)
        signer = BatchSigner(loaded, path=other.path, password=other.password, threshold=1)
        try:
            payload = collect_sign_object(1)
            (data,) = await signer.sign_many([payload])
            assert isinstance(data, str)
            assert verify_data(original.certificate, payload, data)
            assert signer._pool is None
        finally:
            await signer.aclose()


# A parent that starts the signing worker, prints its descendants' pids, then waits to be
# killed.  Its argv: shard path; the password comes through the environment.
_PARENT = """
import asyncio, json, os, sys
from cosigner.signing import load_shard
from cosigner.signing.pool import BatchSigner
from tests.chaos.procs import descendants

async def main():
    path, password = sys.argv[1], os.environ["SHARD_PASSWORD"]
    signer = BatchSigner(load_shard(path, password), path=path, password=password, threshold=1)
    await signer.sign_many([b"payload"])
    print(json.dumps(descendants(os.getpid())), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.skipif(not LINUX, reason="/proc and prctl are Linux-only")
class TestWorkerDiesWithParent:
    def test_kill_9_of_the_parent_ends_the_worker_and_its_resource_tracker(
            self, shard: Any) -> None:
        """Defect 7 (issue 10): after ``kill -9`` of the daemon, the worker holding the key
        and the resource tracker are gone within a bounded wait, and every one is reaped."""
        env = {**os.environ, "SHARD_PASSWORD": shard.password}
        with subreaper():
            parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(shard.path)],
                                      stdout=subprocess.PIPE, env=env, cwd=REPO, text=True)
            orphans: list[int] = []
            try:
                assert parent.stdout is not None
                orphans = json.loads(parent.stdout.readline())
                assert len(orphans) >= 2  # the worker and the resource tracker
                parent.kill()
                parent.wait(timeout=30)
                left = wait_gone(orphans, within=30)
                assert left == [], f"still running after the parent's kill -9: {left}"
            finally:
                kill_all([parent.pid, *orphans])
                parent.wait(timeout=30)
                if parent.stdout is not None:
                    parent.stdout.close()
                reap(orphans)
