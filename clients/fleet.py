"""Run N clients of one transport at once: in this process (`run_fleet`) or spread over
worker processes so the measuring side can use every core (`FleetPool`).

Workers start their clients together at a shared wall-clock instant, with client i (over
the whole fleet) started at i * stagger_ms; client i runs in worker i mod workers, so every
worker takes its share of a ramp at once. Each worker reports its own CPU time, so the fleet
can say when the measuring side itself was saturated and the numbers describe the harness,
not the transport.

With a cluster (`FleetPool(n, cluster="tcp://HOST:PORT")`, or `clients.cluster.set_default`,
which `--cluster` sets) the workers are a Dask cluster's, one share per Dask worker, and
each `WorkerStats` says which host ran it (clients/cluster.py: how, and what clocks mean
across machines).

Two readers: pushlab's full clients (`FleetPool.run`, every transport, every column of the
record) and the light reader (`FleetPool.run_light`, `clients.light`: SSE and WebSocket at a
fraction of the CPU per token, for thousands of streams on two cores).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import gc
import multiprocessing
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from clients.base import ClientOptions, Target
from clients.light import LightRecord, read_stream
from clients.recorder import StreamRecord
from clients.stack import Stack
from streams.params import GenParams
from transports.registry import get

if TYPE_CHECKING:
    from clients.h2 import H2Session
    from clients.h3 import H3Session
    from clients.http import HTTPLayerFactory

SATURATED_CPU_FRACTION = 0.9  # a worker busier than this is the bottleneck
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class FleetSpec:
    transport: str
    clients: int = 1
    stagger_ms: float = 0.0  # start client i at i * stagger_ms
    timeout_s: float | None = None  # whole fleet; default: from the generation schedule
    workers: int = 1  # worker processes (FleetPool's)
    uvloop: bool = False  # run each worker's event loop on uvloop
    stack: Stack = dataclasses.field(default_factory=Stack)  # TLS, HTTP/2, multiplexing


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    worker: int
    clients: int
    cpu_s: float  # user + system CPU of the worker process during its fleet
    wall_s: float
    uvloop: bool
    host: str = ""  # hostname of the machine that ran the share
    address: str = ""  # the Dask worker's address ("" in a local pool)

    @property
    def cpu_fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def raise_fd_limit() -> int:
    """Lift this process's open-file limit to its hard limit (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fleet_timeout_s(spec: FleetSpec, params: GenParams, indices: range, slack: float) -> float:
    """`spec.timeout_s`, or `slack` times a stream's scheduled duration after the last start."""
    last_start_s = (max(indices, default=-1) + 1) * spec.stagger_ms / 1e3
    return spec.timeout_s or slack * params.duration_s() + last_start_s + 10


async def _staggered(
    spec: FleetSpec,
    indices: range,
    start_at_s: float | None,
    timeout_s: float,
    run_one: Callable[[int], Awaitable[None]],
    on_timeout: Callable[[int], None],
) -> None:
    """Client i of `indices` starts at `start_at_s` (a `time.time()` instant shared by the
    workers; default now) + i * stagger_ms and runs `run_one(i)` for at most `timeout_s`."""
    loop = asyncio.get_running_loop()
    start = loop.time() + max(0.0, (start_at_s or time.time()) - time.time())

    async def one(i: int) -> None:
        delay = start + i * spec.stagger_ms / 1e3 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with asyncio.timeout(timeout_s):
                await run_one(i)
        except TimeoutError:
            on_timeout(i)

    async with asyncio.TaskGroup() as tg:
        for i in indices:
            tg.create_task(one(i))


async def run_fleet(
    spec: FleetSpec,
    target: Target,
    params: GenParams,
    options: ClientOptions | None = None,
    *,
    indices: range | None = None,
    start_at_s: float | None = None,
) -> list[StreamRecord]:
    """Every client's record; a client that has not finished by the timeout is recorded as such.

    `indices` are the clients' places in the whole fleet (default: all of `spec.clients`):
    they set each client's start (i * stagger_ms) and seed."""
    indices = range(spec.clients) if indices is None else indices
    cls = get(spec.transport).client_class()
    records = {i: StreamRecord(spec.transport, cls.name, params.tokens, params.envelope)
               for i in indices}  # fmt: skip
    timeout_s = fleet_timeout_s(spec, params, indices, slack=2)
    stack = spec.stack
    shared = _SharedSessions(stack, target, records)

    async def run_one(i: int) -> None:
        client_options = dataclasses.replace(options or ClientOptions(), seed=i)
        http = shared.factory(i) if stack.multiplex > 1 else stack.http_factory()
        client = cls(client_options, http=http, connector=stack.connector())
        await client.run(target, params, records[i])

    def on_timeout(i: int) -> None:
        records[i].failed(TimeoutError(f"stream not finished after {timeout_s:.1f} s"))

    try:
        await _staggered(spec, indices, start_at_s, timeout_s, run_one, on_timeout)
    finally:
        await shared.aclose()
    return list(records.values())


class _SharedSessions:
    """One HTTP/2 (or HTTP/3) session per `stack.multiplex` consecutive clients (client i in
    group i // multiplex); each session's connection counts go, once, to the first record of
    its group, and every record of the group says how many streams shared it."""

    def __init__(self, stack: Stack, target: Target, records: dict[int, StreamRecord]) -> None:
        self.stack, self.target, self.records = stack, target, records
        self.sessions: dict[int, H2Session | H3Session] = {}

    def factory(self, i: int) -> HTTPLayerFactory:
        group = i // self.stack.multiplex
        members = [j for j in self.records if j // self.stack.multiplex == group]
        self.records[i].streams_per_conn = len(members)
        raw = self.stack.connector("http/1.1")  # a WebSocket's own TLS connection
        if self.stack.http == "3":
            from clients import h3

            h3_session = self.sessions.get(group)
            if not isinstance(h3_session, h3.H3Session):
                h3_session = h3.H3Session(self.target, self.stack.quic_settings())
                self.sessions[group] = h3_session
            return h3.shared_factory(h3_session, raw_connector=raw)
        from clients.h2 import H2Session, shared_factory

        session = self.sessions.get(group)
        if not isinstance(session, H2Session):
            session = self.sessions[group] = H2Session(self.target, self.stack.connector())
        return shared_factory(session, raw_connector=raw)

    async def aclose(self) -> None:
        for group, session in self.sessions.items():
            first = min(j for j in self.records if j // self.stack.multiplex == group)
            self.records[first].conns += await session.aclose()


async def run_light_fleet(
    spec: FleetSpec,
    target: Target,
    params: GenParams,
    *,
    indices: range | None = None,
    start_at_s: float | None = None,
) -> list[LightRecord]:
    """`run_fleet` with the light reader (`clients.light`; `spec.transport` sse or websocket)."""
    if spec.stack != Stack():
        raise ValueError("the light reader speaks cleartext HTTP/1.1 only")
    indices = range(spec.clients) if indices is None else indices
    records = {i: LightRecord(params.tokens) for i in indices}
    # the light fleets run the server at its limit (5,000 streams): streams may stretch further
    timeout_s = fleet_timeout_s(spec, params, indices, slack=3)

    async def run_one(i: int) -> None:
        await read_stream(target, spec.transport, params, records[i])

    def on_timeout(i: int) -> None:
        records[i].error = f"not finished after {timeout_s:.0f} s"

    await _staggered(spec, indices, start_at_s, timeout_s, run_one, on_timeout)
    return list(records.values())


def _worker(
    worker: int,
    spec: FleetSpec,
    fleet: Callable[..., Awaitable[list[R]]],
    indices: range,
    start_at_s: float,
    cpu_of: int = resource.RUSAGE_SELF,
) -> tuple[list[R], WorkerStats]:
    """One worker's share, `fleet(indices=, start_at_s=)`, on an event loop of its own, with
    the collector off (the measuring client's collector stays out of the measurement). CPU
    is `cpu_of`'s: the process (a pool worker) or the calling thread (a Dask task)."""
    raise_fd_limit()
    loop_factory = None
    if spec.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    gc.collect()
    gc.disable()
    try:
        usage = resource.getrusage(cpu_of)
        cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.monotonic()

        async def main() -> list[R]:  # a Runner takes a coroutine, `fleet` returns an awaitable
            return await fleet(indices=indices, start_at_s=start_at_s)

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            records = runner.run(main())
        usage = resource.getrusage(cpu_of)
    finally:
        gc.enable()
    cpu_s = usage.ru_utime + usage.ru_stime - cpu0
    wall_s = time.monotonic() - wall0
    stats = WorkerStats(worker, len(indices), cpu_s, wall_s, spec.uvloop, socket.gethostname())
    return records, stats


class FleetPool:
    """Worker processes kept for a whole experiment or benchmark run; with `cluster` (default:
    `clients.cluster.default()`), a Dask cluster's workers instead, `workers` their number."""

    def __init__(self, workers: int, cluster: str | None = None) -> None:
        from clients import cluster as dask_cluster

        address = cluster or dask_cluster.default()
        self._dask = dask_cluster.DaskFleet(address) if address else None
        self.workers = len(self._dask.worker_addresses) if self._dask else workers
        # fork: no re-import of the caller's __main__ (scripts, notebooks); call from sync code
        ctx = multiprocessing.get_context("fork")
        self._pool = (
            None if self._dask else concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)
        )

    def run(
        self,
        spec: FleetSpec,
        target: Target,
        params: GenParams,
        options: ClientOptions | None = None,
    ) -> tuple[list[StreamRecord], list[WorkerStats]]:
        """pushlab's clients: `spec.clients` over the workers, started together, records in
        client order."""
        fleet = functools.partial(run_fleet, spec, target, params, options)
        return self._dispatch(spec, target, params, fleet)

    def run_light(
        self, spec: FleetSpec, target: Target, params: GenParams
    ) -> tuple[list[LightRecord], list[WorkerStats]]:
        """`run` with the light reader (`clients.light`): sse or websocket, at scale."""
        fleet = functools.partial(run_light_fleet, spec, target, params)
        return self._dispatch(spec, target, params, fleet)

    def run_with(
        self,
        spec: FleetSpec,
        target: Target,
        params: GenParams,
        fleet: Callable[..., Awaitable[list[R]]],
    ) -> tuple[list[R], list[WorkerStats]]:
        """Any fleet, `fleet(indices=, start_at_s=)` returning one item per index (picklable:
        a partial of a module-level function), spread over the workers as `run`'s."""
        return self._dispatch(spec, target, params, fleet)

    def _dispatch(
        self,
        spec: FleetSpec,
        target: Target,
        params: GenParams,
        fleet: Callable[..., Awaitable[list[R]]],
    ) -> tuple[list[R], list[WorkerStats]]:
        """Client i goes to worker i mod workers; every worker starts at one instant."""
        start_at_s = time.time() + 0.5  # time for every worker to be ready
        shares = [range(w, spec.clients, self.workers) for w in range(self.workers)]
        if self._dask is not None:
            timeout_s = fleet_timeout_s(spec, params, range(spec.clients), slack=3)
            work = [(w, share) for w, share in enumerate(shares) if share]
            results = self._dask.run_shares(spec, target, fleet, work, start_at_s, timeout_s)
        else:
            assert self._pool is not None
            futures = [
                self._pool.submit(_worker, w, spec, fleet, share, start_at_s)
                for w, share in enumerate(shares)
                if share
            ]
            results = [future.result() for future in futures]
        by_index: dict[int, R] = {}
        for share, (recs, _) in zip([s for s in shares if s], results, strict=True):
            by_index.update(zip(share, recs, strict=True))
        return [by_index[i] for i in range(spec.clients)], [stats for _, stats in results]

    def close(self) -> None:
        if self._dask is not None:
            self._dask.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FleetPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def saturated(stats: Sequence[WorkerStats]) -> list[WorkerStats]:
    """The workers that were busier than SATURATED_CPU_FRACTION of their wall time."""
    return [s for s in stats if s.cpu_fraction > SATURATED_CPU_FRACTION]
