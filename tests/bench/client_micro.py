"""Micro-benchmark of the API client's per-post CPU: never a pass/fail test.

    python -m tests.bench.client_micro [--runs 7] [--approves 2000] [--concurrency 1]
                                       [--no-sandbox]

Prints the median (and min/max) µs per call, over ``--runs`` runs, of each piece of
an approve's post (``encode_body``, ``SignAuth.signed_headers``, ``compute_sign``,
the wire message, parsing a uvicorn answer in the lean transport, ``_envelope`` of
the success answer), then the client CPU per whole ``ApiClient.approve`` against a
sandbox process on 127.0.0.1 (items pre-signed, so only the post is measured;
CPU of this process only, the sandbox runs in its own), and the same posts made by
the bench ceiling's hand-formatted wire (``cosigner.tools.bench._Wire``), with the
sandbox's CPU per post for both.  ``--concurrency C``: C posts in flight (default
1; the daemon's default is 8).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cosigner.api.auth import SignAuth, compute_sign, encode_body
from cosigner.api.client import ApiClient
from cosigner.api.transport import Answer, _Connection
from cosigner.models import loads_checked

FIELDS: dict[str, Any] = {
    "id": 123456, "from": "0x52908400098527886E0F7030069857D2E4169EE7",
    "to": "0x8617E340B3D01FA5F11F306F4090FD50E238070D", "value": "1250.5",
    "chainId": "56", "status": 1, "data": "A" * 344,
}
SUCCESS = b'{"code":200,"message":"Success","data":null}'
#: What uvicorn (h11, no server header) sends for the success envelope.
UVICORN_ANSWER = (b"HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
                  b"content-length: %d\r\ncontent-type: application/json\r\n\r\n%s"
                  % (len(SUCCESS), SUCCESS))


def _per_call(fn: Callable[[], object], number: int, runs: int) -> list[float]:
    return [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=runs)]


class _Waiter:
    """A done-never future stand-in: the connection hands it the parsed answer."""

    __slots__ = ("answer",)

    def __init__(self) -> None:
        self.answer: Answer | None = None

    def done(self) -> bool:
        return False

    def set_result(self, answer: Answer) -> None:
        self.answer = answer

    def set_exception(self, exc: BaseException) -> None:  # pragma: no cover
        raise exc


def _parse_once(connection: _Connection, waiter: _Waiter) -> None:
    connection._reset()
    connection._waiter = waiter  # type: ignore[assignment]
    connection.data_received(UVICORN_ANSWER)


def micro(runs: int) -> dict[str, list[float]]:
    auth = SignAuth("M-BENCH-0001", "ak-bench", "s3cr3t-s3cr3t-s3cr3t")
    client = ApiClient("http://127.0.0.1:9", "M-BENCH-0001", "ak-bench", "s3cr3t")
    wire = client._wire["approve"]
    body = encode_body(FIELDS)
    signed = auth.signed_headers(FIELDS)
    params = {**FIELDS, **{k.decode(): v.decode() for k, v in signed if k != b"Sign"}}
    connection = _Connection(("http", "127.0.0.1", 9))
    waiter = _Waiter()
    _parse_once(connection, waiter)
    assert waiter.answer is not None
    assert waiter.answer.body == SUCCESS
    return {
        "encode_body": _per_call(lambda: encode_body(FIELDS), 20000, runs),
        "signed_headers": _per_call(lambda: auth.signed_headers(FIELDS), 20000, runs),
        "compute_sign": _per_call(lambda: compute_sign(params, "s3cr3t"), 20000, runs),
        "wire.message": _per_call(lambda: wire.message(body, signed), 50000, runs),
        "transport parse": _per_call(lambda: _parse_once(connection, waiter), 20000, runs),
        "loads_checked": _per_call(lambda: loads_checked(SUCCESS), 50000, runs),
        "_envelope": _per_call(lambda: client._envelope("approve", 200, SUCCESS), 50000, runs),
    }


# -- a whole approve against a sandbox process ------------------------------------------

Post = tuple[dict[str, Any], str]


async def _approves(client: ApiClient, posts: list[Post], concurrency: int) -> None:
    feed = iter(posts)

    async def worker() -> None:
        for fields, data in feed:
            await client.approve(fields, data)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _wire_posts(url: str, secret: str, posts: list[Post], concurrency: int) -> None:
    """The same posts as the bench ceiling makes them: hand-formatted, one connection each."""
    from cosigner.tools.bench import _Wire, public_headers

    host, port = url.removeprefix("http://").split(":")
    feed = iter(posts)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        wire = _Wire(reader, writer, f"{host}:{port}".encode())
        try:
            for fields, data in feed:
                body = {**fields, "data": data}
                answer = await wire.post(b"/api/transaction/approve", body,
                                         public_headers(body, secret))
                assert answer.startswith(b'{"code":200'), answer[:80]
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _sandbox_approves(runs: int, count: int, concurrency: int = 1
                            ) -> dict[str, list[float]]:
    from cosigner.sandbox import SandboxAdmin
    from cosigner.signing import load_shard
    from cosigner.signing.objects import approval_sign_object
    from cosigner.signing.pool import BatchSigner
    from cosigner.tools.bench import (
        API_KEY,
        MERCHANT_NO,
        _cpu_of,
        _generate,
        _wait_ready,
        start_sandbox,
        stop_sandbox,
    )

    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cosigner-micro-") as tmp:
        work = Path(tmp)
        secret, password, proc, url = start_sandbox(work, count, "micro")
        try:
            await _wait_ready(url, proc)
            async with ApiClient(url, MERCHANT_NO, API_KEY, secret,
                                 max_connections=concurrency,
                                 timeout=30) as client, SandboxAdmin(url, timeout=120) as admin:
                signer = BatchSigner(load_shard(work / "shard.pfx", password))
                for _ in range(runs):
                    for name in ("approve", "ceiling wire"):
                        if figures:
                            await admin.reset()
                            await _generate(url, count)
                        items = (await client.pending()).items
                        datas = signer.sign_inline([approval_sign_object(
                            i.id or 0, i.from_address or "", i.to_address or "",
                            i.amount_text or "", i.chain_id or "", 1) for i in items])
                        posts = [({"id": i.id, "from": i.from_address, "to": i.to_address,
                                   "value": i.amount_text, "chainId": i.chain_id,
                                   "status": 1}, d)
                                 for i, d in zip(items, datas, strict=True) if isinstance(d, str)]
                        cpu0, sandbox0 = time.process_time(), _cpu_of(proc.pid)
                        if name == "approve":
                            await _approves(client, posts, concurrency)
                        else:
                            await _wire_posts(url, secret, posts, concurrency)
                        cpu, sandbox1 = time.process_time() - cpu0, _cpu_of(proc.pid)
                        figures.setdefault(f"{name} (client CPU)", []).append(
                            cpu / len(posts) * 1e6)
                        if sandbox0 is not None and sandbox1 is not None:
                            figures.setdefault(f"{name} (sandbox CPU)", []).append(
                                (sandbox1 - sandbox0) / len(posts) * 1e6)
                        decisions = await admin.decisions()
                        assert all(d["verified"] for d in decisions), "a post was not verified"
        finally:
            stop_sandbox(proc)
    return figures


def _line(name: str, values: list[float]) -> str:
    return (f"{name:<28} median {statistics.median(values):8.2f} µs   "
            f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--approves", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--no-sandbox", action="store_true")
    args = parser.parse_args(argv)
    for name, values in micro(args.runs).items():
        print(_line(name, values))
    if not args.no_sandbox:
        figures = asyncio.run(_sandbox_approves(args.runs, args.approves,
                                                max(1, args.concurrency)))
        for name, values in figures.items():
            print(_line(name, values))


if __name__ == "__main__":
    main()
