"""Suite 1, API faults: a hostile or broken provider, then the fault clears.

The daemon (built as ``cosigner run`` builds it) polls the sandbox while one kind of
fault is switched on (the sandbox's fault switches: drops, 429, 5xx with JSON or HTML,
HTML with 200, truncated bodies, answers lost after the server acted, latency past
the timeout), or while a tampering transport between them rewrites the answers
(``code`` as a string, a float or missing; pending pages that repeat, overlap or
grow while read).  Then the fault clears and the daemon polls until it settles.

Each case asserts: every poll returned (the loop never dies), no approval the policy
does not allow, no id accepted twice, every allowed item approved exactly once and
every sanctioned one rejected once after the fault cleared; the time to recover is
reported.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from cosigner.cli.daemon import daemon_spec
from cosigner.daemon.build import BuildOptions, build_daemon
from tests.chaos.checks import verdict
from tests.chaos.conftest import SANCTIONED, Figures, World, allowed, backlog, scale
from tests.chaos.daemons import init_journal, journal_rows

SANDBOX_FAULTS: dict[str, dict[str, Any]] = {
    "drop": {"dropRate": 0.5},
    "rate_limit": {"rateLimitRate": 0.5, "retryAfter": 0},
    "error_json": {"errorRate": 0.5},
    "error_html": {"errorRate": 0.5, "errorBody": "html"},
    "html_200": {"nonJsonRate": 0.5},
    "truncated_body": {"truncateRate": 0.5},
    "truncated_connection": {"truncateRate": 0.5, "truncateMode": "connection"},
    "lost_answer": {"lostAnswerRate": 0.5},
    "lost_answer_hang": {"lostAnswerRate": 0.3, "lostAnswerMode": "hang", "hangMaxS": 3},
    "timeout": {"latencyMs": 1500, "endpoints": ["approve"]},
    "mixed": {"dropRate": 0.1, "rateLimitRate": 0.1, "errorRate": 0.1, "nonJsonRate": 0.1,
              "truncateRate": 0.1, "lostAnswerRate": 0.1},
}
TAMPERING = ("code_string", "code_float", "code_missing", "pages_repeat", "pages_overlap",
             "pages_grow")


class Tamper(httpx.AsyncBaseTransport):
    """Forwards to the sandbox and spoils the answers the way ``mode`` says (while on)."""

    def __init__(self, world: World, mode: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.world = world
        self.mode = mode
        self.on = True
        self.first_page: bytes | None = None
        self.rng = random.Random(7)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pending = request.url.path.endswith("/pending")
        page = 0
        if pending:
            body = request.read()
            page = 1 if b'"pageNum":1,' in body or b'"pageNum":1}' in body else 2
        if self.on and pending and self.mode == "pages_grow":
            items = backlog(3, self.rng)
            await asyncio.to_thread(self.world.admin.add_items, items)
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        if self.on:
            content = self._spoil(content, pending, page)
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    def _spoil(self, content: bytes, pending: bool, page: int) -> bytes:
        if self.mode == "code_string":
            return content.replace(b'"code":200', b'"code":"200"', 1)
        if self.mode == "code_float":
            return content.replace(b'"code":200', b'"code":200.0', 1)
        if self.mode == "code_missing":
            return content.replace(b'"code":200,', b"", 1)
        if pending and self.mode in ("pages_repeat", "pages_overlap"):
            if page == 1:
                self.first_page = content
            elif self.first_page is not None:
                if self.mode == "pages_repeat":
                    return self.first_page  # page 2 answered with page 1's items again
                # overlap: the last item of page 1 shows up again at the top of page 2
                import json
                first = json.loads(self.first_page)["data"]["list"]
                this = json.loads(content)
                this["data"]["list"] = first[-1:] + this["data"]["list"][:-1]
                return json.dumps(this, separators=(",", ":")).encode()
        return content

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _exercise(world: World, figures: Figures, name: str, *, faults: dict[str, Any] | None,
                    tamper: str | None) -> None:
    rng = random.Random(name)
    env = world.env()
    await asyncio.to_thread(init_journal, env, world.tmp)
    items = backlog(scale(30, 120), rng)
    items += [{"fromAddress": items[0]["fromAddress"], "toAddress": SANCTIONED,
               "amount": "5", "chainId": "56"}]
    ids = await asyncio.to_thread(world.admin.add_items, items)
    transport = Tamper(world, tamper) if tamper else None
    settings = world.settings(page_size=10, request_timeout=1.0)
    daemon = build_daemon(daemon_spec(settings), BuildOptions(
        install_signals=False, configure_logs=False, watch_interval=0, transport=transport,
        client_retries=2))
    polls = 0
    try:
        if faults:
            await asyncio.to_thread(world.admin.set_faults, seed=rng.randrange(1000), **faults)
        for _ in range(scale(4, 10)):
            assert isinstance(await daemon.poll_job(), bool)  # returns: the loop goes on
            polls += 1
        assert isinstance(await daemon.collect_job(), bool)
        await asyncio.to_thread(world.admin.clear_faults)
        if transport is not None:
            transport.on = False
        cleared = time.monotonic()
        settled_after = None
        for n in range(20):
            await daemon.poll_job()
            polls += 1
            pending = await asyncio.to_thread(world.admin.pending_ids)
            if not any(allowed(_body(item)) or item["toAddress"] == SANCTIONED
                       for item_id, item in zip(ids, items, strict=True) if item_id in pending):
                settled_after = (time.monotonic() - cleared, n + 1)
                break
        assert settled_after is not None, "the daemon did not settle after the fault cleared"
    finally:
        daemon.request_stop()
        await daemon.close()
        if transport is not None:
            await transport.aclose()

    received = await asyncio.to_thread(world.admin.decisions)
    rows = await asyncio.to_thread(journal_rows, env, world.tmp)
    result = verdict(received, rows)
    accepted = Counter((int(d["id"]), int(d["status"])) for d in received if d["code"] == 200)
    for item_id, item in zip(ids, items, strict=True):
        if item["toAddress"] == SANCTIONED:
            assert accepted[(item_id, 2)] == 1, f"sanctioned item {item_id} not rejected once"
        elif allowed(_body(item)):
            assert accepted[(item_id, 1)] == 1, f"allowed item {item_id} not approved once"
        else:
            assert accepted[(item_id, 1)] == 0
    figures.add("api_faults", cases=1, items=len(items), polls=polls,
                requests_received=len(received), accepted=result.accepted,
                double_posts=result.double_posts, outside_policy=result.outside_policy,
                unrecorded_posts=result.unrecorded_posts)
    figures.high("api_faults", max_recovery_seconds=round(settled_after[0], 2),
                 max_recovery_polls=settled_after[1])
    result.assert_clean()


def _body(item: dict[str, Any]) -> dict[str, Any]:
    return {"chainId": item["chainId"], "to": item["toAddress"], "value": item["amount"]}


#: The short profile runs these (``mixed`` has every sandbox fault kind at once); the
#: long profile runs every case.
SHORT = {"mixed", "lost_answer", "timeout", "code_string", "pages_overlap"}


def _cases(names: tuple[str, ...] | list[str]) -> list[Any]:
    return [pytest.param(n, marks=() if n in SHORT else pytest.mark.chaos_long) for n in names]


@pytest.mark.parametrize("name", _cases(list(SANDBOX_FAULTS)))
async def test_sandbox_fault(world: World, figures: Figures, name: str) -> None:
    """One of the sandbox's fault kinds on every endpoint, then cleared."""
    await _exercise(world, figures, name, faults=SANDBOX_FAULTS[name], tamper=None)


@pytest.mark.parametrize("mode", _cases(TAMPERING))
async def test_tampered_answers(world: World, figures: Figures, mode: str) -> None:
    """Envelopes with a bad ``code`` and pending pages that lie, then honest again."""
    await _exercise(world, figures, mode, faults=None, tamper=mode)
