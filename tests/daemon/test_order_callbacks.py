"""Issue 13's "Done when": the real daemon receiving the sandbox's C2C order callbacks over
loopback, recording each once and forwarding it once to a local backend checking the HMAC.

The sandbox runs the API doc's schedules 1000 times faster (order steps 60 ms and 300 ms,
callback retries 120 ms, 300 ms, ...) and sends a callback for status 2 ("in progress")
as well as the final ones, so an order produces a non-final and a final callback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cosigner.callbacks.forwarder import Backoff
from cosigner.daemon.callbacks import CallbackOptions, CallbackService
from cosigner.daemon.service import Daemon
from cosigner.models import dumps_exact, loads_exact
from cosigner.sandbox import Merchant, SandboxAdmin, SandboxConfig, SandboxServer, UvicornServer
from cosigner.sandbox.callbacks import FINAL_STATUSES
from cosigner.settings import Settings
from cosigner.signing.shard import certificate_pem
from cosigner.store import init_journal
from tests.callbacks.conftest import FORWARD_SECRET, Backend
from tests.conftest import SHARD_PASSWORD, ShardFactory
from tests.daemon.conftest import (
    API_KEY,
    API_SECRET,
    COSIGNER,
    MERCHANT_NO,
    Rig,
    sample,
    samples,
    wait_for,
)

pytestmark = pytest.mark.slow

SCALE = 0.001
ORDER = {"userName": "Chen", "areaCode": "+86", "phone": "18848820305",
         "cryptoAmount": "10.50", "cryptoCurrency": "USDT", "legalCurrency": "CNY",
         "idCardType": 1, "idCard": "412627288918989891", "kyc": 2,
         "merchantOrderNo": "m-0001", "orderType": 1, "payWay": 1, "h5": False}
OPTIONS = CallbackOptions(forward_backoff=Backoff(0.05, 0.2), forward_idle=0.1)


@pytest.fixture
async def crig(tmp_path: Path, shard_factory: ShardFactory, test_policy: Path,
               cosigner_env: Callable[..., None]) -> AsyncIterator[Rig]:
    """The daemon test rig with a sandbox whose order schedule runs 1000 times faster."""
    shard = shard_factory("shard.pfx", password=SHARD_PASSWORD, mode=0o600)
    merchant = Merchant(MERCHANT_NO, API_KEY, API_SECRET,
                        certificate_pem=certificate_pem(shard.certificate))
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    db_path = state_dir / "journal.db"
    init_journal(f"sqlite://{db_path}")  # run never creates a journal
    config = SandboxConfig(callback_time_scale=SCALE,
                           callback_statuses=frozenset({2, 3, *FINAL_STATUSES}))
    async with SandboxServer(merchants=[merchant], config=config) as server, \
            SandboxAdmin(server.url) as admin:
        settings = Settings(
            api_base_url=server.url, merchant_no=MERCHANT_NO, api_key=API_KEY,
            api_secret=SecretStr(API_SECRET), pfx_path=shard.path,
            policy_path=test_policy, database_url=SecretStr(f"sqlite://{db_path}"),
            http_addr="127.0.0.1:0", poll_interval=5.0, collect_interval=5.0,
            request_timeout=3.0, log_format="json", log_level="info", concurrency=2,
            callback_addr="127.0.0.1:0")
        world = Rig(tmp_path, shard, server, admin, test_policy, db_path, settings)
        try:
            yield world
        finally:
            for daemon in world.daemons:
                daemon.request_stop()
                await daemon.close()
            server.state.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Running:
    """A daemon running in the test's loop, with its callback listener."""

    def __init__(self, daemon: Daemon, task: asyncio.Task[int]) -> None:
        self.daemon = daemon
        self.task = task
        service = daemon.services[0]
        assert isinstance(service, CallbackService)
        self.service = service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}/callbacks/order"

    async def metrics(self) -> dict[Any, float]:
        assert self.daemon.http is not None
        async with httpx.AsyncClient() as client:
            text = (await client.get(
                f"http://127.0.0.1:{self.daemon.http.port}/metrics")).text
        return samples(text)

    async def callbacks(self, outcome: str) -> float:
        return sample(await self.metrics(), "cosigner_order_callbacks_total",
                      outcome=outcome) or 0.0

    async def stop(self) -> None:
        self.daemon.request_stop()
        assert await asyncio.wait_for(self.task, 15) == 0


async def start(rig: Rig, settings: Settings) -> Running:
    daemon = rig.build(settings, callbacks=OPTIONS)
    running = Running(daemon, asyncio.create_task(daemon.run()))
    await wait_for(lambda: running.service.listening or running.task.done(),
                   what="the callback listener")
    assert not running.task.done()
    return running


async def cosigner(rig: Rig, *args: str, **env: str) -> tuple[int, str]:
    """Run the ``cosigner`` command (a real process) with the rig's settings."""
    process = await asyncio.create_subprocess_exec(
        str(COSIGNER), *args, env=rig.env(**env), cwd=rig.tmp,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def create_order(rig: Rig, public_url: str, **changes: Any) -> str:
    """``cosigner otc create`` for an order file without asyncUrl; its orderNo."""
    path = rig.tmp / f"order-{os.urandom(4).hex()}.json"
    path.write_text(json.dumps({**ORDER, **changes}), encoding="utf-8")
    code, out = await cosigner(rig, "otc", "create", "--file", str(path),
                               CALLBACK_PUBLIC_URL=public_url)
    assert code == 0, out
    return out.split()[1]


async def sandbox_order(rig: Rig, order_no: str) -> dict[str, Any]:
    (order,) = [o for o in await rig.admin.orders() if o["orderNo"] == order_no]
    return order


async def delivered(rig: Rig, order_no: str, statuses: set[int]) -> bool:
    """Whether the sandbox saw each of ``statuses`` acknowledged for the order."""
    order = await sandbox_order(rig, order_no)
    return statuses <= {c["orderStatus"] for c in order["callbacks"] if c["ok"]}


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, str]]:
    backend = Backend()
    async with UvicornServer(backend.app()) as server:
        yield backend, server.url + "/events"


def forwarding(rig: Rig, url: str) -> Settings:
    return rig.with_settings(callback_forward_url=url,
                             callback_forward_secret=SecretStr(FORWARD_SECRET))


class TestOrderCallbacks:
    async def test_callbacks_are_verified_recorded_and_forwarded_once(
            self, crig: Rig, backend: tuple[Backend, str]) -> None:
        """otc create fills asyncUrl; each callback is recorded once and forwarded once."""
        got, url = backend
        running = await start(crig, forwarding(crig, url))
        order_no = await create_order(crig, running.url)
        order = await sandbox_order(crig, order_no)
        assert order["asyncUrl"] == running.url
        await got.wait_accepted(2)
        await wait_for(lambda: delivered(crig, order_no, {2, 1}), what="acknowledged callbacks")
        assert got.bad_signatures == 0
        assert [(e["orderNo"], e["status"]) for e in got.accepted] == [
            (order_no, 2), (order_no, 1)]
        assert all(e["dealAmount"] == "10.50" for e in got.accepted)
        assert len({e["event_id"] for e in got.received}) == 2
        metrics = await running.metrics()
        assert sample(metrics, "cosigner_order_callbacks_total", outcome="accepted") == 2
        assert sample(metrics, "cosigner_order_forwards_total", outcome="delivered") == 2
        assert sample(metrics, "cosigner_order_forward_queue") == 0
        code, out = await cosigner(crig, "orders", "show", order_no)
        assert code == 0, out
        assert "status           1 (completed)" in out
        assert "applied" in out
        code, out = await cosigner(crig, "orders", "list", "--status", "1,9")
        assert code == 0, out
        assert order_no in out
        await running.stop()

    async def test_backend_down_gets_every_event_after_a_restart(
            self, crig: Rig) -> None:
        """Events queued while the backend is down survive a daemon restart and are all
        delivered, once each, when it is back."""
        port = free_port()
        url = f"http://127.0.0.1:{port}/events"
        settings = forwarding(crig, url)
        running = await start(crig, settings)
        orders = [await create_order(crig, running.url, merchantOrderNo=f"m-{n}")
                  for n in range(2)]
        for order_no in orders:
            await wait_for(lambda o=order_no: delivered(crig, o, {2, 1}),  # type: ignore[misc]
                           what="acknowledged callbacks")
        await wait_for(lambda: forward_errors(running), what="failed forward attempts")
        metrics = await running.metrics()
        assert sample(metrics, "cosigner_order_forward_queue") == 4
        await running.stop()

        got = Backend()
        async with UvicornServer(got.app(), port=port):
            again = await start(crig, settings)
            await got.wait_accepted(4)
            await asyncio.sleep(0.3)  # time for a wrongly repeated event to show up
            await again.stop()
        assert got.bad_signatures == 0
        ids = [e["event_id"] for e in got.received]
        assert len(ids) == len(set(ids)) == 4
        for order_no in orders:
            assert [e["status"] for e in got.received if e["orderNo"] == order_no] == [2, 1]

    async def test_refused_and_repeated_callbacks(self, crig: Rig) -> None:
        """Forged, replayed, late, oversized and duplicate-key callbacks: answers, metrics."""
        running = await start(crig, crig.settings)
        order_no = await create_order(crig, running.url)
        await wait_for(lambda: delivered(crig, order_no, {2, 1}), what="callbacks")
        order = await sandbox_order(crig, order_no)
        genuine = next(c["body"] for c in order["callbacks"] if c["orderStatus"] == 1)

        async with httpx.AsyncClient() as client:
            async def post(body: str | bytes) -> httpx.Response:
                return await client.post(running.url, content=body,
                                         headers={"Content-Type": "application/json"})

            replay = await post(genuine)
            assert (replay.status_code, replay.json()) == (200, {"code": 200,
                                                                 "message": "Success"})
            data = loads_exact(genuine)
            data["signature"] = "0" * 32
            forged = await post(dumps_exact(data))
            assert (forged.status_code, forged.json()["code"]) == (401, 401)
            duplicate_key = await post(genuine.replace('{"status":1,',
                                                       '{"status":1,"status":9,'))
            assert (duplicate_key.status_code, duplicate_key.json()["code"]) == (400, 400)
            oversized = await post(genuine[:-1] + ',"pad":"' + "x" * 70000 + '"}')
            assert (oversized.status_code, oversized.json()["code"]) == (413, 413)

        # a genuine non-final callback after the final one (status 3, never seen before;
        # a repeated status 2 would be a duplicate): late, not applied
        await crig.admin.set_order_status(order_no, 3)
        await wait_for(lambda: running_callbacks(running, "late"), what="the late callback")
        metrics = await running.metrics()
        for outcome, count in (("accepted", 2), ("duplicate", 1), ("bad_signature", 1),
                               ("malformed", 2), ("late", 1), ("forbidden", 0)):
            assert sample(metrics, "cosigner_order_callbacks_total", outcome=outcome) == count
        code, out = await cosigner(crig, "orders", "show", order_no)
        assert code == 0, out
        assert "status           1 (completed)" in out
        assert "late" in out
        assert len([line for line in out.splitlines() if "applied" in line]) == 2
        await running.stop()

    async def test_receiver_failing_twice_gets_three_deliveries_and_applies_once(
            self, crig: Rig, backend: tuple[Backend, str]) -> None:
        """The answer to the final callback is lost twice (a proxy turns the daemon's 200
        into a 502): the sandbox delivers it three times on its scaled schedule, the state
        is applied once."""
        got, url = backend
        running = await start(crig, forwarding(crig, url))
        proxy = LossyProxy(running.url, lose=2, status=1)
        async with UvicornServer(proxy.app()) as server:
            order_no = await create_order(crig, server.url + "/cb")
            await wait_for(lambda: delivered(crig, order_no, {1}), what="the final callback")
        order = await sandbox_order(crig, order_no)
        attempts = [(c["orderStatus"], c["attempt"], c["ok"]) for c in order["callbacks"]]
        assert [a for a in attempts if a[0] == 1] == [(1, 1, False), (1, 2, False),
                                                      (1, 3, True)]
        assert [a for a in attempts if a[0] == 2] == [(2, 1, True)]
        assert proxy.passed == 4
        await got.wait_accepted(2)
        assert [e["status"] for e in got.accepted] == [2, 1]
        metrics = await running.metrics()
        assert sample(metrics, "cosigner_order_callbacks_total", outcome="accepted") == 2
        assert sample(metrics, "cosigner_order_callbacks_total", outcome="duplicate") == 2
        code, out = await cosigner(crig, "orders", "show", order_no)
        assert code == 0, out
        assert out.count("applied") == 2
        await running.stop()


async def running_callbacks(running: Running, outcome: str) -> bool:
    return await running.callbacks(outcome) >= 1


async def forward_errors(running: Running) -> bool:
    metrics = await running.metrics()
    return (sample(metrics, "cosigner_order_forwards_total", outcome="error") or 0) >= 1


class LossyProxy:
    """Passes each callback to the daemon, then loses the first ``lose`` answers to
    callbacks with ``status`` (502)."""

    def __init__(self, target: str, lose: int, status: int) -> None:
        self.target = target
        self.lose = lose
        self.status = status
        self.passed = 0

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        async with httpx.AsyncClient() as client:
            answer = await client.post(self.target, content=body,
                                       headers={"Content-Type": "application/json"})
        self.passed += 1
        if self.lose and loads_exact(body)["status"] == self.status:
            self.lose -= 1
            return JSONResponse({"error": "bad gateway"}, status_code=502)
        return Response(answer.content, status_code=answer.status_code,
                        media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/cb", self.handle, methods=["POST"])])


class TestRealProcess:
    async def test_cosigner_run_receives_forwards_and_stops_cleanly(
            self, crig: Rig, backend: tuple[Backend, str]) -> None:
        """`cosigner run` as a process: listener on its own port, a sandbox order's
        callbacks recorded and forwarded, SIGTERM exits 0, no secret in its log."""
        got, url = backend
        env = {"CALLBACK_ADDR": "127.0.0.1:0", "CALLBACK_FORWARD_URL": url,
               "CALLBACK_FORWARD_SECRET": FORWARD_SECRET, "POLL_INTERVAL": "5",
               "COLLECT_INTERVAL": "5"}
        process = await asyncio.create_subprocess_exec(
            str(COSIGNER), "run", env=crig.env(**env), cwd=crig.tmp,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        assert process.stderr is not None
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while True:
                    line = await process.stderr.readline()
                    assert line, f"the daemon ended early: {lines}"
                    lines.append(line)
                    event = json.loads(line)
                    if event.get("event") == "callbacks.started":
                        break
            port = event["port"]
            order_no = await create_order(
                crig, f"http://127.0.0.1:{port}/callbacks/order")
            await got.wait_accepted(2, within=30)
            process.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(process.communicate(), 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, err.decode()
        log = b"".join(lines) + err
        assert FORWARD_SECRET.encode() not in log
        assert API_SECRET.encode() not in log
        assert [e["status"] for e in got.accepted if e["orderNo"] == order_no] == [2, 1]
        assert got.bad_signatures == 0
        events = [json.loads(line).get("event") for line in log.splitlines()]
        assert events.count("callback.recorded") == 2
        assert "daemon.stopped" in events
