"""C2C order callbacks with a PostgreSQL journal (DESIGN section 10): the daemon records a
signed callback in the ``cosigner_order_*`` tables; a standby records nothing.

Needs ``COSIGNER_TEST_POSTGRES_URL`` (skips with the reason without it, fails under
``COSIGNER_REQUIRE_ALL=1``); every test gets its own scratch database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from cosigner.callbacks.verify import transition
from cosigner.daemon.callbacks import CallbackService
from cosigner.daemon.service import Daemon
from cosigner.store import init_journal
from cosigner.store.orders_postgres import PostgresOrderJournal
from tests.callbacks.conftest import signed
from tests.daemon.conftest import API_SECRET, Rig, sample, samples, wait_for
from tests.daemon.test_metrics import get
from tests.daemon.test_service import running
from tests.postgres import require_postgres, scratch_database

pytestmark = [pytest.mark.external_service, pytest.mark.slow, pytest.mark.timeout(120)]

ORDER_NO = "335793449653514240"


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """The test server (read before ``cosigner_env`` clears COSIGNER_* variables)."""
    return require_postgres()


@contextlib.contextmanager
def _scratch(admin: str) -> Iterator[str]:
    os.environ.setdefault("COSIGNER_TEST_POSTGRES_URL", admin)
    with scratch_database("orders") as url:
        init_journal(url)
        yield url


async def post_callback(daemon: Daemon, body: bytes) -> dict[str, Any]:
    (service,) = [s for s in daemon.services if isinstance(s, CallbackService)]
    url = f"http://127.0.0.1:{service.port}/callbacks/order"
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(url, content=body,
                                   headers={"Content-Type": "application/json"})
    answer: dict[str, Any] = response.json()
    return answer


def callbacks(daemon: Daemon, outcome: str) -> float:
    return daemon.metrics.registry.get_sample_value(
        "cosigner_order_callbacks_total", {"outcome": outcome}) or 0.0


class TestPostgresCallbacks:
    async def test_leader_records_a_signed_callback_and_a_standby_does_not(
            self, pg_admin: str, rig: Rig) -> None:
        """`cosigner run` on PostgreSQL with CALLBACK_ADDR starts (it used to exit 2: "no
        order tables yet"), records a signed callback in the order tables before its 200
        and answers the provider's retry as a duplicate; a standby answers non-200 and
        records nothing (the provider retries, and the leader records it)."""
        with _scratch(pg_admin) as url:
            settings = rig.with_settings(database_url=SecretStr(url), leader_retry=0.5,
                                         callback_addr="127.0.0.1:0",
                                         pause_file=rig.tmp / "PAUSE")
            leader, standby = rig.build(settings), rig.build(settings)
            async with running(leader):
                await wait_for(lambda: leader.leadership.active(), within=20,
                               what="the first replica to lead")
                first = await post_callback(leader, signed(2, secret=API_SECRET))
                again = await post_callback(leader, signed(2, secret=API_SECRET))
                async with running(standby):
                    await wait_for(lambda: standby.leadership.healthy(), within=10,
                                   what="the standby to reach the database")
                    refused = await post_callback(standby, signed(1, secret=API_SECRET))
                    final = await post_callback(leader, signed(1, secret=API_SECRET))
                    metrics = samples((await get(leader, "/metrics")).text)
                    standby_errors = callbacks(standby, "error")
            journal = PostgresOrderJournal(url, transition)
            journal.open()
            try:
                history = journal.history(ORDER_NO)
                order = journal.order(ORDER_NO)
                checked = journal.verify()
            finally:
                journal.close()
        assert first == {"code": 200, "message": "Success"}
        assert again == first
        assert refused["code"] != 200
        assert standby_errors == 1
        assert final == first
        assert [(r.seq, r.status, r.outcome) for r in history] == [
            (1, 2, "applied"), (2, 1, "applied")]
        assert order is not None
        assert (order.status, order.deal_amount, order.callbacks) == (1, "10.50", 2)
        assert checked.ok
        assert checked.entries == 2
        assert sample(metrics, "cosigner_order_callbacks_total", outcome="accepted") == 2
        assert sample(metrics, "cosigner_order_callbacks_total", outcome="duplicate") == 1
