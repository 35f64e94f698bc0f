"""``cosigner orders list|show`` in-process, and the callback settings."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cosigner.callbacks.verify import transition
from cosigner.cli import main
from cosigner.errors import SettingsError
from cosigner.settings import load_settings
from cosigner.store.orders_sqlite import SqliteOrderJournal
from tests.callbacks.conftest import FakeClock, new_sqlite_journal
from tests.callbacks.test_store import callback

SetEnv = Callable[..., None]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return invoke


@pytest.fixture
def journal_env(tmp_path: Path, cosigner_env: SetEnv, clock: FakeClock) -> Path:
    """A journal with two orders: A (2, then 1, then a late 3) and B (2)."""
    path = new_sqlite_journal(tmp_path / "journal.db")
    journal = SqliteOrderJournal(path, transition, writer=True,
                                 clock=clock)
    journal.open()
    journal.record(callback(2, order_no="A"), forward=True)
    clock.advance(minutes=5)
    journal.record(callback(1, order_no="A"), forward=True)
    journal.record(callback(3, order_no="A"), forward=True)
    clock.advance(days=3)
    journal.record(callback(2, order_no="B", source="10.0.0.7"), forward=False)
    journal.close()
    cosigner_env(database_url=f"sqlite://{path}")
    return path


class TestOrdersCommands:
    def test_list_shows_every_order(self, run: Run, journal_env: Path) -> None:
        """Each order once, with its current status and callback count."""
        code, out, err = run("orders", "list")
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["orderNo", "merchantOrderNo", "type"]
        assert lines[1].split()[:6] == ["A", "1231222112d8", "buy", "1", "(completed)",
                                        "10.50"]
        assert lines[2].split()[:5] == ["B", "1231222112d8", "buy", "2", "(in"]
        assert len(lines) == 3

    def test_list_filters(self, run: Run, journal_env: Path) -> None:
        """--status and --since narrow the list; nothing matching says so."""
        assert [ln.split()[0] for ln in run("orders", "list", "--status", "2")[1].splitlines()
                [1:]] == ["B"]
        assert run("orders", "list", "--status=-2,-1")[1] == "no orders match\n"
        out = run("orders", "list", "--since", "2026-03-04T00:00:00Z")[1]
        assert [ln.split()[0] for ln in out.splitlines()[1:]] == ["B"]

    def test_list_bad_status_is_usage_error(self, run: Run, journal_env: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
        """A status outside -2..9 is refused by the parser (exit 2)."""
        with pytest.raises(SystemExit) as exc:
            main(["orders", "list", "--status", "12"])
        assert exc.value.code == 2
        assert "not an order status" in capsys.readouterr().err

    def test_show_prints_the_history(self, run: Run, journal_env: Path) -> None:
        """Status, every callback with its outcome, and the forwards."""
        code, out, _ = run("orders", "show", "A")
        assert code == 0
        assert "status           1 (completed)" in out
        assert "callbacks (3):" in out
        assert re.findall(r" (applied|late) ", out) == ["applied", "applied", "late"]
        assert "forwards (2):" in out

    def test_show_unknown_order_exits_1(self, run: Run, journal_env: Path) -> None:
        """An order without callbacks: exit 1 and a line saying so."""
        code, out, _ = run("orders", "show", "nope")
        assert code == 1
        assert out == "no callback recorded for order nope\n"

    def test_fresh_journal_has_no_orders(self, run: Run, tmp_path: Path,
                                         cosigner_env: SetEnv) -> None:
        """A journal that never received a callback: no orders, exit 0."""
        path = new_sqlite_journal(tmp_path / "fresh.db")
        cosigner_env(database_url=f"sqlite://{path}")
        assert run("orders", "list") == (0, "no orders match\n", "")

    def test_missing_journal_exits_2(self, run: Run, tmp_path: Path,
                                     cosigner_env: SetEnv) -> None:
        """No journal: exit 2 naming it, and nothing is created."""
        cosigner_env(database_url=f"sqlite://{tmp_path}/none.db")
        code, _, err = run("orders", "list")
        assert code == 2
        assert f"{tmp_path}/none.db does not exist" in err
        assert not (tmp_path / "none.db").exists()


class TestSettings:
    def test_forward_url_needs_a_secret(self, cosigner_env: SetEnv) -> None:
        """CALLBACK_FORWARD_URL without CALLBACK_FORWARD_SECRET is a settings error."""
        cosigner_env(callback_forward_url="https://backend.example.com/events")
        with pytest.raises(SettingsError, match="COSIGNER_CALLBACK_FORWARD_SECRET"):
            load_settings()

    def test_forward_secret_from_a_file(self, cosigner_env: SetEnv, tmp_path: Path) -> None:
        """CALLBACK_FORWARD_SECRET_FILE is read, and the secret stays a SecretStr."""
        secret = tmp_path / "forward_secret"
        secret.write_text("s3cret-forward\n", encoding="utf-8")
        cosigner_env(callback_forward_url="https://backend.example.com/events",
                     callback_forward_secret_file=secret)
        settings = load_settings()
        assert settings.callback_forward_secret is not None
        assert settings.callback_forward_secret.get_secret_value() == "s3cret-forward"
        assert "s3cret-forward" not in repr(settings)

    @pytest.mark.parametrize(("name", "value", "message"), [
        ("callback_addr", "9465", "COSIGNER_CALLBACK_ADDR"),
        ("callback_public_url", "ftp://x.example.com/cb", "COSIGNER_CALLBACK_PUBLIC_URL"),
        ("callback_allow_ips", "10.0.0.0/8, bogus", "COSIGNER_CALLBACK_ALLOW_IPS"),
        ("callback_trusted_proxies", "300.1.1.1", "COSIGNER_CALLBACK_TRUSTED_PROXIES"),
    ])
    def test_bad_values_name_the_setting(self, cosigner_env: SetEnv, name: str, value: str,
                                         message: str) -> None:
        """Each callback setting is validated at load, the error naming it."""
        cosigner_env(**{name: value})
        with pytest.raises(SettingsError, match=message):
            load_settings()

    def test_callbacks_are_off_by_default(self, cosigner_env: SetEnv) -> None:
        """Without CALLBACK_ADDR there is no listener."""
        assert load_settings().callback_host_port is None
        cosigner_env(callback_addr="127.0.0.2:9465")
        assert load_settings().callback_host_port == ("127.0.0.2", 9465)
