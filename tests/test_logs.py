"""structlog configuration and the redact_secrets processor."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from cosigner.logs import REDACTED, SecretRedactor, configure_logging, get_logger

redact_secrets = SecretRedactor()  # no secret values: only secret-named keys


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A StringIO the real processor chain writes to; structlog is reset afterwards."""
    out = io.StringIO()
    yield out
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestRedactSecrets:
    """The processor masks secret-named keys and registered secret values."""

    @pytest.mark.parametrize("key", ["password", "pfx_password", "api_secret", "API_SECRET",
                                     "client_secret", "token", "authorization", "Sign", "data",
                                     "database_url", "dsn", "private_key", "passwd"])
    def test_secret_named_keys_are_masked(self, key: str) -> None:
        """Values under secret-looking keys are replaced whatever they are."""
        event = redact_secrets(None, "info", {"event": "x", key: "plain-value"})
        assert event[key] == REDACTED
        assert event["event"] == "x"

    @pytest.mark.parametrize("key", ["item_id", "rule", "action", "chain", "metadata", "signer"])
    def test_ordinary_keys_are_kept(self, key: str) -> None:
        """Ordinary fields pass through unchanged."""
        assert redact_secrets(None, "info", {key: "value-1"})[key] == "value-1"

    def test_nested_structures_are_scrubbed(self) -> None:
        """Secret keys inside nested dicts and lists are masked too."""
        event = redact_secrets(None, "info", {
            "request": {"headers": {"Sign": "abc", "ApiKey": "k"}, "body": [{"password": "p"}]}})
        assert event["request"]["headers"] == {"Sign": REDACTED, "ApiKey": "k"}
        assert event["request"]["body"] == [{"password": REDACTED}]

    def test_registered_values_are_masked_anywhere(self) -> None:
        """A registered secret is masked inside any string, including the event name."""
        redact = SecretRedactor(["reg-S3cret-0001"])
        event = redact(None, "info", {
            "event": "failed with reg-S3cret-0001", "note": ["x reg-S3cret-0001 y"],
            "error": ValueError("bad reg-S3cret-0001")})
        text = json.dumps(event)
        assert "reg-S3cret-0001" not in text
        assert event["error"] == f"ValueError: bad {REDACTED}"

    def test_a_secret_registered_later_is_masked_in_text_seen_before(self) -> None:
        """mask_text keeps short answers it masked; registering a secret forgets them."""
        from cosigner.redact import mask_text, register_secret
        assert mask_text("late s3cr-x1") == "late s3cr-x1"
        register_secret("s3cr-x1")
        assert mask_text("late s3cr-x1") == f"late {REDACTED}"

    def test_a_url_password_it_was_not_given_is_masked(self) -> None:
        redact = SecretRedactor([])
        event = redact(None, "info", {"event": "forward to https://u:unknown-pw@hook.example/x"})
        assert "unknown-pw" not in event["event"]

    def test_short_values_are_not_registered(self) -> None:
        """Values under 4 characters are ignored, so "en" or "1" never get masked."""
        redact = SecretRedactor(["abc", None, ""])
        assert redact(None, "info", {"event": "abc"})["event"] == "abc"

    def test_url_password_is_registered_on_its_own(self) -> None:
        """The password inside a database URL is masked even when quoted without the URL."""
        redact = SecretRedactor(["postgresql://cosigner:url-S3cret%21pw@db/journal"])
        event = redact(None, "info", {
            "event": "auth failed for url-S3cret!pw", "raw": "url-S3cret%21pw",
            "whole": "postgresql://cosigner:url-S3cret%21pw@db/journal"})
        assert "S3cret" not in json.dumps(event)

    def test_overlapping_secrets_mask_the_longest(self) -> None:
        """A secret containing another is masked as one piece."""
        redact = SecretRedactor(["ovl-S3cret", "ovl-S3cret-and-more"])
        event = redact(None, "info", {"event": "x ovl-S3cret-and-more y"})
        assert event["event"] == f"x {REDACTED} y"

    def test_each_configuration_has_its_own_secrets(self) -> None:
        """Secrets are the instance's, not a module global: another redactor does not
        know them, and the repr never shows them."""
        SecretRedactor(["inst-S3cret-0001"])
        assert redact_secrets(None, "info", {"e": "inst-S3cret-0001"})["e"] == "inst-S3cret-0001"
        assert "inst-S3cret" not in repr(SecretRedactor(["inst-S3cret-0001"]))

    def test_other_values_pass_through(self) -> None:
        """Numbers, None and booleans are untouched."""
        event = redact_secrets(None, "info", {"n": 5, "none": None, "flag": True})
        assert event == {"n": 5, "none": None, "flag": True}


class TestConfigureLogging:
    """configure_logging writes one redacted JSON object per line."""

    def test_json_lines(self, stream: io.StringIO) -> None:
        """Each event is one JSON object with event, level and an ISO UTC timestamp."""
        configure_logging("json", "info", stream=stream)
        get_logger().info("poll.done", items=3)
        get_logger().warning("item.decided", item_id=7, rule="r", action="hold")
        first, second = _lines(stream)
        assert first["event"] == "poll.done"
        assert first["items"] == 3
        assert first["level"] == "info"
        assert first["timestamp"].endswith("Z")
        assert (second["item_id"], second["action"], second["level"]) == (7, "hold", "warning")

    def test_level_filters(self, stream: io.StringIO) -> None:
        """Events below the configured level are dropped."""
        configure_logging("json", "warning", stream=stream)
        get_logger().info("quiet")
        get_logger().error("loud")
        assert [e["event"] for e in _lines(stream)] == ["loud"]

    def test_console_format(self, stream: io.StringIO) -> None:
        """The console renderer writes readable text without colour codes."""
        configure_logging("console", "info", stream=stream)
        get_logger().info("collect.done", is_main=1)
        text = stream.getvalue()
        assert "collect.done" in text
        assert "is_main=1" in text
        assert "\x1b[" not in text

    def test_secrets_never_reach_the_output(self, stream: io.StringIO) -> None:
        """Configured secrets vanish from fields, messages and rendered tracebacks."""
        secret = "cfg-S3cret-0002"
        configure_logging("json", "debug", stream=stream, secrets=[secret, None])
        log = get_logger()
        log.info(f"event mentions {secret}", detail={"nested": f"..{secret}.."},
                 api_secret=secret, password="other-pw")
        try:
            raise RuntimeError(f"connection string had {secret}")
        except RuntimeError:
            log.exception("store.failed")
        output = stream.getvalue()
        assert secret not in output
        assert "other-pw" not in output
        events = _lines(stream)
        assert events[0]["api_secret"] == REDACTED
        assert "RuntimeError" in events[1]["exception"]
        assert REDACTED in events[1]["exception"]

    def test_contextvars_are_merged_and_redacted(self, stream: io.StringIO) -> None:
        """Bound context variables appear in events and are redacted like fields."""
        configure_logging("json", "info", stream=stream)
        structlog.contextvars.bind_contextvars(cycle=4, token="tok-value")
        try:
            get_logger().info("cycle.start")
        finally:
            structlog.contextvars.clear_contextvars()
        (event,) = _lines(stream)
        assert event["cycle"] == 4
        assert event["token"] == REDACTED

    def test_events_can_be_captured(self) -> None:
        """capture_logs sees the event name and fields (how other tests assert logs)."""
        with capture_logs() as logs:
            get_logger().info("item.posted", item_id=1, action="approve")
        assert logs == [{"event": "item.posted", "item_id": 1, "action": "approve",
                         "log_level": "info"}]
