"""Suite 4, bad pending items: a corpus (``corpus/pending_items*.jsonl``, raw JSON text
kept as the provider would send it) and property-based items (hypothesis).

The real daemon polls a provider stand-in (an ``httpx.MockTransport``) that lists the
items exactly as written, byte for byte, and records every approve.  An independent
oracle (:func:`approvable`, strict JSON with duplicate keys detected, written without
the policy engine) says which items the chaos policy may approve.  Every approve the
daemon posts must name an item the oracle approves, with the fields exactly as listed:
zero approvals outside policy.  The number of inputs tried is reported.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosigner.cli.daemon import daemon_spec
from cosigner.daemon.build import BuildOptions, build_daemon
from cosigner.daemon.service import Daemon
from cosigner.sandbox.generate import eip55_address
from tests.chaos.conftest import APPROVE_MAX, SANCTIONED, Figures, World, scale
from tests.chaos.daemons import init_journal

CORPUS = Path(__file__).with_name("corpus")
_EVM = re.compile(r"0x[0-9a-fA-F]{40}")
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,18})?")
_IDS = itertools.count(10_000)


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Duplicate("duplicate key")
    return dict(pairs)


def _evm_ok(text: Any) -> bool:
    if not isinstance(text, str) or not _EVM.fullmatch(text):
        return False
    digits = text[2:]
    if digits == digits.lower() or digits == digits.upper():
        return True
    return eip55_address(bytes.fromhex(digits)) == text


def approvable(raw: str) -> bool:
    """Whether the chaos policy may approve the item written as ``raw`` (the oracle)."""
    try:
        item = json.loads(raw, object_pairs_hook=_pairs, parse_float=str, parse_int=str)
    except (_Duplicate, ValueError, RecursionError):
        return False
    if not isinstance(item, dict):
        return False
    item_id, amount = item.get("id"), item.get("amount")
    if not isinstance(item_id, str) or not item_id.isdigit() or not 0 < int(item_id) < 2**63:
        return False  # parse_int=str: an integer literal arrives as its digits
    if item.get("chainId") not in ("56",) and item.get("chainId") != "56":
        return False
    if not (_evm_ok(item.get("fromAddress")) and _evm_ok(item.get("toAddress"))):
        return False
    if str(item["toAddress"]).lower() == SANCTIONED.lower():
        return False
    if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount):
        return False
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return False
    return Decimal(0) < value <= APPROVE_MAX


class Provider:
    """Lists ``page`` (raw item texts) and records the approves it receives."""

    def __init__(self) -> None:
        self.page: list[str] = []
        self.approves: list[dict[str, Any]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/pending"):
            body = json.loads(request.content)
            listing = "[]" if body.get("pageNum", 1) > 1 else "[" + ",".join(self.page) + "]"
            text = ('{"code":200,"message":"Success","data":{"total":' + str(len(self.page))
                    + ',"list":' + listing + "}}")
            return httpx.Response(200, content=text.encode())
        if path.endswith("/approve"):
            self.approves.append(json.loads(request.content, parse_float=str))
            return httpx.Response(200, json={"code": 200, "message": "Success", "data": None})
        return httpx.Response(200, json={"code": 200, "message": "Success", "data": None})


class Harness:
    """The daemon on its own event loop thread, so synchronous hypothesis tests can drive it."""

    def __init__(self, world: World) -> None:
        self.provider = Provider()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        init_journal(world.env(), world.tmp)
        self.daemon: Daemon = self._run(self._build(world))
        self.tried = 0
        self.approved = 0

    async def _build(self, world: World) -> Daemon:
        return build_daemon(daemon_spec(world.settings(page_size=1000)), BuildOptions(
            install_signals=False, configure_logs=False, watch_interval=0,
            transport=httpx.MockTransport(self.provider.handle)))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def check(self, raws: list[str]) -> None:
        """List ``raws`` for one poll; every approve posted must be one the oracle allows."""
        self.provider.page = raws
        self.provider.approves.clear()
        self._run(self.daemon.poll_job())
        self.tried += len(raws)
        by_id: dict[int, list[str]] = {}
        for raw in raws:
            try:
                parsed = json.loads(raw, parse_float=str)
                by_id.setdefault(int(parsed["id"]), []).append(raw)
            except (ValueError, TypeError, KeyError):
                continue
        for body in self.provider.approves:
            if body.get("status") != 1:
                continue
            self.approved += 1
            listed = by_id.get(int(body["id"]), [])
            assert listed, f"approved an id that was not listed: {body['id']}"
            assert all(approvable(raw) for raw in listed), f"approved outside policy: {listed}"
            item = json.loads(listed[0], parse_float=str)
            assert (body["from"], body["to"], str(body["value"]), str(body["chainId"])) == \
                (item["fromAddress"], item["toAddress"], str(item["amount"]),
                 str(item["chainId"])), "the signed fields differ from the listed item"

    def close(self) -> None:
        async def stop() -> None:
            self.daemon.request_stop()
            await self.daemon.close()

        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def harness(world: World, figures: Figures) -> Iterator[Harness]:
    h = Harness(world)
    try:
        yield h
    finally:
        h.close()
        figures.add("bad_items", inputs_tried=h.tried, approvals_checked=h.approved,
                    outside_policy=0)


def corpus(name: str) -> list[tuple[str, str]]:
    """``(comment, raw item text)`` pairs of a corpus file."""
    lines = (CORPUS / name).read_text(encoding="utf-8").splitlines()
    out, comment = [], ""
    for line in lines:
        if line.startswith("# "):
            comment = line[2:]
        elif line.strip():
            out.append((comment, line))
    return out


def _fresh(raw: str) -> str:
    return raw.replace("__ID2__", str(next(_IDS))).replace("__ID__", str(next(_IDS)))


class TestCorpus:
    @pytest.mark.timeout(900)  # many processes on a busy machine
    def test_every_entry_alone_and_all_together(self, harness: Harness) -> None:
        """Each corpus item in its own poll, then all of them in one snapshot."""
        entries = corpus("pending_items.jsonl")
        for _, raw in entries:
            harness.check([_fresh(raw)])
        harness.check([_fresh(raw) for _, raw in entries])
        controls = [raw for comment, raw in entries if comment.startswith("valid")]
        assert all(approvable(_fresh(raw)) for raw in controls)  # the oracle is not blind
        assert harness.approved >= len(controls)  # ...and neither is the daemon

    def test_duplicate_keys_and_bad_ids(self, harness: Harness) -> None:
        """Held without stopping the cycle: a valid item in the same snapshot is approved."""
        for _, raw in corpus("pending_items_defects.jsonl"):
            control = _fresh(corpus("pending_items.jsonl")[0][1])
            before = harness.approved
            harness.check([_fresh(raw), control])
            assert harness.approved == before + 1, "the cycle did not carry on"


# -- properties ---------------------------------------------------------------------------

_ADDRESSES = st.binary(min_size=20, max_size=20).map(eip55_address)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    base = draw(_ADDRESSES)
    # Half the addresses are valid, so that approvals happen and get checked.
    variant = draw(st.sampled_from(["as_is"] * 8 + ["lower", "upper", "flip", "space", "zw",
                                                    "homoglyph", "short", "long", "tron",
                                                    "sanctioned"]))
    if variant == "lower":
        return "0x" + base[2:].lower()
    if variant == "upper":
        return "0x" + base[2:].upper()
    if variant == "flip":
        letters = [i for i, c in enumerate(base) if c.isalpha() and i > 1]
        if letters:
            i = draw(st.sampled_from(letters))
            return base[:i] + base[i].swapcase() + base[i + 1:]
    if variant == "space":
        return draw(st.sampled_from([" ", "\t", "\n", "\u00a0"])) + base
    if variant == "zw":
        i = draw(st.integers(2, len(base)))
        return base[:i] + draw(st.sampled_from(["\u200b", "\u200c", "\u200d", "\ufeff"])) \
            + base[i:]
    if variant == "homoglyph":
        return base.replace("a", "\u0430").replace("0", "\u041e", 1)
    if variant == "short":
        return base[:-1]
    if variant == "long":
        return base + "0"
    if variant == "tron":
        return "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7"
    if variant == "sanctioned":
        return draw(st.sampled_from([SANCTIONED, SANCTIONED.lower()]))
    return base


_DECIMALS = st.one_of(
    st.decimals(min_value=Decimal("0"), max_value=Decimal("150"), places=2),
    st.decimals(min_value=Decimal("-10"), max_value=Decimal("1000"), allow_nan=False,
                allow_infinity=False),
    st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"),
                     Decimal("1E+2"), Decimal("5E-19")]))


@st.composite
def amounts(draw: st.DrawFn) -> str:
    """An amount as its JSON text: a string or a number literal."""
    kind = draw(st.sampled_from(["decimal"] * 4 + ["bound", "string_noise", "number", "big"]))
    if kind == "decimal":
        text = str(draw(_DECIMALS))
    elif kind == "bound":
        text = draw(st.sampled_from(["100", "100.0", "100.000000000000000001", "99.99",
                                     "0.000000000000000001", "0.0000000000000000001"]))
    elif kind == "string_noise":
        text = draw(st.text(alphabet="0123456789.-+eE_ ,\u0665\uff15xX", max_size=12))
    elif kind == "big":
        text = "9" * draw(st.integers(20, 400))
    else:
        literal = draw(st.sampled_from(["5", "5.5", "-5", "1e1", "0", "100", "101",
                                        "5.000000000000000000001"]))
        return literal  # a JSON number, unquoted
    return json.dumps(text)


@st.composite
def raw_items(draw: st.DrawFn) -> str:
    """One pending item as raw JSON text, sometimes with missing, extra or wrongly typed
    fields (never duplicate keys or bad ids: those are the defects' own test)."""
    fields: dict[str, str] = {
        "id": str(next(_IDS)),
        "fromAddress": json.dumps(draw(addresses()), ensure_ascii=draw(st.booleans())),
        "toAddress": json.dumps(draw(addresses()), ensure_ascii=draw(st.booleans())),
        "amount": draw(amounts()),
        "chainId": draw(st.sampled_from(['"56"', '"56"', '"56"', "56", '"1"', '"195"', '""',
                                         "null", '"56 "'])),
    }
    for name in draw(st.lists(st.sampled_from(["fromAddress", "toAddress", "amount",
                                               "chainId"]), max_size=1)):
        fields[name] = draw(st.sampled_from(["null", "true", "[]", "{}", "12", '""']))
    if draw(st.integers(0, 9)) == 0:
        del fields[draw(st.sampled_from(["fromAddress", "toAddress", "amount", "chainId"]))]
    if draw(st.booleans()):
        fields["memo"] = json.dumps(draw(st.text(max_size=20)))
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


class TestProperties:
    @pytest.mark.timeout(3600)  # 2,000 snapshots in the long profile on a busy machine
    def test_no_approval_outside_policy(self, harness: Harness) -> None:
        """Random items, a few per snapshot: every approve posted is one the oracle allows."""

        @settings(max_examples=scale(150, 2000), suppress_health_check=list(HealthCheck),
                  database=None)
        @given(st.lists(raw_items(), min_size=1, max_size=5))
        def one(raws: list[str]) -> None:
            harness.check(raws)

        one()
