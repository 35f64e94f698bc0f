"""The callback app in-process (httpx's ASGI transport): answers, records, metrics, logs."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from structlog.testing import capture_logs

from cosigner.callbacks.listener import ROUTE, create_app
from cosigner.callbacks.verify import MAX_BODY, SourcePolicy, parse_networks, transition
from cosigner.errors import StoreError
from cosigner.logs import get_logger
from cosigner.store.orders import MemoryOrderJournal, NewCallback, RecordResult
from tests.callbacks.conftest import SECRET, signed

ORDER_NO = "335793449653514240"


class Observed:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def order_callback(self, outcome: str) -> None:
        self.outcomes[outcome] += 1


class FailingJournal(MemoryOrderJournal):
    """A journal whose next ``failures`` writes fail (a full disk, a locked database)."""

    def __init__(self, failures: int) -> None:
        super().__init__(transition)
        self.failures = failures

    def record(self, callback: NewCallback, *, forward: bool) -> RecordResult:
        if self.failures:
            self.failures -= 1
            raise StoreError("journal /x cannot be written (disk I/O error)")
        return super().record(callback, forward=forward)


class World:
    def __init__(self, journal: MemoryOrderJournal, source: SourcePolicy | None = None,
                 forward: bool = False) -> None:
        self.journal = journal
        self.observed = Observed()
        self.events = 0
        self.app = create_app(journal, secret=SECRET, sort="casefold",
                              source=source or SourcePolicy(), observer=self.observed,
                              log=get_logger("test"),
                              forward=forward, on_event=self._event)

    def _event(self) -> None:
        self.events += 1

    def client(self, peer: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://cosigner")


@pytest.fixture
def journal() -> Iterator[MemoryOrderJournal]:
    journal = MemoryOrderJournal(transition)
    journal.open()
    yield journal
    journal.close()


@pytest.fixture
def world(journal: MemoryOrderJournal) -> World:
    return World(journal, forward=True)


async def post(world: World, body: bytes, peer: str = "127.0.0.1",
               **headers: str) -> httpx.Response:
    async with world.client(peer) as client:
        return await client.post(ROUTE, content=body,
                                 headers={"Content-Type": "application/json", **headers})


class TestAnswers:
    async def test_verified_callback_is_recorded_before_200(self, world: World) -> None:
        """A verified callback answers the doc's success body once it is recorded."""
        with capture_logs() as logs:
            response = await post(world, signed(2))
        assert response.status_code == 200
        assert response.json() == {"code": 200, "message": "Success"}
        (record,) = world.journal.history(ORDER_NO)
        assert (record.status, record.source) == (2, "127.0.0.1")
        assert world.observed.outcomes == {"accepted": 1}
        assert world.events == 1
        assert logs[-1]["event"] == "callback.recorded"

    async def test_replay_answers_200_and_records_nothing(self, world: World) -> None:
        """The same callback again: 200, nothing recorded, counted as duplicate."""
        for _ in range(3):
            assert (await post(world, signed(1))).json()["code"] == 200
        assert len(world.journal.history(ORDER_NO)) == 1
        assert world.observed.outcomes == {"accepted": 1, "duplicate": 2}
        assert world.events == 1

    async def test_late_non_final_answers_200_and_is_not_applied(self, world: World) -> None:
        """After a final status, a non-final one is recorded late (200) and not forwarded."""
        await post(world, signed(9))
        response = await post(world, signed(2))
        assert response.json()["code"] == 200
        order = world.journal.order(ORDER_NO)
        assert order is not None
        assert order.status == 9
        assert world.observed.outcomes == {"accepted": 1, "late": 1}
        assert world.events == 1

    @pytest.mark.parametrize(("body", "code", "outcome"), [
        (signed(secret="forged"), 401, "bad_signature"),
        (signed().replace(b'"status":1,', b'"status":1,"status":2,'), 400, "malformed"),
        (b"not json", 400, "malformed"),
        (signed(padding="x" * MAX_BODY), 413, "malformed"),
    ])
    async def test_refused_request(self, world: World, body: bytes, code: int,
                                   outcome: str) -> None:
        """A refused request answers its non-200 code, logs why, counts, records nothing."""
        with capture_logs() as logs:
            response = await post(world, body)
        assert response.status_code == code
        assert response.json()["code"] == code
        assert world.observed.outcomes == {outcome: 1}
        assert world.journal.history(ORDER_NO) == []
        assert logs[-1]["event"] == "callback.rejected"
        assert logs[-1]["outcome"] == outcome
        assert SECRET not in str(logs)

    async def test_oversized_streamed_body_is_cut_off(self, world: World) -> None:
        """A body without Content-Length is read only up to the limit."""
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"x" * 4096

        async with world.client() as client:
            response = await client.post(ROUTE, content=chunks())
        assert response.status_code == 413
        assert world.observed.outcomes == {"malformed": 1}

    async def test_source_not_allowed_is_forbidden(self, journal: MemoryOrderJournal) -> None:
        """Outside COSIGNER_CALLBACK_ALLOW_IPS: 403 before the body is even read."""
        world = World(journal, SourcePolicy(allow=parse_networks("10.0.0.0/8", "X")))
        assert (await post(world, signed(1), peer="203.0.113.5")).status_code == 403
        assert (await post(world, signed(1), peer="10.9.9.9")).status_code == 200
        assert world.observed.outcomes == {"forbidden": 1, "accepted": 1}

    async def test_journal_failure_answers_503_so_the_provider_retries(self) -> None:
        """A callback that cannot be recorded is not acknowledged; its retry is recorded."""
        journal = FailingJournal(failures=1)
        journal.open()
        world = World(journal)
        with capture_logs() as logs:
            first = await post(world, signed(1))
        assert (first.status_code, first.json()["code"]) == (503, 503)
        assert logs[-1]["event"] == "callback.store_failed"
        assert (await post(world, signed(1))).status_code == 200
        assert world.observed.outcomes == {"error": 1, "accepted": 1}
        assert len(journal.history(ORDER_NO)) == 1

    async def test_other_methods_and_paths(self, world: World) -> None:
        """Only POST /callbacks/order exists."""
        async with world.client() as client:
            assert (await client.get(ROUTE)).status_code == 405
            assert (await client.post("/metrics", content=b"{}")).status_code == 404
        assert world.observed.outcomes == {}
