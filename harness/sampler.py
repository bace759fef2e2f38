"""Watch a server while something measures it: its /proc entry, the machine's busy time and,
for pushlab's server, its /stats endpoint, sampled from a thread at a fixed interval (the
measuring clients run in other processes)."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from clients.base import Target
from harness import procstat


def read_stats(target: Target, timeout_s: float = 2.0) -> dict[str, Any]:
    """One GET /stats, straight to the server (never through an environment's proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{target.url}/stats", timeout=timeout_s) as resp:
        result: dict[str, Any] = json.load(resp)
    return result


def stats_digest(stats: dict[str, Any]) -> dict[str, Any]:
    """What a sample keeps of pushlab's /stats: hub counters, loop lag, open connections."""
    return {
        "tokens_emitted": stats["hub"]["tokens_emitted"],
        "streams_running": stats["hub"]["streams_running"],
        "listeners": stats["hub"]["listeners"],
        "loop_lag_ms": stats["loop_lag_ms"]["last_ms"],
        "loop_lag_max_ms": stats["loop_lag_ms"]["max_ms"],
        "open": {k: v["open"] for k, v in stats["transports"].items()},
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    t_ns: int  # time.time_ns(), comparable with the tokens' t_emit_ns
    cpu_s: float  # the server's user + system CPU so far
    rss_bytes: int
    busy_s: float  # the machine's busy CPU so far (all cores)
    stats: dict[str, Any]  # `stats_digest` of the server's /stats; {} without a target

    def row(self) -> dict[str, Any]:
        """The sample as one flat dict (the /stats digest's keys beside the /proc ones)."""
        return {
            "t_ns": self.t_ns,
            "cpu_s": self.cpu_s,
            "rss_bytes": self.rss_bytes,
            "busy_s": self.busy_s,
            **self.stats,
        }


def take(pid: int, target: Target | None = None) -> Sample:
    """One sample of `pid` (and of `target`'s /stats if given); OSError if either is gone."""
    stats = stats_digest(read_stats(target)) if target is not None else {}
    proc = procstat.sample(pid)
    return Sample(time.time_ns(), proc.cpu_s, proc.rss_bytes, procstat.system_busy_s(), stats)


class Sampler:
    """Samples `pid` (and `target`'s /stats, unless None) every `interval_s` from a thread,
    between `with` entry and exit, and once at each of them."""

    def __init__(self, target: Target | None, pid: int, interval_s: float = 0.2) -> None:
        self.target, self.pid, self.interval_s = target, pid, interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):  # the server died during the run: the rows say when
            self.sample()

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [s.row() for s in self.samples]

    def sample(self) -> dict[str, Any]:
        """Take one sample now, keep it, and return it as a row."""
        taken = take(self.pid, self.target)
        self.samples.append(taken)
        return taken.row()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except OSError:  # the server is busy or gone: a gap in the samples, not an error
                continue

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any]:
        """Sample until `predicate(row)` holds (or the timeout passes); the last row."""
        deadline = time.monotonic() + timeout_s
        row = self.sample()
        while not predicate(row) and time.monotonic() < deadline:
            time.sleep(self.interval_s)
            row = self.sample()
        return row

    def window(self, start_ns: int, end_ns: int) -> tuple[Sample, Sample] | None:
        """The first sample at or after `start_ns` and the last at or before `end_ns`."""
        samples = sorted(self.samples, key=lambda s: s.t_ns)  # wait_until samples from elsewhere
        times = [s.t_ns for s in samples]
        i, j = bisect.bisect_left(times, start_ns), bisect.bisect_right(times, end_ns) - 1
        if i >= j:
            return None
        return samples[i], samples[j]
