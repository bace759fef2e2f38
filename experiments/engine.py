"""The engine under every experiment: measure a list of points against one server.

A `Point` is one transport, one generation, the network between (a `--net` string for a
fault-proxy process in front of the server) and the client options. `run_points` starts the
server (or uses the one given), reuses one proxy process for consecutive points with the same
network, and for each point runs a warm-up stream and then the measured fleet inside
`measuring()` (garbage collector collected before, off during).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import itertools
import os
import resource
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from clients import cluster
from clients.base import ClientOptions, Target
from clients.fleet import FleetPool, FleetSpec, WorkerStats, run_fleet, saturated
from clients.recorder import StreamRecord, measuring, to_tables
from clients.stack import Stack
from experiments.spec import check_over_tcp
from harness.children import ServerProcess, proxied
from records.schema import Tables, concat
from streams.params import GenParams
from transports.registry import KEYS

WARMUP = GenParams(tokens=5, rate=1000.0, ttft_ms=0.0)
T = TypeVar("T")

# `pushlab bench` above this many clients per transport spreads them over worker processes
# and runs the server it starts on `--gc scheduled`. Measured on the 2-core dev machine (sse,
# uvloop, the default 64 tokens at 20/s, load-generator CPU over the measured fleet): one
# client process was 35-47% busy driving 200 clients, 52% at 300, 58% at 400 (about 0.1 ms
# of CPU per token); two processes at 200 were 16-20% busy each. Up to 200 one process stays
# under half a core, so its own event loop's queueing stays out of the tails and it leaves the
# server its core; above, two. (Latency p99 itself, 1 against 2 processes, was too noisy to
# set the threshold: other sessions kept the machine's load average above 3 meanwhile.)
MANY_CLIENTS = 200
# the clients' collector: `measuring()` in this process, `gc.disable()` in a pool worker
CLIENT_GC = "collected before, off during each measured fleet"


def run_sync(coro: Coroutine[Any, Any, T], uvloop: bool = False) -> T:
    """Run `coro` to completion from synchronous code (on a uvloop loop if asked), also where
    an event loop is already running in this thread (a Jupyter kernel): then on a fresh loop
    in a worker thread."""

    def go() -> T:
        if not uvloop:
            return asyncio.run(coro)
        import uvloop as uv

        with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
            return runner.run(coro)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return go()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pushlab-run") as pool:
        return pool.submit(go).result()


def uvloop_available() -> bool:
    """uvloop is importable here (it is a dependency, but not on every platform)."""
    return importlib.util.find_spec("uvloop") is not None


def auto_workers(clients: int, cpus: int | None = None) -> int:
    """Load-generator processes for `clients` streams: one up to MANY_CLIENTS (one process
    drives them without being the bottleneck), else two, or fewer if there are fewer cores
    (a third client process would take the server's core on this 2-core machine)."""
    if clients <= MANY_CLIENTS:
        return 1
    return max(1, min(2, cpus if cpus is not None else (os.cpu_count() or 1)))


def auto_server_gc(clients: int) -> str:
    """The server's collector policy for `clients` streams. Above MANY_CLIENTS, "scheduled"
    (no automatic collection, one full one every 30 s): a generation-2 collection stops the
    event loop for a time that grows with the live objects, and with thousands of streams'
    objects alive those pauses would be read as the transport's tail latency."""
    return "scheduled" if clients > MANY_CLIENTS else "auto"


@dataclasses.dataclass(frozen=True)
class Point:
    """One measurement: `clients` concurrent streams of `transport`."""

    transport: str
    params: GenParams
    condition: str = ""  # label; default "rate=R text=T"
    sweep: tuple[str, float] | None = None  # (variable, value); default ("rate_hz", rate)
    net: str = ""  # fault-proxy conditions between clients and server ("" = direct)
    clients: int = 1
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)
    stack: Stack = dataclasses.field(default_factory=Stack)  # TLS, HTTP/2, multiplexing


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """What `pushlab bench` measures: one generation, several transports, N clients each."""

    transports: tuple[str, ...] = KEYS
    clients: int = 1
    params: GenParams = dataclasses.field(default_factory=GenParams)
    server: str | None = None  # URL of a running server (or proxy); None: start one
    server_args: tuple[str, ...] = ()
    net: str = ""  # fault-proxy conditions in front of the server
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)
    warmup: bool = True
    workers: int = 1  # load-generator processes (1: clients run in this process)
    uvloop: bool = False  # uvloop for the server started here and for the clients
    server_gc: str = "auto"  # the server started here: "auto" (CPython's) or "scheduled"
    stack: Stack = dataclasses.field(default_factory=Stack)  # TLS and HTTP/2 to `server`


@dataclasses.dataclass(frozen=True)
class BenchRecord(BenchSpec):
    """What meta.json's `spec` holds for a bench run: the spec, the clients' collector policy,
    and each load-generator worker's load (per transport), saturated or not."""

    client_gc: str = CLIENT_GC
    load_generators: tuple[dict[str, object], ...] = ()
    load_generator_saturated: bool = False

    def harness_summary(self) -> str:
        """The measuring setup in one line, and a loud second one if a client was saturated."""
        server = "a given server" if self.server else f"server gc {self.server_gc}"
        loop = "on" if self.uvloop else "off"
        where = {str(row["address"]) for row in self.load_generators if row.get("address")}
        clients = f"{len(where)} Dask worker(s)" if where else f"{self.workers} client process(es)"
        line = f"harness: {clients}, uvloop {loop}, {server}, client gc {self.client_gc}"
        if self.load_generator_saturated:
            line += (
                "\nWARNING: a load-generator process was saturated (see above and meta.json):"
                " the client was the bottleneck, not the transport"
            )
        return line


def bench_record(spec: BenchSpec, load: Sequence[tuple[str, WorkerStats]]) -> BenchRecord:
    """`spec` with the load its workers carried (`run_measured`'s second value)."""
    rows = tuple(
        {"transport": transport, **dataclasses.asdict(stat),
         "cpu_fraction": round(stat.cpu_fraction, 3), "saturated": bool(saturated([stat]))}
        for transport, stat in load
    )  # fmt: skip
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(BenchSpec)}
    saturated_any = any(bool(row["saturated"]) for row in rows)
    return BenchRecord(**fields, load_generators=rows, load_generator_saturated=saturated_any)


@contextlib.contextmanager
def server_target(url: str | None, args: Sequence[str] = ()) -> Iterator[Target]:
    """The given server, or a child server process for the duration."""
    if url:
        yield Target.parse(url)
        return
    proc = ServerProcess(list(args))
    target = proc.start()
    try:
        yield target
    finally:
        proc.stop()


def condition_keys(run_id: str, experiment: str, point: Point) -> dict[str, object]:
    """The key columns of one point's rows."""
    params = point.params
    name, value = point.sweep or ("rate_hz", params.rate)
    return {
        "run_id": run_id,
        "experiment": experiment,
        "condition": point.condition or f"rate={params.rate:g} text={params.text}",
        "sweep": name,
        "sweep_value": value,
        "rate_hz": params.rate,
        "corpus": params.text,
    }


def warmed_fleet(pool: FleetPool, target: Target, transport: str, n: int, ramp_s: float,
                 uvloop: bool, options: ClientOptions) -> FleetSpec:  # fmt: skip
    """The fleet of `n` clients ramped over `ramp_s`, after a warm-up of up to 10 of them."""
    fleet = FleetSpec(
        transport, n, stagger_ms=ramp_s * 1e3 / n, workers=pool.workers, uvloop=uvloop
    )
    pool.run(dataclasses.replace(fleet, clients=min(n, 10), stagger_ms=0), target, WARMUP, options)
    return fleet


def warn_if_saturated(transport: str, stats: Sequence[WorkerStats]) -> None:
    """One loud stderr line per load-generator worker that was the bottleneck."""
    for stat in saturated(stats):
        print(
            f"WARNING: load generator saturated: worker {stat.worker} was "
            f"{stat.cpu_fraction:.0%} busy driving {stat.clients} {transport} clients; these "
            "latencies describe the client, not the transport (more --workers)",
            file=sys.stderr,
        )


def measure_in_pool(
    point: Point, target: Target, pool: FleetPool, uvloop: bool, warmup: bool = True
) -> tuple[list[StreamRecord], list[WorkerStats]]:
    """Like `measure_records`, with the clients spread over the pool's worker processes;
    also each worker's load."""
    spec = FleetSpec(point.transport, point.clients, workers=pool.workers, uvloop=uvloop,
                     stack=point.stack)  # fmt: skip
    if warmup:
        alone = dataclasses.replace(point.stack, multiplex=1)
        pool.run(dataclasses.replace(spec, clients=1, stack=alone), target, WARMUP, point.options)
    with measuring():
        records, workers = pool.run(spec, target, point.params, point.options)
    warn_if_saturated(point.transport, workers)
    return records, workers


async def measure_with_load(
    point: Point, target: Target, warmup: bool, uvloop: bool
) -> tuple[list[StreamRecord], WorkerStats]:
    """`measure_records` in this thread, with the CPU this thread spent on the clients (the
    event loop runs every client here, so this thread is the load generator)."""
    if warmup:  # outside the load measured, as a pool worker's warm-up is
        alone = dataclasses.replace(point.stack, multiplex=1)
        await run_fleet(FleetSpec(point.transport, 1, stack=alone), target, WARMUP, point.options)
    before = resource.getrusage(resource.RUSAGE_THREAD)
    wall0 = time.monotonic()
    records = await measure_records(point, target, warmup=False)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return records, WorkerStats(0, point.clients, cpu_s, time.monotonic() - wall0, uvloop)


async def measure_records(point: Point, target: Target, warmup: bool = True) -> list[StreamRecord]:
    """Warm up, then run the point's fleet in the measured window. The warm-up runs over the
    point's stack (the server's and the front's TLS and HTTP/2 paths are warm), but its TLS
    session is its own: each measured client still pays a full handshake, as a new visitor."""
    fleet = FleetSpec(point.transport, point.clients, stack=point.stack)
    if warmup:
        alone = dataclasses.replace(point.stack, multiplex=1)
        await run_fleet(dataclasses.replace(fleet, clients=1, stack=alone), target, WARMUP,
                        point.options)  # fmt: skip
    with measuring():
        return await run_fleet(fleet, target, point.params, point.options)


def run_points(
    points: Sequence[Point],
    *,
    experiment: str,
    run_id: str = "",
    server: str | None = None,
    server_args: Sequence[str] = (),
    warmup: bool = True,
    progress: bool = False,
) -> Tables:
    """Measure every point in order against one server; the tables of all of them."""
    from tqdm import tqdm

    parts, loads = [], []
    with (
        server_target(server, server_args) as direct,
        tqdm(total=len(points), desc=experiment, unit="point", disable=not progress) as bar,
        FleetPool(1) if cluster.default() else contextlib.nullcontext() as pool,
    ):
        for net, grouped in itertools.groupby(points, key=lambda p: p.net):
            group = list(grouped)
            if net:  # the fault proxy relays TCP
                check_over_tcp(tuple(p.transport for p in group), "the fault proxy of --net")
            with proxied(direct, net) as target:
                for point in group:
                    keys = condition_keys(run_id, experiment, point)
                    if pool is None:  # the embedded default: the clients in this process
                        records = run_sync(measure_records(point, target, warmup))
                    else:  # on the cluster's workers, which say where the load came from
                        records, stats = measure_in_pool(point, target, pool, False, warmup)
                        loads.append(cluster.load_frame(stats, keys, point.transport))
                    parts.append(to_tables(records, keys))
                    bar.update()
    return cluster.with_load(concat(parts), loads)


def run(spec: BenchSpec, run_id: str = "", progress: bool = False) -> Tables:
    """`pushlab bench`: every transport of `spec` in turn against one server."""
    return run_measured(spec, run_id, progress)[0]


def run_measured(
    spec: BenchSpec, run_id: str = "", progress: bool = False
) -> tuple[Tables, list[tuple[str, WorkerStats]]]:
    """`run`, and each load-generator worker's load per transport (a loud warning on stderr
    for any worker that was saturated). One worker: the clients run in this process."""
    from tqdm import tqdm

    points = [
        Point(
            t, spec.params, net=spec.net, clients=spec.clients, options=spec.options,
            stack=spec.stack,
        )
        for t in spec.transports
    ]  # fmt: skip
    server_args = (
        *spec.server_args,
        *(["--uvloop"] if spec.uvloop else []),
        *(["--gc", spec.server_gc] if spec.server_gc != "auto" else []),
    )
    if spec.net:  # the fault proxy relays TCP: refused before any server starts
        check_over_tcp(spec.transports, "the fault proxy of --net")
    parts, load = [], []
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(server_target(spec.server, server_args))
        target = stack.enter_context(proxied(direct, spec.net))
        many = spec.workers > 1 or cluster.default()
        pool = stack.enter_context(FleetPool(spec.workers)) if many else None
        for point in tqdm(points, desc="bench", unit="transport", disable=not progress):
            if pool is None:
                records, stat = run_sync(
                    measure_with_load(point, target, spec.warmup, spec.uvloop), spec.uvloop
                )
                warn_if_saturated(point.transport, [stat])
                stats = [stat]
            else:
                records, stats = measure_in_pool(point, target, pool, spec.uvloop, spec.warmup)
            parts.append(to_tables(records, condition_keys(run_id, "bench", point)))
            load += [(point.transport, stat) for stat in stats]
    return concat(parts), load
