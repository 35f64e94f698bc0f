"""Settings (DESIGN section 6): one-line errors naming the setting, secrets that never leak."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from cosigner.errors import ConfigError, SettingsError
from cosigner.logs import configure_logging, get_logger
from cosigner.settings import SECRET_FIELDS, Settings, env_name, load_settings

SetEnv = Callable[..., None]
SECRETS = {
    "api_secret": "api-S3cret-value-42",
    "pfx_password": "pfx-S3cret-value-43",
    "database_url": "postgresql://cosigner:db-S3cret-44@db.internal/journal",
    "callback_forward_secret": "fwd-S3cret-value-45",
}


def _error(**env: str) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    for value in env.values():
        if len(value) >= 4:  # "0" may well be in "greater than 0"
            assert value not in message
    return message


@pytest.fixture
def secrets_set(cosigner_env: SetEnv) -> Settings:
    cosigner_env(**SECRETS)
    return load_settings()


class TestDefaults:
    """An empty environment gives DESIGN section 6's defaults."""

    def test_defaults(self, cosigner_env: SetEnv) -> None:
        """Every default is as documented."""
        s = load_settings()
        assert (s.lang, s.sign_sort, s.sign_scheme, s.mode) == (
            "en", "casefold", "java-rsa", "enforce")
        assert (s.poll_interval, s.collect_interval, s.request_timeout) == (120.0, 300.0, 10.0)
        assert (s.page_size, s.max_pending) == (50, 10000)
        assert s.collect_is_main_values == (1, 0)
        assert s.http_host_port == ("127.0.0.1", 9464)
        assert (s.log_format, s.log_level) == ("json", "info")
        assert s.database_url.get_secret_value() == "sqlite:///var/lib/cosigner/journal.db"
        assert s.api_secret is None
        assert s.pfx_password is None

    def test_environment_is_read_with_prefix(self, cosigner_env: SetEnv) -> None:
        """COSIGNER_* variables set the fields, case-normalised where it is a choice."""
        cosigner_env(api_base_url="https://sandbox.1bitpay.io/", log_level="DEBUG",
                     sign_sort=" ASCII ", collect_is_main="0", http_addr="[::1]:9000",
                     page_size="200")
        s = load_settings()
        assert s.api_base_url == "https://sandbox.1bitpay.io"
        assert (s.log_level, s.sign_sort) == ("debug", "ascii")
        assert s.collect_is_main_values == (0,)
        assert s.http_host_port == ("::1", 9000)
        assert s.page_size == 200

    def test_dotenv_file_is_read(self, cosigner_env: SetEnv) -> None:
        """A .env file in the working directory supplies settings."""
        Path(".env").write_text("COSIGNER_MERCHANT_NO=M-from-dotenv\n", encoding="utf-8")
        assert load_settings().merchant_no == "M-from-dotenv"

    def test_overrides_win(self, cosigner_env: SetEnv) -> None:
        """Keyword overrides take precedence over the environment."""
        cosigner_env(merchant_no="M-env")
        assert load_settings(merchant_no="M-kw").merchant_no == "M-kw"

    def test_empty_base_url_means_unset(self, cosigner_env: SetEnv) -> None:
        """COSIGNER_API_BASE_URL= (empty) is the same as not set."""
        cosigner_env(api_base_url="")
        assert load_settings().api_base_url is None


class TestErrors:
    """Invalid settings give one line per problem naming the setting, never its value."""

    @pytest.mark.parametrize(("name", "value"), [
        ("api_base_url", "ftp://leaky-host.example"),
        ("log_level", "verbose-leak"),
        ("log_format", "xml-leak"),
        ("sign_scheme", "rsa-md5-leak"),
        ("sign_sort", "natural-leak"),
        ("lang", "fr-leak"),
        ("mode", "yolo-leak"),
        ("poll_interval", "-5"),
        ("collect_interval", "0"),
        ("page_size", "lots-leak"),
        ("page_size", "0"),
        ("max_pending", "-1"),
        ("request_timeout", "soon-leak"),
        ("collect_is_main", "1,2-leak"),
        ("collect_is_main", "1,1"),
        ("http_addr", "nowhere-leak"),
        ("http_addr", "host:99999"),
    ])
    def test_names_the_setting(self, cosigner_env: SetEnv, name: str, value: str) -> None:
        """The message starts with COSIGNER_<NAME> and never quotes the value."""
        cosigner_env(**{name: value})
        message = _error(**{name: value})
        assert message.startswith(f"{env_name(name)}: ")

    def test_several_problems_share_one_line(self, cosigner_env: SetEnv) -> None:
        """Every problem is reported, on a single line."""
        cosigner_env(log_level="loud-leak", page_size="many-leak")
        message = _error(log_level="loud-leak", page_size="many-leak")
        assert "COSIGNER_LOG_LEVEL" in message
        assert "COSIGNER_PAGE_SIZE" in message

    def test_settings_errors_are_config_errors(self) -> None:
        """SettingsError is a ConfigError, so commands exit 2 on it."""
        assert issubclass(SettingsError, ConfigError)

    def test_require_names_every_missing_setting(self, cosigner_env: SetEnv) -> None:
        """require() lists each missing setting and the reason."""
        cosigner_env(merchant_no="M1")
        with pytest.raises(SettingsError) as info:
            load_settings().require("merchant_no", "api_key", "api_secret", why="to call 1BitPay")
        assert str(info.value) == (
            "COSIGNER_API_KEY, COSIGNER_API_SECRET must be set to call 1BitPay")


class TestSecretFiles:
    """Every secret also accepts COSIGNER_<NAME>_FILE."""

    @pytest.mark.parametrize("name", SECRET_FIELDS)
    def test_file_supplies_the_secret(self, cosigner_env: SetEnv, tmp_path: Path,
                                      name: str) -> None:
        """The file's content, without its trailing newline, becomes the SecretStr."""
        path = tmp_path / name
        path.write_text(SECRETS[name] + "\r\n", encoding="utf-8")
        cosigner_env(**{f"{name}_file": path})
        value = getattr(load_settings(), name)
        assert isinstance(value, SecretStr)
        assert value.get_secret_value() == SECRETS[name]

    @pytest.mark.parametrize("name", SECRET_FIELDS)
    def test_both_set_is_an_error(self, cosigner_env: SetEnv, tmp_path: Path,
                                  name: str) -> None:
        """Setting a secret and its _FILE twin is refused, naming both."""
        path = tmp_path / name
        path.write_text("from-file-S3cret", encoding="utf-8")
        cosigner_env(**{name: SECRETS[name], f"{name}_file": path})
        message = _error(secret=SECRETS[name], file_secret="from-file-S3cret")
        assert f"{env_name(name)} or {env_name(name)}_FILE" in message

    def test_missing_file(self, cosigner_env: SetEnv, tmp_path: Path) -> None:
        """An unreadable secret file names the _FILE setting and the path."""
        cosigner_env(api_secret_file=tmp_path / "absent")
        message = _error()
        assert "COSIGNER_API_SECRET_FILE" in message
        assert "absent" in message

    def test_empty_file(self, cosigner_env: SetEnv, tmp_path: Path) -> None:
        """An empty secret file is refused."""
        (tmp_path / "empty").write_text("\n", encoding="utf-8")
        cosigner_env(pfx_password_file=tmp_path / "empty")
        assert "COSIGNER_PFX_PASSWORD_FILE" in _error()
        assert "empty" in _error()


class TestShardPassword:
    """The shard password: the setting, else "1bitpay" + merchant number."""

    def test_explicit_password(self, cosigner_env: SetEnv) -> None:
        """COSIGNER_PFX_PASSWORD wins."""
        cosigner_env(pfx_password="explicit-pw", merchant_no="M1")
        assert load_settings().shard_password() == "explicit-pw"

    def test_default_from_merchant_no(self, cosigner_env: SetEnv) -> None:
        """Without a password it is "1bitpay" + COSIGNER_MERCHANT_NO."""
        cosigner_env(merchant_no="M1")
        assert load_settings().shard_password() == "1bitpayM1"

    def test_neither_set(self, cosigner_env: SetEnv) -> None:
        """Without either, the error names COSIGNER_MERCHANT_NO."""
        with pytest.raises(SettingsError, match="COSIGNER_MERCHANT_NO must be set"):
            load_settings().shard_password()


class TestSecretsNeverShow:
    """Secrets stay out of repr, str, dumps and logs."""

    def test_repr_and_str(self, secrets_set: Settings) -> None:
        """Neither repr nor str shows a secret."""
        text = repr(secrets_set) + str(secrets_set)
        for value in SECRETS.values():
            assert value not in text
        assert "db-S3cret-44" not in text

    def test_model_dump_json(self, secrets_set: Settings) -> None:
        """Serialising the settings masks every secret."""
        text = secrets_set.model_dump_json() + json.dumps(secrets_set.model_dump(), default=str)
        for value in SECRETS.values():
            assert value not in text

    def test_callback_urls_are_dumped_without_userinfo(self, cosigner_env: SetEnv) -> None:
        cosigner_env(**SECRETS, callback_forward_url="https://u:fwdurl-pw-46@hook.example/in",
                     callback_public_url="https://v:puburl-pw-47@me.example/cb")
        text = load_settings().model_dump_json()
        assert "fwdurl-pw-46" not in text
        assert "puburl-pw-47" not in text

    def test_logging_the_settings(self, secrets_set: Settings) -> None:
        """A log line carrying the settings object shows no secret."""
        stream = io.StringIO()
        try:
            configure_logging("json", "info", stream=stream)
            get_logger().info("settings.loaded", settings=secrets_set,
                              fields=secrets_set.model_dump())
        finally:
            structlog.reset_defaults()
        output = stream.getvalue()
        assert "settings.loaded" in output
        for value in SECRETS.values():
            assert value not in output
