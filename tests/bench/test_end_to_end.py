"""End-to-end throughput: the daemon's poll cycle against a sandbox process.

A benchmark, not a timed test: it asserts only that every item was decided,
journaled, signed, posted and verified.  ``make bench`` / ``cosigner bench
--items 10000`` measures the figure the 30 s target is about; run this file
with ``--benchmark-enable`` to time it under pytest-benchmark.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cosigner.tools.bench import BenchResult, bench, run_bench


class TestEndToEndBench:
    @pytest.mark.slow
    def test_backlog_is_decided_and_posted(self, benchmark: Any, cosigner_env: Any) -> None:
        """Every generated item is decided; every approve/reject reaches the sandbox verified."""
        result: BenchResult = benchmark.pedantic(lambda: asyncio.run(bench(600)), rounds=1,
                                                 iterations=1)
        assert result.ok
        assert result.approved + result.rejected + result.held == 600
        assert result.posted == result.approved + result.rejected
        assert result.verified_by_sandbox == result.received_by_sandbox == result.posted
        benchmark.extra_info["items_per_second"] = result.items_per_second

    def test_command_prints_its_figures(self, cosigner_env: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """``cosigner bench --items N`` exits 0 and reports throughput and CPU."""
        assert run_bench(items=50) == 0
        out = capsys.readouterr().out
        assert "50 pending items decided and posted in" in out
        assert "with a valid signature" in out
        assert "CPU during the cycle" in out
