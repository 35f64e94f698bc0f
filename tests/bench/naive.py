"""A naive sequential co-signer written from the API doc, for comparison (docs/performance.md).

    python -m tests.bench.naive [--items 2000]

What a first script would do: a synchronous ``httpx.Client``, read the pending
pages, then for each item sign the approve and post it, one after the other.
No policy and no journal, so it does strictly less than the daemon; it shows
what concurrency, pipelining and a lean transport are worth.  A measurement,
never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cosigner.api.auth import SignAuth, encode_body
from cosigner.signing import load_shard
from cosigner.signing.objects import approval_fields, approval_sign_object
from cosigner.signing.throwaway import make_throwaway_shard
from tests.bench.measure import _port, _process, _wait

MERCHANT_NO = "M-NAIVE-0001"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.naive")
    parser.add_argument("--items", type=int, default=2000)
    items = parser.parse_args().items
    with tempfile.TemporaryDirectory(prefix="cosigner-naive-") as tmp:
        work = Path(tmp)
        password = "1bitpay" + MERCHANT_NO
        secret = secrets.token_urlsafe(24)
        make_throwaway_shard(work / "shard.pfx", password, common_name="naive shard")
        port = _port()
        env = {**os.environ, "COSIGNER_MERCHANT_NO": MERCHANT_NO, "COSIGNER_API_KEY": "ak-n",
               "COSIGNER_API_SECRET": secret, "COSIGNER_PFX_PATH": str(work / "shard.pfx"),
               "COSIGNER_PFX_PASSWORD": password, "COSIGNER_LOG_LEVEL": "warning"}
        url = f"http://127.0.0.1:{port}"
        with _process([sys.executable, "-m", "cosigner", "sandbox", "--port", str(port),
                       "--seed-items", str(items), "--seed", "42"], env, work):
            _wait(f"{url}/sandbox/health", time.perf_counter() + 120)
            shard = load_shard(work / "shard.pfx", password)
            auth = SignAuth(MERCHANT_NO, "ak-n", secret)
            started = time.perf_counter()
            posted = 0
            with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
                pending: list[dict[str, object]] = []
                page = 1
                while True:
                    data = http.post("/api/transaction/pending", content=encode_body(
                        {"pageNum": page, "pageSize": 50})).json()["data"]
                    pending += data["list"]
                    if not data["list"] or len(pending) >= data["total"]:
                        break
                    page += 1
                for item in pending:
                    args = (item["id"], item["fromAddress"], item["toAddress"],
                            str(item["amount"]), item["chainId"], 1)
                    fields = approval_fields(*args)  # type: ignore[arg-type]
                    fields["data"] = shard.sign(approval_sign_object(*args))  # type: ignore[arg-type]
                    answer = http.post("/api/transaction/approve", content=encode_body(fields))
                    posted += answer.json()["code"] == 200
            seconds = time.perf_counter() - started
    print(json.dumps({"items": items, "posted": posted, "seconds": round(seconds, 2),
                      "items_per_second": round(items / seconds, 1),
                      "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
