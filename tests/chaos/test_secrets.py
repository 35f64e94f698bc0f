"""Suite 6, secrets: canary values for the API secret, the PFX password, the database
password, a base URL's password and the private key (PEM body and DER base64), searched
in every log line, stdout/stderr, ``/metrics``, every journal row (raw SQLite), the audit
exports, exception texts and ``repr(settings)``: zero hits.

A hostile provider that answers every approve with 4013 and echoes the signing string
(ending with the API secret) and the ``data`` signature is part of the run.
"""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from cosigner.settings import load_settings
from tests.chaos.conftest import API_SECRET, Figures, World, backlog
from tests.chaos.daemons import DaemonProcess, init_journal, run
from tests.conftest import ShardFactory

PFX_PASSWORD = "canary-pfx-PW-77xQ"
DB_PASSWORD = "canary-db-PW-31kT"
URL_PASSWORD = "canary-url-PW-5mN"


def _canaries(world: World, key_pem: bytes, key_der: bytes) -> dict[str, str]:
    pem_body = b"".join(key_pem.splitlines()[1:-1]).decode()
    der_b64 = base64.b64encode(key_der).decode()
    return {"api_secret": API_SECRET, "pfx_password": PFX_PASSWORD,
            "db_password": DB_PASSWORD, "url_password": URL_PASSWORD,
            "key_pem": pem_body[100:160], "key_der_b64": der_b64[200:260],
            "key_der_b64_head": der_b64[:48]}


def _hits(text: str, canaries: dict[str, str]) -> list[str]:
    return [name for name, value in canaries.items() if value in text]


def _journal_text(path: Path) -> str:
    """Every row of every table of the journal, as text."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master "
                                             "where type='table'")]
        return "\n".join(repr(row) for t in tables
                         for row in conn.execute(f'select * from "{t}"'))  # noqa: S608
    finally:
        conn.close()


@pytest.mark.timeout(900)  # many processes on a busy machine
def test_no_canary_anywhere(world: World, shard_factory: ShardFactory,
                            figures: Figures) -> None:
    shard = shard_factory("canary.pfx", password=PFX_PASSWORD, key=world.shard.key)
    key = world.shard.key
    canaries = _canaries(world, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    url = world.server.url.replace("http://", f"http://ops:{URL_PASSWORD}@")
    env = world.env(PFX_PATH=shard.path, PFX_PASSWORD=PFX_PASSWORD, API_BASE_URL=url,
                    LOG_LEVEL="debug")
    init_journal(env, world.tmp)
    world.admin.add_items(backlog(30, random.Random(5)))
    scanned: dict[str, str] = {}

    # 1. A daemon that decides and posts, with its /metrics scraped; then a hostile
    # provider (4013 echoing the signing string and data) for the next items.
    daemon = DaemonProcess(env, world.tmp)
    try:
        assert daemon.wait_event("item.posted", 5, within=60), daemon.output()[-2000:]
        started = [json.loads(line) for line in daemon.output().splitlines()
                   if '"daemon.started"' in line]
        port = started[0]["http"].rsplit(":", 1)[1]
        scanned["metrics"] = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        world.admin.set_faults(errorRate=1.0, endpoints=["approve"])  # failures logged too
        world.admin.add_items(backlog(10, random.Random(6)))
        time.sleep(1.0)  # a few more polls under the fault; no assertion rests on it
    finally:
        assert daemon.stop() == 0
    world.admin.clear_faults()
    scanned["daemon_output"] = daemon.output()

    # 2. Failing starts: their exception texts.
    bad_db = f"postgresql://cosigner:{DB_PASSWORD}@127.0.0.1:1/journal"
    for args, extra in ((["run", "--once"], {"DATABASE_URL": bad_db}),
                        (["audit", "list"], {"DATABASE_URL": bad_db}),
                        (["run", "--once"], {"PFX_PASSWORD": "wrong-" + PFX_PASSWORD[::-1]}),
                        (["run", "--once"], {"POLL_INTERVAL": f"x{API_SECRET}"})):
        done = run(args, world.env(**{**dict(PFX_PATH=shard.path, PFX_PASSWORD=PFX_PASSWORD,
                                             API_BASE_URL=url), **extra}), world.tmp)
        assert done.returncode != 0
        scanned[f"failed {' '.join(args)} {next(iter(extra))}"] = done.stdout + done.stderr

    # 3. Journal rows, audit exports, repr(settings).
    scanned["journal_rows"] = _journal_text(world.db_path)
    for fmt in ("jsonl", "csv"):
        done = run(["audit", "export", "--format", fmt], env, world.tmp)
        assert done.returncode == 0, done.stderr
        scanned[f"export_{fmt}"] = done.stdout + done.stderr
    settings = load_settings(api_base_url=url, api_secret=SecretStr(API_SECRET),
                             pfx_password=SecretStr(PFX_PASSWORD),
                             database_url=SecretStr(bad_db))
    scanned["repr_settings"] = repr(settings) + str(settings) + settings.model_dump_json()

    hits = {where: _hits(text, canaries) for where, text in scanned.items()}
    hits = {where: found for where, found in hits.items() if found}
    figures.add("secrets", canaries=len(canaries), places_scanned=len(scanned),
                bytes_scanned=sum(len(t) for t in scanned.values()),
                canary_hits=sum(len(f) for f in hits.values()))
    assert hits == {}


@pytest.mark.timeout(900)  # many processes on a busy machine
async def test_hostile_provider_echo(world: World, figures: Figures) -> None:
    """Every approve answered 4013 with the signing string and ``data`` echoed: the journal
    and the export keep the answer masked."""
    from cosigner.cli.daemon import daemon_spec
    from cosigner.daemon.build import BuildOptions, build_daemon

    class Echo(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/approve"):
                body = json.loads(request.content)
                signing = "&".join(f"{k}={v}" for k, v in sorted(body.items())) + API_SECRET
                message = f"Sign error: expected md5 of [{signing}]"
                return httpx.Response(200, json={"code": 4013, "message": message,
                                                 "data": None})
            return await self.inner.handle_async_request(request)

    env = world.env()
    init_journal(env, world.tmp)
    world.admin.add_items(backlog(10, random.Random(8)))
    echo = Echo()
    daemon = build_daemon(daemon_spec(world.settings()), BuildOptions(
        install_signals=False, configure_logs=False, watch_interval=0, transport=echo))
    try:
        await daemon.poll_job()
    finally:
        daemon.request_stop()
        await daemon.close()
        await echo.inner.aclose()
    text = _journal_text(world.db_path)
    export = run(["audit", "export", "--format", "jsonl"], env, world.tmp).stdout
    assert "4013" in export  # the refusals were recorded
    data = [json.loads(line) for line in export.splitlines()]
    hits = [r["item_id"] for r in data if r["outcome_message"]
            and (API_SECRET in r["outcome_message"] or ("data=" in r["outcome_message"]
                 and "data=**********" not in r["outcome_message"]))]
    figures.add("secrets", echoed_refusals=sum(1 for r in data if r["outcome_code"] == 4013),
                canary_hits=len(hits) + int(API_SECRET in text))
    assert hits == []
    assert API_SECRET not in text
