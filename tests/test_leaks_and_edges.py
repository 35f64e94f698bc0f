"""Issue 10, defect 8 ("leaks and loose edges"): one regression test class per edge.

* the provider's error messages are stored masked in the journal and the audit export;
* a URL's userinfo is masked where a URL is shown (``repr(settings)``, the client);
* ``http://`` to a non-loopback host is refused unless ``COSIGNER_ALLOW_INSECURE_HTTP=1``;
* a TLS verification failure is named as a certificate problem;
* a policy list ``file:`` stays inside the policy's directory tree, and its content is
  never echoed in an error;
* ``cosigner audit list | head`` ends quietly, without a ``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cosigner.api.client import ApiClient
from cosigner.cli import main
from cosigner.errors import ApiConnectError, ApiResponseError, PolicyError, SettingsError
from cosigner.policy import load_policy
from cosigner.redact import MASK, mask_text, mask_url, register_secret
from cosigner.settings import load_settings
from cosigner.store import NewOutcome, SqliteJournal
from cosigner.store.audit import write_csv, write_jsonl
from tests.api.scripted import ScriptedServer, fail
from tests.store.conftest import decision

SECRET = "canary-api-secret-7Hq2"
DATA = base64.b64encode(bytes(range(256))).decode()  # a `data` signature's shape
COSIGNER = Path(sys.executable).with_name("cosigner")


def hostile_message() -> str:
    """What a provider answering 4013 might echo: the whole signing string and the data."""
    signing = (f"ApiKey=ak-1&chainId=56&data={DATA}&from=0xabc&id=7&Lang=en&"
               f"MerchantNo=M1&Nonce=ab12cd34&SignType=1&status=1&TimeStamp=1700000000000&"
               f"to=0xdef&value=4.10{SECRET}")
    return f"sign mismatch, expected md5({signing}) = 0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def api_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.start()
    yield server
    server.stop()


class TestProviderMessagesAreMasked:
    def test_mask_text_hides_signature_digest_and_secret_pairs(self) -> None:
        """Base64 runs, hex digests, ``secret=...`` pairs and PEM blocks are masked."""
        kind = " ".join(("PRIVATE", "KEY"))  # a PEM-shaped canary, built: no key in the tree
        text = (f"data={DATA} md5 0123456789abcdef0123456789abcdef secret=hunter2-xyz "
                f"-----BEGIN {kind}-----\nMIIEvQ\n-----END {kind}----- "
                "to 0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8")
        masked = mask_text(text)
        for leak in (DATA[:30], "0123456789abcdef0123", "hunter2-xyz", "MIIEvQ"):
            assert leak not in masked
        assert "0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8" in masked  # addresses stay

    def test_an_outcome_is_stored_masked(self, tmp_path: Path) -> None:
        """A NewOutcome's message is masked before it reaches the journal and the exports."""
        register_secret(SECRET)  # as the daemon does at start
        journal = SqliteJournal(tmp_path / "j.db", writer=True)
        journal.init()
        journal.open()
        try:
            journal.record_decisions([decision(7)])
            journal.record_outcomes([NewOutcome(1, 7, "failed", 4013,
                                                f"{hostile_message()} {SECRET}")])
            records = list(journal.records())
        finally:
            journal.close()
        jsonl, csv_out = io.StringIO(), io.StringIO()
        write_jsonl(records, jsonl)
        write_csv(records, csv_out)
        for text in (records[0].outcome_message or "", jsonl.getvalue(), csv_out.getvalue()):
            assert DATA[:30] not in text
            assert SECRET not in text

    async def test_the_client_masks_what_the_provider_echoes(
            self, api_server: ScriptedServer) -> None:
        """The API error (and so logs, journal and export) never carries the echoed secret."""
        api_server.script("/api/transaction/approve", fail(4013, hostile_message()))
        async with ApiClient(api_server.url, "M1", "ak-1", SECRET) as client:
            with pytest.raises(ApiResponseError) as caught:
                await client.approve({"id": 7}, DATA)
        text = f"{caught.value} {caught.value.api_message}"
        assert SECRET not in text
        assert DATA[:30] not in text
        assert MASK in text


class TestUrlUserinfo:
    def test_mask_url(self) -> None:
        assert mask_url("https://user:pw-canary@api.example/x") == \
            f"https://{MASK}@api.example/x"
        assert mask_url("https://api.example/x") == "https://api.example/x"

    def test_repr_of_settings_and_client(self) -> None:
        """Neither ``repr(settings)`` nor the client's repr shows the userinfo."""
        url = "https://ops:pw-canary-91@api.example"
        settings = load_settings(api_base_url=url)
        client = ApiClient(url, "M1", "ak", "sec-123456")
        assert "pw-canary-91" not in repr(settings)
        assert "pw-canary-91" not in settings.model_dump_json()
        assert "pw-canary-91" not in repr(client)


class TestInsecureHttp:
    @pytest.mark.parametrize("url", ["http://api.example", "http://10.0.0.7:8080",
                                     "http://user:pw@192.168.1.1"])
    def test_refused_for_a_remote_host(self, cosigner_env: Callable[..., None],
                                       url: str) -> None:
        """``http://`` to a non-loopback host is a settings error naming both settings."""
        with pytest.raises(SettingsError) as caught:
            load_settings(api_base_url=url)
        message = str(caught.value)
        assert "COSIGNER_API_BASE_URL" in message
        assert "COSIGNER_ALLOW_INSECURE_HTTP=1" in message
        assert "pw" not in message.replace("http", "")

    @pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost",
                                     "http://[::1]:9", "https://api.example"])
    def test_loopback_and_https_are_accepted(self, cosigner_env: Callable[..., None],
                                             url: str) -> None:
        assert load_settings(api_base_url=url).api_base_url == url

    def test_allowed_on_purpose(self, cosigner_env: Callable[..., None]) -> None:
        cosigner_env(API_BASE_URL="http://10.0.0.7", ALLOW_INSECURE_HTTP="1")
        assert load_settings().api_base_url == "http://10.0.0.7"

    def test_run_exits_2(self, cosigner_env: Callable[..., None],
                         capsys: pytest.CaptureFixture[str]) -> None:
        cosigner_env(API_BASE_URL="http://10.0.0.7")
        assert main(["run", "--once"]) == 2
        assert "COSIGNER_ALLOW_INSECURE_HTTP" in capsys.readouterr().err


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
async def tls_url(tmp_path: Path) -> AsyncIterator[str]:
    """An HTTPS listener on 127.0.0.1 with a self-signed certificate nobody trusts."""
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


class TestTlsFailureIsNamed:
    async def test_untrusted_certificate(self, tls_url: str) -> None:
        """A verification failure says "certificate", not just ``ConnectError``."""
        async with ApiClient(tls_url, "M1", "ak", "secret-1234", retries=1) as client:
            with pytest.raises(ApiConnectError) as caught:
                await client.pending()
        message = str(caught.value)
        assert "TLS certificate verification failed" in message
        assert "self-signed" in message or "certificate" in message.split(":", 2)[-1]


class TestPolicyListFiles:
    POLICY = """\
version: 1
name: lists
chains:
  "56": {{name: bsc, address: evm, decimals: 18}}
lists:
  outside: {{file: {target}}}
rules:
  - name: r
    to: {{in: [outside]}}
    action: reject
"""

    def _policy(self, tmp_path: Path, target: str) -> Path:
        folder = tmp_path / "policy"
        folder.mkdir(exist_ok=True)
        path = folder / "p.yaml"
        path.write_text(self.POLICY.format(target=target), encoding="utf-8")
        return path

    @pytest.fixture
    def secret_file(self, tmp_path: Path) -> Path:
        path = tmp_path / "secret.txt"
        path.write_text("canary-list-content-QX7\n", encoding="utf-8")
        return path

    @pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
    def test_a_file_outside_the_tree_is_refused(self, tmp_path: Path, secret_file: Path,
                                                how: str) -> None:
        """Absolute paths, ``..`` and symlinks out of the policy's directory are refused,
        and the file's content is never in the error."""
        folder = tmp_path / "policy"
        folder.mkdir()
        target = {"absolute": str(secret_file), "dotdot": "../secret.txt",
                  "symlink": "link.txt"}[how]
        if how == "symlink":
            (folder / "link.txt").symlink_to(secret_file)
        with pytest.raises(PolicyError) as caught:
            load_policy(self._policy(tmp_path, target))
        assert "canary-list-content-QX7" not in str(caught.value)
        assert "outside the policy's directory" in str(caught.value) or \
            "relative path inside" in str(caught.value)

    def test_bad_entries_are_not_echoed(self, tmp_path: Path) -> None:
        """An entry that is no address is reported by file:line only."""
        policy = self._policy(tmp_path, "lists/l.txt")
        (policy.parent / "lists").mkdir()
        (policy.parent / "lists" / "l.txt").write_text("canary-list-content-QX7\n")
        with pytest.raises(PolicyError) as caught:
            load_policy(policy)
        assert "l.txt:1" in str(caught.value)
        assert "canary-list-content-QX7" not in str(caught.value)

    def test_kubernetes_configmap_layout_loads(self, tmp_path: Path) -> None:
        """``..data`` -> a timestamped directory inside the mount: still inside the tree."""
        mount = tmp_path / "policy"
        real = mount / "..2026_01_01_00_00_00.000000001"
        (real / "lists").mkdir(parents=True)
        (real / "lists" / "l.txt").write_text("0x5dC69B1Fbb13Bafd09af88a782F0F285772Ad5f8\n")
        (real / "p.yaml").write_text(self.POLICY.format(target="lists/l.txt"))
        (mount / "..data").symlink_to(real.name)
        (mount / "p.yaml").symlink_to("..data/p.yaml")
        (mount / "lists").symlink_to("..data/lists")
        assert load_policy(mount / "p.yaml").name == "lists"


class TestAuditListIntoAClosedPipe:
    def test_no_traceback(self, tmp_path: Path) -> None:
        """``cosigner audit list | head`` with the reader gone: exit 0, nothing on stderr."""
        db = tmp_path / "j.db"
        journal = SqliteJournal(db, writer=True)
        journal.init()
        journal.open()
        journal.record_decisions([decision(i) for i in range(1, 50)])
        journal.close()
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first line
        try:
            done = subprocess.run([str(COSIGNER), "audit", "list", "--database-url",
                                   f"sqlite://{db}"], stdout=write_end,
                                  stderr=subprocess.PIPE, text=True, timeout=60, check=False)
        finally:
            os.close(write_end)
        assert "Traceback" not in done.stderr
        assert "BrokenPipeError" not in done.stderr
        assert done.returncode == 0
