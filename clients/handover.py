"""Clients whose stream is handed from one server to another: the fleet under a node's death.

Theory of operation
-------------------
The failover and storm experiments need two things `run_fleet` does not give:

- **where the first connection goes.** A client opens its first connection to `first` (one
  node of a cluster, straight) and every later one to `target` (the cluster's front): so a
  node can be made to carry N streams, and when it dies the clients' reconnects go where a
  real front would send them. `first_then(first)` is that connector; it wraps the plain TCP
  one, so byte counts and recovery times are the same as everywhere else.
- **a stream the client did not start.** `streams[i]` given, client i starts with its
  resume point on that stream (seq 0, SSE event id `<id>:0`): it reads a stream another node
  generates, as a client whose previous connection landed elsewhere would.

The clients, records and backoff are pushlab's own (`clients.base.Client.run`), so lost,
duplicated, reconnects and recovery are recorded exactly as in the reconnect experiment.
`run_handover` also returns the CPU this thread spent (the event loop runs every client
here, so this thread is the load generator) as a `WorkerStats`, which
`clients.fleet.saturated` judges.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import time
from collections.abc import Sequence

from clients.base import ClientOptions, Target
from clients.fleet import WorkerStats
from clients.net import Connection, Connector, tcp_connector
from clients.recorder import StreamRecord
from streams.params import GenParams
from transports.registry import get


def first_then(first: Target, then: Connector = tcp_connector) -> Connector:
    """A connector whose first connection goes to `first`, whatever target it is asked for,
    and every later one to the target asked for (through `then`)."""
    used = False

    async def connect(target: Target) -> Connection:
        nonlocal used
        if not used:
            used = True
            return await then(first)
        return await then(target)

    return connect


@dataclasses.dataclass(frozen=True)
class Handover:
    """`clients` streams of `transport` through `target`; client i's first connection to
    `first` (None: to `target` too), on stream `streams[i]` if given (else it starts one),
    started `stagger_ms` apart; the whole fleet gives up after `timeout_s`."""

    transport: str
    target: Target
    clients: int = 1
    first: Target | None = None
    streams: Sequence[str] = ()
    stagger_ms: float = 0.0
    timeout_s: float = 60.0


async def run_handover(
    spec: Handover, params: GenParams, options: ClientOptions | None = None
) -> tuple[list[StreamRecord], WorkerStats]:
    """Every client's record, and the CPU this thread spent driving them."""
    cls = get(spec.transport).client_class()
    records = [StreamRecord(spec.transport, cls.name, params.tokens, params.envelope)
               for _ in range(spec.clients)]  # fmt: skip
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i * spec.stagger_ms / 1e3 - loop.time()))
        connector = first_then(spec.first) if spec.first is not None else tcp_connector
        client = cls(dataclasses.replace(options or ClientOptions(), seed=i), connector=connector)
        if i < len(spec.streams):
            stream = spec.streams[i]
            client.resume.update(stream, 0, f"{stream}:0")
            records[i].stream_id = stream
        try:
            async with asyncio.timeout(spec.timeout_s):
                await client.run(spec.target, params, records[i])
        except TimeoutError:
            records[i].failed(TimeoutError(f"stream not finished after {spec.timeout_s:.0f} s"))

    before = resource.getrusage(resource.RUSAGE_THREAD)
    wall0 = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for i in range(spec.clients):
            tg.create_task(one(i))
    after = resource.getrusage(resource.RUSAGE_THREAD)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return records, WorkerStats(0, spec.clients, cpu_s, time.monotonic() - wall0, False)
