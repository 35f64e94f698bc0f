"""Settings (DESIGN section 6): environment with prefix ``COSIGNER_`` and a ``.env`` file.

Read once, in the composition root, and passed down as plain values.  Every
secret is a :class:`SecretStr` and also accepts ``COSIGNER_<NAME>_FILE`` (read
from a mounted file).  Errors are one line per problem naming the setting,
never its value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from cosigner.durations import EXAMPLES, parse_duration
from cosigner.errors import SettingsError
from cosigner.redact import mask_url

PREFIX = "COSIGNER_"
#: Where the kill switch lives when the journal is not an SQLite file (DESIGN section 6).
DEFAULT_PAUSE_DIR = Path("/var/lib/cosigner")
PAUSE_NAME = "PAUSE"
#: Secrets: each has a ``*_FILE`` twin.
SECRET_FIELDS = ("api_secret", "pfx_password", "database_url", "callback_forward_secret")


def parse_delay(text: str) -> timedelta:
    """``POLICY_LOOSEN_DELAY``: ``0``, or a duration in the one grammar (``90s``, ``24h``).

    Raises:
        ValueError: anything else.
    """
    text = text.strip()
    delay = timedelta(0) if text == "0" else parse_duration(text)
    if delay is None:
        raise ValueError(f"must be 0 or a duration like {EXAMPLES}")
    return delay


def env_name(field: str) -> str:
    return PREFIX + field.upper()


class Settings(BaseSettings):
    """Every setting of the daemon and its commands.  See ``.env.example``."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore",
        hide_input_in_errors=True, validate_default=True)

    api_base_url: str | None = None
    allow_insecure_http: bool = False
    merchant_no: str | None = None
    api_key: str | None = None
    api_secret: SecretStr | None = None
    api_secret_file: Path | None = None
    lang: Literal["en", "zh"] = "en"
    sign_sort: Literal["casefold", "ascii"] = "casefold"
    pfx_path: Path | None = None
    pfx_password: SecretStr | None = None
    pfx_password_file: Path | None = None
    sign_scheme: Literal["java-rsa", "rsa-sha256"] = "java-rsa"
    ca_bundle: Path | None = None
    policy_path: Path | None = None
    database_url: SecretStr = SecretStr("sqlite:///var/lib/cosigner/journal.db")
    database_url_file: Path | None = None
    journal_witness: Path | None = None
    leader_retry: float = Field(5.0, gt=0)
    poll_interval: float = Field(120.0, gt=0)
    collect_interval: float = Field(300.0, gt=0)
    collect_is_main: str = "1,0"
    page_size: int = Field(50, ge=1, le=1000)
    max_pending: int = Field(10000, ge=1)
    concurrency: int = Field(8, ge=1, le=256)
    http_addr: str = "127.0.0.1:9464"
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    request_timeout: float = Field(10.0, gt=0)
    mode: Literal["enforce", "shadow"] = "enforce"
    pause_file: Path | None = None
    # C2C order callbacks (DESIGN section 10): off unless callback_addr is set.
    callback_addr: str | None = None
    callback_public_url: str | None = None
    callback_allow_ips: str | None = None
    callback_trusted_proxies: str | None = None
    callback_forward_url: str | None = None
    callback_forward_secret: SecretStr | None = None
    callback_forward_secret_file: Path | None = None
    # governance (DESIGN section 11)
    policy_signers: Path | None = None
    policy_quorum: int | None = Field(None, ge=1, le=100)
    policy_loosen_delay: str = "0"

    @field_validator("log_level", "log_format", "mode", "sign_sort", "sign_scheme", "lang",
                     mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("api_base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("collect_is_main")
    @classmethod
    def _is_main(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not parts or any(p not in ("0", "1") for p in parts) or len(set(parts)) != len(parts):
            raise ValueError("must be a comma-separated list of 1 and/or 0, e.g. 1,0")
        return ",".join(parts)

    @field_validator("policy_loosen_delay")
    @classmethod
    def _delay(cls, v: str) -> str:
        parse_delay(v)
        return v.strip()

    @model_validator(mode="after")
    def _signers_and_quorum(self) -> Settings:
        if (self.policy_signers is None) != (self.policy_quorum is None):
            raise ValueError(f"set both {env_name('policy_signers')} and "
                             f"{env_name('policy_quorum')}, or neither")
        return self

    @field_validator("http_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
        return v

    @field_validator("callback_addr")
    @classmethod
    def _callback_addr(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        return cls._addr(v)

    @field_validator("callback_public_url", "callback_forward_url")
    @classmethod
    def _callback_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")) or len(v) < 10:
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("callback_allow_ips", "callback_trusted_proxies")
    @classmethod
    def _networks(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        for entry in v.split(","):
            if entry.strip():
                try:
                    ipaddress.ip_network(entry.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{entry.strip()!r} is not an IP address or "
                                     "CIDR") from None
        return v

    @model_validator(mode="after")
    def _refuse_clear_text(self) -> Settings:
        url = self.api_base_url
        if url is None or not url.startswith("http://") or self.allow_insecure_http:
            return self
        if not _is_loopback(url):
            raise ValueError(
                f"{env_name('api_base_url')}: http:// to a host other than loopback would "
                f"send the signed requests and the provider's answers unencrypted and "
                f"unauthenticated; use https://, or set {env_name('allow_insecure_http')}=1 "
                f"to accept that")
        return self

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        for name in SECRET_FIELDS:
            file_path: Path | None = getattr(self, f"{name}_file")
            if file_path is None:
                continue
            if name in self.model_fields_set:
                raise ValueError(f"set either {env_name(name)} or {env_name(name)}_FILE, "
                                 f"not both")
            try:
                text = file_path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{env_name(name)}_FILE: cannot read {file_path}: "
                                 f"{exc.strerror}") from None
            if not text:
                raise ValueError(f"{env_name(name)}_FILE: {file_path} is empty")
            setattr(self, name, SecretStr(text))
        if self.callback_forward_url and self.callback_forward_secret is None:
            raise ValueError(f"{env_name('callback_forward_secret')} (or _FILE) must be set "
                             f"with {env_name('callback_forward_url')}: forwarded events are "
                             "signed with it")
        return self

    @field_serializer("api_base_url", "callback_forward_url", "callback_public_url")
    def _masked_url(self, v: str | None) -> str | None:
        # A dump (model_dump_json, a debug print) shows the URL without its userinfo.
        return mask_url(v) if v else v

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A URL's userinfo is masked wherever a URL is shown, repr(settings) included.
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) and "://" in value else value

    # -- derived values -------------------------------------------------------------

    @property
    def collect_is_main_values(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.collect_is_main.split(","))

    @property
    def loosen_delay(self) -> timedelta:
        """``POLICY_LOOSEN_DELAY`` as a duration."""
        return parse_delay(self.policy_loosen_delay)

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.http_addr.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def callback_host_port(self) -> tuple[str, int] | None:
        """``CALLBACK_ADDR`` as (host, port); None when callbacks are off."""
        if self.callback_addr is None:
            return None
        host, _, port = self.callback_addr.rpartition(":")
        return host.strip("[]"), int(port)

    def pause_path(self) -> Path:
        """``COSIGNER_PAUSE_FILE``, else ``PAUSE`` beside the SQLite journal
        (``/var/lib/cosigner/PAUSE`` for the default URL), else under ``/var/lib/cosigner``:
        every deployment that keeps a journal volume has a kill switch."""
        if self.pause_file is not None:
            return self.pause_file
        scheme, sep, rest = self.database_url.get_secret_value().partition(":")
        if sep and scheme.lower() == "sqlite" and not {"?", "#"} & set(rest):
            if rest.startswith("///"):
                path = rest[2:]
            elif rest.startswith("//"):  # sqlite://HOST/...: refused by the journal anyway
                path = ""
            else:
                path = rest
            if path and not path.endswith("/"):
                return Path(path).parent / PAUSE_NAME
        return DEFAULT_PAUSE_DIR / PAUSE_NAME

    def shard_password(self) -> str:
        """``COSIGNER_PFX_PASSWORD``, else ``"1bitpay" + COSIGNER_MERCHANT_NO``."""
        if self.pfx_password is not None:
            return self.pfx_password.get_secret_value()
        self.require("merchant_no", why="to derive the shard password")
        return "1bitpay" + (self.merchant_no or "")

    def require(self, *names: str, why: str = "") -> None:
        """Raise SettingsError naming every missing setting among ``names``."""
        missing = [env_name(n) for n in names if getattr(self, n) in (None, "")]
        if missing:
            suffix = f" {why}" if why else ""
            raise SettingsError(f"{', '.join(missing)} must be set{suffix}")


def _is_loopback(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback address."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once; raise SettingsError with one line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if loc:
            lines.append(f"{env_name(str(loc[0]))}: {msg}")
        else:
            lines.append(msg)
    return "; ".join(lines) if lines else "invalid settings"
