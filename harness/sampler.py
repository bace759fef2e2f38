"""Watch a server while an experiment runs: its /stats endpoint and its /proc entry, sampled
from a thread at a fixed interval (the measuring clients run in other processes)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from clients.base import Target
from harness import procstat


def read_stats(target: Target, timeout_s: float = 2.0) -> dict[str, Any]:
    """One GET /stats."""
    with urllib.request.urlopen(f"{target.url}/stats", timeout=timeout_s) as resp:
        return json.load(resp)


class Sampler:
    """Rows of (time, server CPU, RSS, open connections per transport, loop lag)."""

    def __init__(self, target: Target, pid: int, interval_s: float = 0.2) -> None:
        self.target, self.pid, self.interval_s = target, pid, interval_s
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> dict[str, Any]:
        stats = read_stats(self.target)
        proc = procstat.sample(self.pid)
        row = {
            "t_s": time.monotonic(),
            "cpu_s": proc.cpu_s,
            "rss_bytes": proc.rss_bytes,
            "tokens_emitted": stats["hub"]["tokens_emitted"],
            "streams_running": stats["hub"]["streams_running"],
            "listeners": stats["hub"]["listeners"],
            "loop_lag_ms": stats["loop_lag_ms"]["last_ms"],
            "loop_lag_max_ms": stats["loop_lag_ms"]["max_ms"],
            "open": {k: v["open"] for k, v in stats["transports"].items()},
        }
        self.rows.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except OSError:  # the server is busy or gone: a gap in the samples, not an error
                continue

    def wait_until(self, predicate: Any, timeout_s: float) -> dict[str, Any]:
        """Sample until `predicate(row)` holds (or the timeout passes); the last row."""
        deadline = time.monotonic() + timeout_s
        row = self.sample()
        while not predicate(row) and time.monotonic() < deadline:
            time.sleep(self.interval_s)
            row = self.sample()
        return row
