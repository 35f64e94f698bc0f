"""The state contract, run against the in-memory and the file-backed SQLite state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cosigner.models import JsonNumber
from cosigner.sandbox.state import (
    DuplicateItemError,
    Merchant,
    Order,
    SandboxState,
    SqliteState,
    UnknownMerchantError,
)

M = Merchant("M1", "K1", "secret-1")


@pytest.fixture(params=["memory", "file"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SandboxState]:
    store = SqliteState() if request.param == "memory" else SqliteState(tmp_path / "s.db")
    store.put_merchant(M)
    yield store
    store.close()


def order(no: str = "100000000000000001", merchant_order_no: str = "mo-1") -> Order:
    return Order(no, "M1", merchant_order_no, 1, "10", "USDT", "CNY", None, 0, 1, 1, {"a": 1})


class TestMerchants:
    def test_lookup_by_number_and_key(self, state: SandboxState) -> None:
        """A merchant is found by its number and by its API key."""
        assert state.merchant("M1") == M
        assert state.merchant_by_api_key("K1") == M
        assert state.merchant_by_api_key("nope") is None

    def test_secret_is_not_in_repr_or_public_json(self) -> None:
        """Neither repr nor the admin view shows the secret."""
        assert "secret-1" not in repr(M)
        assert "secret-1" not in str(M.public_json())

    def test_key_moves_with_replacement(self, state: SandboxState) -> None:
        """Registering another merchant with the same key takes the key over."""
        state.put_merchant(Merchant("M2", "K1", "s2"))
        assert state.merchant_by_api_key("K1") == Merchant("M2", "K1", "s2")
        assert state.merchant("M1") is None

    def test_certificate_for_unknown_merchant(self, state: SandboxState) -> None:
        """Setting the certificate of an unknown merchant raises UnknownMerchantError."""
        with pytest.raises(UnknownMerchantError, match="'M9'"):
            state.set_certificate("M9", "pem")


class TestItems:
    def test_ids_are_assigned_in_order(self, state: SandboxState) -> None:
        """Items without id get 1, 2, ... after the highest id."""
        added = state.add_items("M1", [{"amount": "1"}, {"id": 10, "amount": "2"},
                                       {"amount": "3"}], 5)
        assert [i.id for i in added] == [1, 10, 11]

    def test_duplicate_id(self, state: SandboxState) -> None:
        """An existing id is refused and nothing of the batch is kept."""
        state.add_items("M1", [{"id": 1}], 0)
        with pytest.raises(DuplicateItemError):
            state.add_items("M1", [{"id": 2}, {"id": 1}], 0)
        assert [i.id for i in state.items()] == [1]

    def test_unknown_merchant(self, state: SandboxState) -> None:
        """Items need a registered merchant."""
        with pytest.raises(UnknownMerchantError):
            state.add_items("M9", [{}], 0)

    def test_paging(self, state: SandboxState) -> None:
        """Pages are 1-based slices of the pending items by id, with the pending total."""
        state.add_items("M1", [{} for _ in range(5)], 0)
        assert state.pending_page("M1", 2, 2) == (5, state.items()[2:4])
        assert state.pending_page("M1", 4, 2) == (5, [])

    def test_decide_only_once(self, state: SandboxState) -> None:
        """decide moves a pending item once; the second call reports False."""
        (item,) = state.add_items("M1", [{}], 0)
        assert state.decide(item.id, "approved", 7) is True
        assert state.decide(item.id, "rejected", 8) is False
        stored = state.item(item.id)
        assert stored is not None
        assert (stored.status, stored.decided_ms) == ("approved", 7)
        assert state.pending_page("M1", 1, 10) == (0, [])

    def test_number_literal_survives(self, state: SandboxState) -> None:
        """An amount stored as the literal 4.10 comes back as the JsonNumber 4.10."""
        (item,) = state.add_items("M1", [{"amount": JsonNumber("4.10")}], 0)
        stored = state.item(item.id)
        assert stored is not None
        assert isinstance(stored.raw["amount"], JsonNumber)
        assert stored.amount_text == "4.10"


class TestRecordsAndOrders:
    def test_approvals_and_collections_are_kept_in_order(self, state: SandboxState) -> None:
        """Records come back in arrival order with what was stored."""
        state.record_approve(received_ms=1, merchant_no="M1", item_id=3, status=1,
                             body={"id": 3}, verified=True, code=200, reason="approved")
        state.record_approve(received_ms=2, merchant_no="M1", item_id=None, status=None,
                             body={}, verified=None, code=4002, reason="missing")
        state.record_collect(received_ms=3, merchant_no="M1", is_main=0, body={"isMain": 0},
                             verified=False, code=4221, reason="bad")
        assert [(a.item_id, a.verified, a.code) for a in state.approvals()] == [
            (3, True, 200), (None, None, 4002)]
        assert [(c.is_main, c.verified) for c in state.collections()] == [(0, False)]

    def test_order_is_created_once_per_merchant_order_no(self, state: SandboxState) -> None:
        """The same merchantOrderNo returns the first order and is_new False."""
        first, new = state.create_order(order())
        again, new_again = state.create_order(order("100000000000000002"))
        assert (new, new_again) == (True, False)
        assert again == first

    def test_order_status_and_callbacks(self, state: SandboxState) -> None:
        """Status changes are stored; callback attempts are listed per order."""
        state.create_order(order())
        assert state.set_order_status("100000000000000001", 2, 9).status == 2
        state.record_callback(order_no="100000000000000001", attempt=1, sent_ms=1,
                              order_status=1, body="{}", http_status=500, answer="x",
                              ok=False, error="e")
        assert [c.attempt for c in state.callbacks("100000000000000001")] == [1]
        with pytest.raises(KeyError):
            state.set_order_status("nope", 1, 0)

    def test_rates(self, state: SandboxState) -> None:
        """Rates are looked up case-insensitively and can be replaced."""
        assert state.rate("usdt", "cny") == ("6.47", "6.9")
        state.set_rate("USDT", "CNY", "7", "7.1")
        assert state.rate("USDT", "CNY") == ("7", "7.1")


class TestNoncesAndReset:
    def test_nonce_window(self, state: SandboxState) -> None:
        """A nonce is refused within the window and usable again after it."""
        assert state.use_nonce("K1", "n1", 1_000, 300) is True
        assert state.use_nonce("K1", "n1", 1_200, 300) is False
        assert state.use_nonce("K2", "n1", 1_200, 300) is True
        assert state.use_nonce("K1", "n1", 1_400, 300) is True

    def test_reset_keeps_merchants_unless_asked(self, state: SandboxState) -> None:
        """reset forgets items and records; reset(merchants=True) the merchants too."""
        state.add_items("M1", [{}], 0)
        state.reset()
        assert (state.items(), state.merchants()) == ([], [M])
        state.reset(merchants=True)
        assert state.merchants() == []


class TestPersistence:
    def test_file_state_survives_reopening(self, tmp_path: Path) -> None:
        """Everything written to a state file is there after reopening it."""
        path = tmp_path / "sandbox.db"
        first = SqliteState(path)
        first.put_merchant(M)
        first.add_items("M1", [{"amount": JsonNumber("1.50")}, {}], 0)
        first.decide(1, "rejected", 1)
        first.create_order(order())
        first.close()
        second = SqliteState(path)
        try:
            assert second.merchant("M1") == M
            assert [(i.id, i.status) for i in second.items()] == [(1, "rejected"),
                                                                   (2, "pending")]
            assert second.items()[0].amount_text == "1.50"
            assert second.order("100000000000000001") is not None
        finally:
            second.close()

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        """A state file from another schema version is refused, not silently used."""
        import sqlite3
        path = tmp_path / "sandbox.db"
        SqliteState(path).close()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
        db.close()
        with pytest.raises(ValueError, match="schema 99"):
            SqliteState(path)


class TestFlatCost:
    """Issue 12: the cost of a request must not grow with the items or nonces stored."""

    @staticmethod
    def _trace(state: SandboxState) -> list[str]:
        statements: list[str] = []
        assert isinstance(state, SqliteState)
        state._db.set_trace_callback(statements.append)
        return statements

    def test_nonces_are_not_scanned_on_every_request(self, state: SandboxState) -> None:
        """Within one prune bucket, nonce checks delete nothing: no table scan per request."""
        statements = self._trace(state)
        for i in range(100):
            assert state.use_nonce("K1", f"n{i}", 1_000 + i, 300_000) is True
        deletes = [s for s in statements if s.lstrip().upper().startswith("DELETE")]
        assert len(deletes) == 1

    def test_expired_nonce_is_usable_before_it_is_pruned(self, state: SandboxState) -> None:
        """A nonce outside the window is taken again even while it is still stored."""
        assert state.use_nonce("K1", "n1", 1_000, 8_000) is True
        # No prune is due yet (next one at 2,000), but under a 100 ms window n1 expired.
        assert state.use_nonce("K1", "n1", 1_500, 100) is True
        assert state.use_nonce("K1", "n1", 1_550, 100) is False

    def test_expired_nonces_are_pruned(self, state: SandboxState) -> None:
        """The table keeps about one window of nonces."""
        for i in range(50):
            state.use_nonce("K1", f"n{i}", i * 100, 1_000)
        assert isinstance(state, SqliteState)
        (count,) = state._db.execute("SELECT COUNT(*) FROM nonces").fetchone()
        assert count <= 12

    def test_keyset_pages_equal_offset_pages(self, state: SandboxState) -> None:
        """Walking the pages gives exactly what OFFSET paging gives, via the keyset."""
        state.add_items("M1", [{"id": i * 3} for i in range(1, 24)], 0)
        statements = self._trace(state)
        pending = state.items(status="pending")
        for page in range(1, 7):
            assert state.pending_page("M1", page, 5) == (23, pending[(page - 1) * 5:page * 5])
        paged = [s for s in statements if "FROM items WHERE merchant_no" in s]
        assert sum("COUNT(*)" in s for s in paged) == 1
        assert sum("OFFSET" in s for s in paged) == 1  # page 1 only

    def test_pages_follow_changes_of_the_pending_set(self, state: SandboxState) -> None:
        """A decision, an added item or a reset between pages moves them like OFFSET would."""
        state.add_items("M1", [{} for _ in range(10)], 0)
        assert [i.id for i in state.pending_page("M1", 1, 3)[1]] == [1, 2, 3]
        state.decide(2, "approved", 1)
        assert state.pending_page("M1", 2, 3) == (9, [state.item(i) for i in (5, 6, 7)])
        state.add_items("M1", [{"id": 0}], 0)
        assert [i.id for i in state.pending_page("M1", 3, 3)[1]] == [7, 8, 9]
        state.reset()
        assert state.pending_page("M1", 4, 3) == (0, [])

    def test_pages_follow_another_connections_writes(self, tmp_path: Path) -> None:
        """A second state on the same file that decides an item invalidates the cursor."""
        one, two = SqliteState(tmp_path / "s.db"), SqliteState(tmp_path / "s.db")
        try:
            one.put_merchant(M)
            one.add_items("M1", [{} for _ in range(6)], 0)
            assert [i.id for i in one.pending_page("M1", 1, 2)[1]] == [1, 2]
            two.decide(1, "rejected", 1)
            assert one.pending_page("M1", 2, 2) == (5, [one.item(4), one.item(5)])
        finally:
            one.close()
            two.close()
