"""Run N clients of one transport at once: in this process (`run_fleet`) or spread over
worker processes so the measuring side can use every core (`run_fleet_procs`).

Workers start their clients together at a shared wall-clock instant, with client i (over
the whole fleet) started at i * stagger_ms; each reports its own CPU time, so the fleet can
say when the measuring side itself was saturated and the numbers describe the harness, not
the transport.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
import multiprocessing
import resource
import time

from clients.base import ClientOptions, Target
from clients.recorder import StreamRecord
from streams.params import GenParams
from transports.registry import get

SATURATED_CPU_FRACTION = 0.9  # a worker busier than this is the bottleneck


@dataclasses.dataclass(frozen=True)
class FleetSpec:
    transport: str
    clients: int = 1
    stagger_ms: float = 0.0  # start client i at i * stagger_ms
    timeout_s: float | None = None  # whole fleet; default: from the generation schedule
    workers: int = 1  # processes for run_fleet_procs
    uvloop: bool = False  # run each worker's event loop on uvloop


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    worker: int
    clients: int
    cpu_s: float  # user + system CPU of the worker process during its fleet
    wall_s: float
    uvloop: bool

    @property
    def cpu_fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def expected_duration_s(params: GenParams) -> float:
    return params.ttft_ms / 1e3 + params.tokens / params.rate


def raise_fd_limit() -> int:
    """Lift this process's open-file limit to its hard limit (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def run_fleet(
    spec: FleetSpec,
    target: Target,
    params: GenParams,
    options: ClientOptions | None = None,
    *,
    first_index: int = 0,
    start_at_s: float | None = None,
) -> list[StreamRecord]:
    """Every client's record; a client that has not finished by the timeout is recorded as such.

    `first_index` offsets the stagger (client i of the whole fleet starts at i * stagger_ms
    after `start_at_s`, a `time.time()` instant shared by the workers; default: now)."""
    cls = get(spec.transport).client_class()
    records = [
        StreamRecord(spec.transport, cls.name, params.tokens, params.envelope)
        for _ in range(spec.clients)
    ]
    stagger_s = spec.stagger_ms / 1e3
    total = first_index + spec.clients
    timeout_s = spec.timeout_s or 2 * expected_duration_s(params) + total * stagger_s + 10
    loop = asyncio.get_running_loop()
    start = loop.time() + max(0.0, (start_at_s or time.time()) - time.time())

    async def one(i: int, rec: StreamRecord) -> None:
        delay = start + (first_index + i) * stagger_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        client = cls(dataclasses.replace(options or ClientOptions(), seed=first_index + i))
        try:
            async with asyncio.timeout(timeout_s):
                await client.run(target, params, rec)
        except TimeoutError:
            rec.failed(TimeoutError(f"stream not finished after {timeout_s:.1f} s"))

    async with asyncio.TaskGroup() as tg:
        for i, rec in enumerate(records):
            tg.create_task(one(i, rec))
    return records


def _worker(
    worker: int,
    spec: FleetSpec,
    target: Target,
    params: GenParams,
    options: ClientOptions | None,
    first_index: int,
    start_at_s: float,
) -> tuple[list[StreamRecord], WorkerStats]:
    """One worker process's share, measured with the collector off."""
    raise_fd_limit()
    if spec.uvloop:
        import uvloop

        uvloop.install()
    gc.collect()
    gc.disable()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.monotonic()
    records = asyncio.run(
        run_fleet(spec, target, params, options, first_index=first_index, start_at_s=start_at_s)
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = WorkerStats(
        worker,
        spec.clients,
        usage.ru_utime + usage.ru_stime - cpu0,
        time.monotonic() - wall0,
        spec.uvloop,
    )
    gc.enable()
    return records, stats


class FleetPool:
    """Worker processes kept for a whole experiment."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        # fork: no re-import of the caller's __main__ (scripts, notebooks); call from sync code
        ctx = multiprocessing.get_context("fork")
        self._pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)

    def run(
        self,
        spec: FleetSpec,
        target: Target,
        params: GenParams,
        options: ClientOptions | None = None,
    ) -> tuple[list[StreamRecord], list[WorkerStats]]:
        """Split `spec.clients` over the workers, start them together, merge their records."""
        shares = [
            spec.clients // self.workers + (1 if w < spec.clients % self.workers else 0)
            for w in range(self.workers)
        ]
        start_at_s = time.time() + 0.5  # time for every worker to be ready
        futures, first = [], 0
        for w, share in enumerate(shares):
            if share:
                sub = dataclasses.replace(spec, clients=share)
                futures.append(
                    self._pool.submit(_worker, w, sub, target, params, options, first, start_at_s)
                )
                first += share
        records: list[StreamRecord] = []
        stats: list[WorkerStats] = []
        for future in futures:
            recs, stat = future.result()
            records += recs
            stats.append(stat)
        return records, stats

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FleetPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def saturated(stats: list[WorkerStats]) -> list[WorkerStats]:
    """The workers that were busier than SATURATED_CPU_FRACTION of their wall time."""
    return [s for s in stats if s.cpu_fraction > SATURATED_CPU_FRACTION]
