"""Where the posts stall: a timeline of one ``cosigner bench`` run; never a pass/fail test.

    python -m tests.bench.stalls [--items 10000] [--runs 1] [--gap-ms 2]

Runs the benchmark (the daemon's cycle, then its ceiling) and notes when each post is
answered.  For both loops it prints the posting span (first to last answer) and the
time spent in *stalls*: gaps between two consecutive answers longer than ``--gap-ms``
(at 1,500 posts/s the mean gap is ~0.7 ms, so a long gap is time in which the
provider answered nothing, most often because the poster could not send).  For the
daemon's cycle it also lists the event loop's steps that ran longer than 1 ms, each
named by where its task resumed and where it suspended next (``decide`` slices, a
worker's step around a post, a callback), with their count and total time: what
holds the loop, and so the posts, up.

The harness wraps ``asyncio.events.Handle._run`` and the bench's listener; that adds
~1-2 µs per callback, so its rates are a little lower than ``cosigner bench``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import collections
import itertools
import time
from collections.abc import Coroutine
from typing import Any

from cosigner.daemon.pipeline import DecisionEvent, Pipeline
from cosigner.tools import bench as bench_module

_daemon_posts: list[float] = []
_ceiling_posts: list[float] = []
_slow_count: collections.Counter[str] = collections.Counter()
_slow_seconds: collections.Counter[str] = collections.Counter()
_in_cycle = False


def _where(task: asyncio.Task[Any]) -> str:
    """The innermost coroutine of ``task`` and its line: where it waits now."""
    coro: Any = task.get_coro()
    where = "done"
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        where = f"{coro.__qualname__}:{coro.cr_frame.f_lineno}"
        coro = coro.cr_await
    return where


def _install() -> None:
    run = asyncio.events.Handle._run

    def timed_run(handle: asyncio.events.Handle) -> None:
        if not _in_cycle:
            run(handle)
            return
        callback = getattr(handle, "_callback", None)
        task = getattr(callback, "__self__", None)
        before = _where(task) if isinstance(task, asyncio.Task) else None
        started = time.perf_counter()
        run(handle)
        took = time.perf_counter() - started
        if took > 0.001:
            if isinstance(task, asyncio.Task) and before is not None:
                name = f"{before} -> {_where(task)}"
            else:
                name = getattr(callback, "__qualname__", repr(callback))
            _slow_count[name] += 1
            _slow_seconds[name] += took

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]

    latency_call = bench_module._Latency.__call__

    def noted(self: Any, event: DecisionEvent) -> None:
        if event.state in ("posted", "failed", "unknown"):
            _daemon_posts.append(time.perf_counter())
        latency_call(self, event)

    bench_module._Latency.__call__ = noted  # type: ignore[method-assign]

    wire_post = bench_module._Wire.post

    async def noted_post(self: Any, path: bytes, fields: dict[str, Any],
                         public: dict[str, str]) -> bytes:
        answer = await wire_post(self, path, fields, public)
        if path.endswith(b"/approve"):
            _ceiling_posts.append(time.perf_counter())
        return answer

    bench_module._Wire.post = noted_post  # type: ignore[method-assign]

    poll = Pipeline.poll

    def timed_poll(self: Any) -> Coroutine[Any, Any, Any]:
        async def cycle() -> Any:
            global _in_cycle
            _in_cycle = True
            try:
                return await poll(self)
            finally:
                _in_cycle = False
        return cycle()

    Pipeline.poll = timed_poll  # type: ignore[method-assign]


def _stalls(name: str, times: list[float], gap: float) -> str:
    ordered = sorted(times)
    if len(ordered) < 2:
        return f"{name}: fewer than two posts"
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    span = ordered[-1] - ordered[0]
    long = [g for g in gaps if g > gap]
    over5 = [g for g in gaps if g > 0.005]
    return (f"{name}: {len(ordered):,} posts over {1000 * span:,.0f} ms; "
            f"gaps > {1000 * gap:g} ms: {len(long)}, {1000 * sum(long):,.0f} ms "
            f"({100 * sum(long) / span:.0f} % of the span); gaps > 5 ms: {len(over5)}, "
            f"{1000 * sum(over5):,.0f} ms; longest {1000 * max(gaps):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args()
    _install()
    for run in range(args.runs):
        _daemon_posts.clear()
        _ceiling_posts.clear()
        _slow_count.clear()
        _slow_seconds.clear()
        result = asyncio.run(bench_module.bench(args.items))
        print(f"run {run + 1}: {result.items_per_second:,.0f} items/s, ceiling "
              f"{result.ceiling_items_per_second or 0:,.0f}, ratio {result.ratio}")
        print("  " + _stalls("daemon ", _daemon_posts, args.gap_ms / 1000))
        print("  " + _stalls("ceiling", _ceiling_posts, args.gap_ms / 1000))
        print("  the daemon's loop steps over 1 ms (resumed at -> suspended at):")
        for name, seconds in _slow_seconds.most_common(8):
            print(f"    {1000 * seconds:7.1f} ms {_slow_count[name]:5d}x  {name}")


if __name__ == "__main__":
    main()
