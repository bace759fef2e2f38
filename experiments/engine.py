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
import itertools
import sys
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from clients.base import ClientOptions, Target
from clients.fleet import FleetPool, FleetSpec, run_fleet, saturated
from clients.recorder import StreamRecord, measuring, to_tables
from harness.children import ServerProcess, proxied
from records.schema import Tables, concat
from streams.params import GenParams
from transports.registry import KEYS

WARMUP = GenParams(tokens=5, rate=1000.0, ttft_ms=0.0)
T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from synchronous code, also where an event loop is already
    running in this thread (a Jupyter kernel): then on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pushlab-run") as pool:
        return pool.submit(asyncio.run, coro).result()


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


def measure_in_pool(
    point: Point, target: Target, pool: FleetPool, uvloop: bool
) -> list[StreamRecord]:
    """Like `measure_records`, with the clients spread over the pool's worker processes."""
    spec = FleetSpec(point.transport, point.clients, workers=pool.workers, uvloop=uvloop)
    pool.run(dataclasses.replace(spec, clients=1), target, WARMUP, point.options)
    with measuring():
        records, workers = pool.run(spec, target, point.params, point.options)
    for stat in saturated(workers):
        print(
            f"warning: load-generator worker {stat.worker} was {stat.cpu_fraction:.0%} busy",
            file=sys.stderr,
        )
    return records


async def measure_records(point: Point, target: Target, warmup: bool = True) -> list[StreamRecord]:
    """Warm up, then run the point's fleet in the measured window."""
    if warmup:
        await run_fleet(FleetSpec(point.transport, 1), target, WARMUP, point.options)
    with measuring():
        return await run_fleet(
            FleetSpec(point.transport, point.clients), target, point.params, point.options
        )


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

    parts = []
    with (
        server_target(server, server_args) as direct,
        tqdm(total=len(points), desc=experiment, unit="point", disable=not progress) as bar,
    ):
        for net, group in itertools.groupby(points, key=lambda p: p.net):
            with proxied(direct, net) as target:
                for point in group:
                    records = run_sync(measure_records(point, target, warmup))
                    parts.append(to_tables(records, condition_keys(run_id, experiment, point)))
                    bar.update()
    return concat(parts)


def run(spec: BenchSpec, run_id: str = "", progress: bool = False) -> Tables:
    """`pushlab bench`: every transport of `spec` in turn against one server."""
    points = [
        Point(t, spec.params, net=spec.net, clients=spec.clients, options=spec.options)
        for t in spec.transports
    ]
    server_args = (*spec.server_args, *(["--uvloop"] if spec.uvloop else []))
    if spec.workers > 1 or spec.uvloop:
        return _run_in_pool(spec, points, server_args, run_id, progress)
    return run_points(
        points,
        experiment="bench",
        run_id=run_id,
        server=spec.server,
        server_args=server_args,
        warmup=spec.warmup,
        progress=progress,
    )


def _run_in_pool(
    spec: BenchSpec, points: list[Point], server_args: Sequence[str], run_id: str, progress: bool
) -> Tables:
    """The clients in worker processes (with uvloop if asked), the server as usual."""
    from tqdm import tqdm

    parts = []
    with (
        server_target(spec.server, server_args) as direct,
        proxied(direct, spec.net) as target,
        FleetPool(spec.workers) as pool,
    ):
        for point in tqdm(points, desc="bench", unit="transport", disable=not progress):
            records = measure_in_pool(point, target, pool, spec.uvloop)
            parts.append(to_tables(records, condition_keys(run_id, "bench", point)))
    return concat(parts)
