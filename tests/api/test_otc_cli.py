"""``cosigner otc rate|create`` in-process, against the scripted server on 127.0.0.1.

Settings come from the environment only (``cosigner_env`` clears every
``COSIGNER_*`` variable and runs in an empty directory); every run checks that
the API secret appears in no output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cosigner.api.client import ENDPOINTS
from cosigner.cli import main
from tests.api.scripted import Answer, ScriptedServer, fail, ok
from tests.api.sign_oracle import accepts

MERCHANT = "mer1c92b0319ef5b794"
API_KEY = "ak-cli-0001"
SECRET = "sk-cli-Secret-9f3a7c"

RATE = ENDPOINTS["rate"]
CREATE = ENDPOINTS["create"]
SETTINGS = ("COSIGNER_API_BASE_URL", "COSIGNER_MERCHANT_NO", "COSIGNER_API_KEY",
            "COSIGNER_API_SECRET")

ORDER_TEXT = """{
  "userName": "Chen", "areaCode": "+86", "phone": "18848820305",
  "syncUrl": "https://example.com", "asyncUrl": "https://example.com",
  "cryptoAmount": 10.50, "cryptoCurrency": "USDT", "legalCurrency": "CNY",
  "idCardType": 1, "idCard": "412627288918989891", "kyc": 2,
  "merchantOrderNo": "1231222112d8", "orderType": 1, "payWay": 1, "h5": false
}"""
CREATED = {"url": "https://sandbox.1bitpay.io/otc.html?o=335793449653514240",
           "isNew": True, "orderNo": "335793449653514240"}

SetEnv = Callable[..., None]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``cosigner ARGS...`` in-process: ``(exit code, stdout, stderr)``, secret-free."""
    def invoke(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert SECRET not in out
        assert SECRET not in err
        return code, out, err
    return invoke


@pytest.fixture
def merchant_env(cosigner_env: SetEnv, api_server: ScriptedServer) -> SetEnv:
    """Every setting the otc commands need, pointing at the scripted server."""
    cosigner_env(api_base_url=api_server.url, merchant_no=MERCHANT, api_key=API_KEY,
                 api_secret=SECRET)
    return cosigner_env


def order_file(tmp_path: Path, text: str = ORDER_TEXT) -> Path:
    path = tmp_path / "order.json"
    path.write_text(text, encoding="utf-8")
    return path


def order_with(**changes: Any) -> str:
    """ORDER_TEXT with fields replaced (None removes a field)."""
    order = json.loads(ORDER_TEXT)
    for key, value in changes.items():
        if value is None:
            order.pop(key, None)
        else:
            order[key] = value
    return json.dumps(order, ensure_ascii=False)


def assert_secret_never_sent(server: ScriptedServer) -> None:
    for request in server.requests:
        assert SECRET not in json.dumps(dict(request.headers))
        assert SECRET.encode() not in request.body


class TestOtcRate:
    def test_prints_the_rates(self, run: Run, merchant_env: SetEnv,
                              api_server: ScriptedServer) -> None:
        """``otc rate USDT CNY`` prints both rates as sent and exits 0."""
        api_server.script(RATE, ok({"buyRate": "6.47", "sellRate": "6.9"}))
        code, out, err = run("otc", "rate", "USDT", "CNY")
        assert (code, err) == (0, "")
        assert out == "USDT/CNY buy 6.47 sell 6.9\n"
        (request,) = api_server.requests
        assert request.json() == {"cryptoCurrency": "USDT", "legalCurrency": "CNY"}

    def test_request_is_signed_with_the_configured_merchant(
            self, run: Run, merchant_env: SetEnv, api_server: ScriptedServer) -> None:
        """The command's request carries the configured headers and a Sign the oracle accepts."""
        api_server.script(RATE, ok({"buyRate": "6.47", "sellRate": "6.9"}))
        assert run("otc", "rate", "USDT", "CNY")[0] == 0
        (request,) = api_server.requests
        assert request.headers["merchantno"] == MERCHANT
        assert request.headers["apikey"] == API_KEY
        assert accepts(request.headers, request.body, SECRET)
        assert_secret_never_sent(api_server)

    def test_ascii_sort_and_lang_settings(self, run: Run, merchant_env: SetEnv,
                                          api_server: ScriptedServer) -> None:
        """COSIGNER_SIGN_SORT=ascii and COSIGNER_LANG=zh reach the wire."""
        merchant_env(sign_sort="ascii", lang="zh")
        api_server.script(RATE, ok({"buyRate": "6.47", "sellRate": "6.9"}))
        assert run("otc", "rate", "USDT", "CNY")[0] == 0
        (request,) = api_server.requests
        assert request.headers["lang"] == "zh"
        assert accepts(request.headers, request.body, SECRET, "ascii")
        assert not accepts(request.headers, request.body, SECRET, "casefold")

    def test_secret_from_a_file(self, run: Run, cosigner_env: SetEnv, tmp_path: Path,
                                api_server: ScriptedServer) -> None:
        """COSIGNER_API_SECRET_FILE supplies the secret the request is signed with."""
        secret_file = tmp_path / "api_secret"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
        cosigner_env(api_base_url=api_server.url, merchant_no=MERCHANT, api_key=API_KEY,
                     api_secret_file=secret_file)
        api_server.script(RATE, ok({"buyRate": "6.47", "sellRate": "6.9"}))
        assert run("otc", "rate", "USDT", "CNY")[0] == 0
        (request,) = api_server.requests
        assert accepts(request.headers, request.body, SECRET)

    def test_number_literals_keep_their_text(self, run: Run, merchant_env: SetEnv,
                                             api_server: ScriptedServer) -> None:
        """A rate sent as the number 6.470 is printed as 6.470."""
        api_server.script(RATE, Answer('{"code":200,"message":"Success",'
                                       '"data":{"buyRate":6.470,"sellRate":7}}'))
        code, out, _ = run("otc", "rate", "USDT", "CNY")
        assert code == 0
        assert out == "USDT/CNY buy 6.470 sell 7\n"

    def test_api_error_exits_1_with_the_code(self, run: Run, merchant_env: SetEnv,
                                             api_server: ScriptedServer) -> None:
        """An API code other than 200 exits 1 with the code and message on stderr."""
        api_server.script(RATE, fail(4013, "Sign verification failed"))
        code, out, err = run("otc", "rate", "USDT", "CNY")
        assert code == 1
        assert out == ""
        assert "4013" in err
        assert "Sign verification failed" in err
        assert len(err.strip().splitlines()) == 1

    def test_http_error_exits_1(self, run: Run, merchant_env: SetEnv,
                                api_server: ScriptedServer) -> None:
        """A 403 answer exits 1 naming the status."""
        api_server.script(RATE, Answer(b"forbidden", status=403, content_type="text/plain"))
        code, _, err = run("otc", "rate", "USDT", "CNY")
        assert code == 1
        assert "HTTP 403" in err

    def test_unreachable_api_exits_1(self, run: Run, cosigner_env: SetEnv,
                                     closed_port_url: str) -> None:
        """A refused connection exits 1 saying it could not connect."""
        cosigner_env(api_base_url=closed_port_url, merchant_no=MERCHANT, api_key=API_KEY,
                     api_secret=SECRET)
        code, out, err = run("otc", "rate", "USDT", "CNY")
        assert code == 1
        assert out == ""
        assert "could not connect" in err

    def test_missing_settings_exit_2_naming_them(self, run: Run,
                                                 cosigner_env: SetEnv) -> None:
        """With nothing configured, exit 2 naming every COSIGNER_* setting needed."""
        code, out, err = run("otc", "rate", "USDT", "CNY")
        assert code == 2
        assert out == ""
        for name in SETTINGS:
            assert name in err
        assert len(err.strip().splitlines()) == 1

    def test_one_missing_setting_is_named_alone(self, run: Run, cosigner_env: SetEnv,
                                                api_server: ScriptedServer) -> None:
        """Only the missing secret is named, and nothing is sent."""
        cosigner_env(api_base_url=api_server.url, merchant_no=MERCHANT, api_key=API_KEY)
        code, _, err = run("otc", "rate", "USDT", "CNY")
        assert code == 2
        assert "COSIGNER_API_SECRET" in err
        assert "COSIGNER_API_KEY" not in err
        assert api_server.requests == []

    @pytest.mark.parametrize(("setting", "value"), [("api_base_url", "ftp://example.com"),
                                                    ("sign_sort", "bytes"),
                                                    ("request_timeout", "-1")])
    def test_invalid_setting_exits_2_naming_it(self, run: Run, merchant_env: SetEnv,
                                               setting: str, value: str) -> None:
        """An invalid setting exits 2 naming it."""
        merchant_env(**{setting: value})
        code, _, err = run("otc", "rate", "USDT", "CNY")
        assert code == 2
        assert f"COSIGNER_{setting.upper()}" in err

    def test_dotenv_in_the_working_directory_is_read(
            self, run: Run, cosigner_env: SetEnv, api_server: ScriptedServer) -> None:
        """Settings may come from a .env file in the working directory."""
        Path(".env").write_text(
            f"COSIGNER_API_BASE_URL={api_server.url}\nCOSIGNER_MERCHANT_NO={MERCHANT}\n"
            f"COSIGNER_API_KEY={API_KEY}\nCOSIGNER_API_SECRET={SECRET}\n", encoding="utf-8")
        api_server.script(RATE, ok({"buyRate": "6.47", "sellRate": "6.9"}))
        assert run("otc", "rate", "USDT", "CNY")[0] == 0
        (request,) = api_server.requests
        assert accepts(request.headers, request.body, SECRET)

    def test_missing_argument_is_a_usage_error(self, run: Run, merchant_env: SetEnv,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """``otc rate USDT`` is rejected by the parser with exit 2."""
        with pytest.raises(SystemExit) as caught:
            main(["otc", "rate", "USDT"])
        assert caught.value.code == 2
        assert "LEGAL" in capsys.readouterr().err


class TestOtcCreate:
    def test_creates_the_order(self, run: Run, merchant_env: SetEnv, tmp_path: Path,
                               api_server: ScriptedServer) -> None:
        """A good file exits 0 and prints orderNo, isNew and url."""
        api_server.script(CREATE, ok(CREATED))
        code, out, err = run("otc", "create", "--file", str(order_file(tmp_path)))
        assert (code, err) == (0, "")
        assert out.splitlines() == ["orderNo 335793449653514240", "isNew   true",
                                    f"url     {CREATED['url']}"]

    def test_sends_the_file_exactly_and_signed(self, run: Run, merchant_env: SetEnv,
                                               tmp_path: Path,
                                               api_server: ScriptedServer) -> None:
        """The order's fields go out as written (10.50 stays 10.50), signed."""
        api_server.script(CREATE, ok(CREATED))
        assert run("otc", "create", "--file", str(order_file(tmp_path)))[0] == 0
        (request,) = api_server.requests
        assert b'"cryptoAmount":10.50' in request.body
        assert json.loads(request.body) == json.loads(ORDER_TEXT)
        assert accepts(request.headers, request.body, SECRET)
        assert_secret_never_sent(api_server)

    def test_existing_order(self, run: Run, merchant_env: SetEnv, tmp_path: Path,
                            api_server: ScriptedServer) -> None:
        """``isNew: false`` is printed as false."""
        api_server.script(CREATE, ok({**CREATED, "isNew": False}))
        code, out, _ = run("otc", "create", "--file", str(order_file(tmp_path)))
        assert code == 0
        assert "isNew   false" in out.splitlines()

    def test_missing_fields_exit_2_naming_file_and_fields(
            self, run: Run, merchant_env: SetEnv, tmp_path: Path,
            api_server: ScriptedServer) -> None:
        """Missing required fields exit 2 naming the file and each field; nothing is sent."""
        path = order_file(tmp_path, order_with(userName=None, idCard=None, kyc=""))
        code, out, err = run("otc", "create", "--file", str(path))
        assert code == 2
        assert out == ""
        assert str(path) in err
        for name in ("userName", "idCard", "kyc"):
            assert name in err
        assert api_server.requests == []

    def test_sell_order_without_bank_exits_2(self, run: Run, merchant_env: SetEnv,
                                             tmp_path: Path,
                                             api_server: ScriptedServer) -> None:
        """A sell order lacking bank details exits 2 naming the file and the fields."""
        path = order_file(tmp_path, order_with(orderType=2))
        code, _, err = run("otc", "create", "--file", str(path))
        assert code == 2
        assert str(path) in err
        assert "bankAccount" in err
        assert api_server.requests == []

    @pytest.mark.parametrize("text", ["not json", '{"userName": "Chen",', "", "[1, 2]", "42"])
    def test_unusable_file_exits_2_naming_it(self, run: Run, merchant_env: SetEnv,
                                             tmp_path: Path, api_server: ScriptedServer,
                                             text: str) -> None:
        """A file that is not a JSON object exits 2 naming the file."""
        path = order_file(tmp_path, text)
        code, out, err = run("otc", "create", "--file", str(path))
        assert code == 2
        assert out == ""
        assert str(path) in err
        assert api_server.requests == []

    def test_missing_file_exits_2(self, run: Run, merchant_env: SetEnv,
                                  tmp_path: Path) -> None:
        """A file that does not exist exits 2 naming it."""
        path = tmp_path / "absent.json"
        code, _, err = run("otc", "create", "--file", str(path))
        assert code == 2
        assert str(path) in err

    def test_missing_settings_exit_2(self, run: Run, cosigner_env: SetEnv,
                                     tmp_path: Path) -> None:
        """A good file without settings exits 2 naming the COSIGNER_* settings."""
        code, _, err = run("otc", "create", "--file", str(order_file(tmp_path)))
        assert code == 2
        for name in SETTINGS:
            assert name in err

    def test_api_error_exits_1(self, run: Run, merchant_env: SetEnv, tmp_path: Path,
                               api_server: ScriptedServer) -> None:
        """A refused order exits 1 with the API code, and is sent once."""
        api_server.script(CREATE, fail(5001, "duplicate merchantOrderNo"))
        code, out, err = run("otc", "create", "--file", str(order_file(tmp_path)))
        assert code == 1
        assert out == ""
        assert "5001" in err
        assert "duplicate merchantOrderNo" in err
        assert len(api_server.requests) == 1

    def test_server_error_is_not_retried(self, run: Run, merchant_env: SetEnv,
                                         tmp_path: Path, api_server: ScriptedServer) -> None:
        """A 500 on create exits 1 after exactly one request (an order is never sent twice)."""
        api_server.script(CREATE, Answer(status=500), ok(CREATED))
        code, _, err = run("otc", "create", "--file", str(order_file(tmp_path)))
        assert code == 1
        assert "HTTP 500" in err
        assert len(api_server.requests) == 1


class TestOtcCreateAsyncUrl:
    """COSIGNER_CALLBACK_PUBLIC_URL becomes the order's asyncUrl when it has none."""

    PUBLIC = "https://cosigner.example.com/callbacks/order"

    @pytest.mark.parametrize("given", [None, ""])
    def test_fills_a_missing_async_url(self, run: Run, merchant_env: SetEnv, tmp_path: Path,
                                       api_server: ScriptedServer, given: str | None) -> None:
        """No (or an empty) asyncUrl: the public callback URL is sent, signed."""
        merchant_env(callback_public_url=self.PUBLIC)
        api_server.script(CREATE, ok(CREATED))
        text = order_with(asyncUrl=given)  # None removes the field
        assert run("otc", "create", "--file", str(order_file(tmp_path, text)))[0] == 0
        (request,) = api_server.requests
        assert request.json()["asyncUrl"] == self.PUBLIC
        assert accepts(request.headers, request.body, SECRET)

    def test_keeps_the_order_s_own_async_url(self, run: Run, merchant_env: SetEnv,
                                             tmp_path: Path,
                                             api_server: ScriptedServer) -> None:
        """An asyncUrl in the file wins over the setting."""
        merchant_env(callback_public_url=self.PUBLIC)
        api_server.script(CREATE, ok(CREATED))
        assert run("otc", "create", "--file", str(order_file(tmp_path)))[0] == 0
        (request,) = api_server.requests
        assert request.json()["asyncUrl"] == "https://example.com"

    def test_without_the_setting_nothing_is_added(self, run: Run, merchant_env: SetEnv,
                                                  tmp_path: Path,
                                                  api_server: ScriptedServer) -> None:
        """No COSIGNER_CALLBACK_PUBLIC_URL: the order goes out without asyncUrl."""
        api_server.script(CREATE, ok(CREATED))
        text = order_with(asyncUrl=None)
        assert run("otc", "create", "--file", str(order_file(tmp_path, text)))[0] == 0
        (request,) = api_server.requests
        assert "asyncUrl" not in request.json()
