"""A light load generator: N streams read by minimal readers in worker processes.

pushlab's Python clients (`clients.fleet`) parse every token fully (h11, the SSE parser,
JSON) and cost 66-89 us of CPU per token (measured at 300 streams x 20 tokens/s against both
servers): at 20,000 to 50,000 tokens/s they would need more cores than this 2-core machine
has, and the numbers would describe the load generator. These readers only find each
token's `"seq":N,"t_emit_ns":T,` in the bytes with one regular expression per socket read
and stamp the read's `time.time_ns()`, as pushlab's clients do, so the server stays the
bottleneck. Delivery is checked per stream (every seq 1..N once); latency is receive time
minus emit time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import re
import resource
import time
from array import array
from typing import cast

from benchmarks import sink
from clients.base import Target
from clients.fleet import raise_fd_limit

TOKEN_RE = re.compile(rb'"seq":(\d+),"t_emit_ns":(\d+),')  # the comma: the number is whole
END_MARK = {"sse": b"data: [DONE]", "websocket": b'"type":"done"'}


@dataclasses.dataclass
class LightRecord:
    """One stream as the light reader saw it; the array fields match `StreamRecord`'s."""

    tokens_expected: int
    seq: array = dataclasses.field(default_factory=lambda: array("q"))
    t_emit_ns: array = dataclasses.field(default_factory=lambda: array("q"))
    t_recv_ns: array = dataclasses.field(default_factory=lambda: array("q"))
    connection: array = dataclasses.field(default_factory=lambda: array("q"))
    t_start_ns: int = 0  # time.time_ns() when it started connecting (the schedule's origin)
    t_start_perf_ns: int = 0  # connecting
    t_connected_perf_ns: int = 0  # the TCP connection is up, the request goes out
    t_head_perf_ns: int = 0  # the response head arrived
    t_end_perf_ns: int = 0
    bytes_down: int = 0
    error: str = ""


@dataclasses.dataclass(frozen=True)
class LightWorkerStats:
    worker: int
    clients: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class _TokenReader(asyncio.Protocol):
    def __init__(self, rec: LightRecord, transport: str, start: bytes) -> None:
        self.rec, self.end_mark, self.start = rec, END_MARK[transport], start
        self.carry = b""
        self.answered = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        t_ns, rec = time.time_ns(), self.rec
        rec.bytes_down += len(data)
        data = self.carry + data
        if not self.answered and b"\r\n\r\n" in data:
            self.answered = True
            rec.t_head_perf_ns = time.perf_counter_ns()
            if data[9:12] not in (b"200", b"101"):
                rec.error = data.split(b"\r\n", 1)[0].decode("latin-1")
                self.transport.close()
            elif self.start:
                self.transport.write(self.start)
        end = 0
        for match in TOKEN_RE.finditer(data):
            rec.seq.append(int(match[1]))
            rec.t_emit_ns.append(int(match[2]))
            rec.t_recv_ns.append(t_ns)
            end = match.end()
        self.carry = data[max(end, len(data) - 256) :]
        if self.end_mark in data and not self.ended.done():
            rec.t_end_perf_ns = time.perf_counter_ns()
            self.ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            if not self.rec.t_end_perf_ns:
                self.rec.error = self.rec.error or f"connection closed early ({exc})"
            self.ended.set_result(None)


async def read_stream(
    target: Target, transport: str, params: sink.Params, rec: LightRecord
) -> None:
    """Open one stream, read it to its end mark, close."""
    loop = asyncio.get_running_loop()
    start = sink.start_message(params) if transport == "websocket" else b""
    rec.t_start_ns, rec.t_start_perf_ns = time.time_ns(), time.perf_counter_ns()
    try:
        conn, reader = await loop.create_connection(
            lambda: _TokenReader(rec, transport, start), target.host, target.port
        )
    except OSError as exc:
        rec.error = f"connect: {exc}"
        return
    rec.t_connected_perf_ns = time.perf_counter_ns()
    conn.write(sink.request_bytes(target, transport, params, close=False))
    await reader.ended
    conn.close()


async def _fleet(
    target: Target,
    transport: str,
    params: sink.Params,
    indices: range,
    stagger_s: float,
    start_at_s: float,
    timeout_s: float,
) -> list[LightRecord]:
    loop = asyncio.get_running_loop()
    start = loop.time() + max(0.0, start_at_s - time.time())
    records = [LightRecord(int(params["tokens"])) for _ in indices]

    async def one(i: int, rec: LightRecord) -> None:
        await asyncio.sleep(max(0.0, start + i * stagger_s - loop.time()))
        try:
            async with asyncio.timeout(timeout_s):
                await read_stream(target, transport, params, rec)
        except TimeoutError:
            rec.error = f"not finished after {timeout_s:.0f} s"

    async with asyncio.TaskGroup() as tg:
        for i, rec in zip(indices, records, strict=True):
            tg.create_task(one(i, rec))
    return records


def _worker(
    worker: int, target: Target, transport: str, params: sink.Params, indices: range,
    stagger_s: float, start_at_s: float, timeout_s: float,
) -> tuple[list[LightRecord], LightWorkerStats]:  # fmt: skip
    import gc

    import uvloop

    raise_fd_limit()
    gc.collect()
    gc.disable()  # the measuring client's collector stays out of the measurement
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.monotonic()
    records = uvloop.run(
        _fleet(target, transport, params, indices, stagger_s, start_at_s, timeout_s)
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu0
    gc.enable()
    return records, LightWorkerStats(worker, len(indices), cpu_s, time.monotonic() - wall0)


class LightPool:
    """Worker processes (fork) that run light fleets; call from synchronous code."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        ctx = multiprocessing.get_context("fork")
        self._pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)

    def run(
        self, target: Target, transport: str, clients: int, params: sink.Params, stagger_ms: float
    ) -> tuple[list[LightRecord], list[LightWorkerStats]]:
        """`clients` streams (client i starts at i * stagger_ms), interleaved over workers."""
        start_at_s = time.time() + 0.5
        duration_s = params["ttft_ms"] / 1e3 + params["tokens"] / params["rate"]
        timeout_s = 3 * duration_s + clients * stagger_ms / 1e3 + 10
        futures = [
            self._pool.submit(
                _worker, w, target, transport, params, range(w, clients, self.workers),
                stagger_ms / 1e3, start_at_s, timeout_s,
            )
            for w in range(min(self.workers, clients))
        ]  # fmt: skip
        records: list[LightRecord] = []
        stats = []
        for future in futures:
            recs, stat = future.result()
            records += recs
            stats.append(stat)
        return records, stats

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LightPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
