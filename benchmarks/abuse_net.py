"""What `benchmarks.abuse` watches and who it plays: a sampler of the server (its RSS, its
/stats, its sockets' send queues), the memory figures a probe records from it, and the
victim, a well-behaved client on another loopback address.

Three loopback sources stand for three machines, so the per-address shares of issue 14 apply
as they would: the attacker speaks from 127.0.0.1, the victim from 127.0.0.2, the sampler
asks /stats from 127.0.0.3 (its polling counts against neither). Linux routes all of
127.0.0.0/8 to `lo`, so a socket bound to any of them reaches the server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import statistics
import threading
import time
from typing import Any

import aiohttp

from harness import procstat
from harness.children import ServerProcess
from transports.web.config import ServerConfig

ATTACKER, VICTIM, OBSERVER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
SAMPLE_INTERVAL_S = 0.1  # RSS and the send queues; /stats every other sample
TCP_ESTABLISHED = "01"  # /proc/net/tcp `st`
CLIENT_SHARE = ServerConfig().client_share  # the default, which every probe runs with


def server_sockets(port: int) -> dict[int, int]:
    """The server's established connections on `port`: the peer's port -> bytes in the
    socket's send queue (/proc/net/tcp `tx_queue`: written by the server, not yet acked)."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if state == TCP_ESTABLISHED and int(local.split(":")[1], 16) == port:
                out[int(remote.split(":")[1], 16)] = int(queues.split(":")[0], 16)
    return out


def read_stats(port: int, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /stats from OBSERVER ({} if the server did not answer in time)."""
    conn = http.client.HTTPConnection(ATTACKER, port, timeout=timeout_s,
                                      source_address=(OBSERVER, 0))  # fmt: skip
    try:
        conn.request("GET", "/stats")
        return dict(json.loads(conn.getresponse().read()))
    except (OSError, ValueError, http.client.HTTPException):
        return {}
    finally:
        conn.close()


@dataclasses.dataclass
class Watch:
    """What a `Sampler` saw: RSS samples, /stats samples, and per attacker connection (by its
    port) the last time its send queue changed and the first time it was gone."""

    rss: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    stats: list[tuple[float, dict[str, Any]]] = dataclasses.field(default_factory=list)
    queue: dict[int, int] = dataclasses.field(default_factory=dict)  # port -> bytes queued now
    queue_peak_bytes: int = 0  # the most all watched connections had queued at once
    progress_at: dict[int, float] = dataclasses.field(default_factory=dict)
    gone_at: dict[int, float] = dataclasses.field(default_factory=dict)


class Sampler:
    """A thread sampling the server `pid` on `port` every SAMPLE_INTERVAL_S until stopped;
    `watch(ports)` adds attacker connections whose server side it follows."""

    def __init__(self, pid: int, port: int, t0: float) -> None:
        self.pid, self.port, self.t0 = pid, port, t0
        self.seen = Watch()
        self._ports: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, ports: list[int]) -> None:
        self._ports.update(ports)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            now = time.monotonic() - self.t0
            self.seen.rss.append((now, procstat.sample(self.pid).rss_bytes))
            if self._ports:
                self._queues(now)
            if tick % 2 == 0:
                stats = read_stats(self.port)
                if stats:
                    self.seen.stats.append((time.monotonic() - self.t0, stats))
            tick += 1

    def _queues(self, now: float) -> None:
        seen, live = self.seen, server_sockets(self.port)
        for port in self._ports - seen.gone_at.keys():
            if port not in live:
                seen.gone_at[port] = now
            elif live[port] != seen.queue.get(port):
                seen.queue[port], seen.progress_at[port] = live[port], now
        seen.queue_peak_bytes = max(seen.queue_peak_bytes,
                                    sum(live.get(p, 0) for p in self._ports))  # fmt: skip

    def peak(self, *path: str) -> float:
        """The highest /stats figure at `path` (e.g. "hub", "held_bytes") over the samples."""
        values = [_dig(stats, path) for _, stats in self.seen.stats]
        return max((v for v in values if v is not None), default=float("nan"))


def _hwm_bytes(pid: int) -> int:
    """The process's peak RSS so far (/proc/PID/status VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


async def settled_rss(pid: int, settle_s: float) -> int:
    """The RSS of `pid` after `settle_s` of letting it settle."""
    await asyncio.sleep(settle_s)
    return procstat.sample(pid).rss_bytes


async def memory_figures(
    proc: ServerProcess, sampler: Sampler, before: int, settle_s: float
) -> dict[str, Any]:
    """RSS before / peak / after (`settle_s` on) and the last /stats figures."""
    after = await settled_rss(proc.pid, settle_s)
    sampled = max((rss for _, rss in sampler.seen.rss), default=0)
    stats = summarize_stats(await asyncio.to_thread(read_stats, proc.target.port))
    held, budget = sampler.peak("hub", "held_bytes"), stats["budget_bytes"]
    return {"rss_before_bytes": before, "rss_peak_bytes": max(sampled, _hwm_bytes(proc.pid)),
            "rss_after_bytes": after, "held_bytes_peak": held,
            "held_peak_over_budget": held / budget if budget else float("nan"),
            "held_peak_over_client_share": held / (budget * CLIENT_SHARE) if budget else
            float("nan"), **stats}  # fmt: skip


def _dig(stats: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = stats
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def summarize_stats(stats: dict[str, Any]) -> dict[str, float]:
    """The /stats figures a probe records (one sample: usually the last)."""
    hub, conns = stats.get("hub", {}), stats.get("connections", {})
    timeouts = sum(t.get("write_timeouts", 0) for t in stats.get("transports", {}).values())
    return {
        "held_bytes": hub.get("held_bytes", float("nan")),
        "budget_bytes": hub.get("budget_bytes", float("nan")),
        "evicted": hub.get("evicted", float("nan")),
        "budget_cancelled": hub.get("budget_cancelled", float("nan")),
        "quota_cancelled": hub.get("quota_cancelled", float("nan")),
        "streams_created": hub.get("streams_created", float("nan")),
        "connections_open": conns.get("open", float("nan")),
        "connections_peak": conns.get("peak", float("nan")),
        "refused_global": conns.get("refused_global", float("nan")),
        "refused_client": conns.get("refused_client", float("nan")),
        "header_timeouts": conns.get("header_timeouts", float("nan")),
        "write_timeouts": timeouts,
    }


async def victim(port: int, n: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """`n` short SSE streams at once from VICTIM: how many were served whole, refused (a
    status other than 200, or no connection), and how soon each first token came."""
    connector = aiohttp.TCPConnector(local_addr=(VICTIM, 0), force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = f"http://{ATTACKER}:{port}/sse?tokens=5&rate=1000&ttft_ms=0"
        results = await asyncio.gather(*(_one_victim(session, url) for _ in range(n)))
    first_ms = [ms for _, ms in results if ms == ms]
    codes = [code for code, _ in results]
    return {
        "victim_requests": n,
        "victim_served": codes.count(200),
        "victim_refused": n - codes.count(200),
        "victim_statuses": {str(c): codes.count(c) for c in sorted(set(codes))},
        "victim_first_token_ms_median": statistics.median(first_ms) if first_ms else float("nan"),
        "victim_first_token_ms_max": max(first_ms, default=float("nan")),
    }


async def _one_victim(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    """(status, ms from the request to its first token) of one stream; status 0: no
    answer, and a 200 whose stream did not end with every token counts as 0 too."""
    t0, first_ms, tokens = time.perf_counter(), float("nan"), 0
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return resp.status, first_ms
            async for line in resp.content:
                if line.startswith(b"data: {") and b'"text":' in line:  # a token, not the end
                    if tokens == 0:
                        first_ms = (time.perf_counter() - t0) * 1e3
                    tokens += 1
    except (aiohttp.ClientError, TimeoutError):
        return 0, first_ms
    return (200 if tokens >= 5 else 0), first_ms
