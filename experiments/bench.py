"""One configuration measured on several transports: the engine under every experiment.

`measure(...)` runs a warm-up stream, then the measured fleet inside `measuring()` (garbage
collector off, collected before), and turns the records into schema tables afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator

from clients.base import ClientOptions, Target
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import measuring, to_tables
from clients.schema import Tables, concat
from experiments.serverproc import ServerProcess
from streams.params import GenParams
from transports.registry import KEYS

WARMUP = GenParams(tokens=5, rate=1000.0, ttft_ms=0.0)


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """What `pushlab bench` measures: one generation, several transports, N clients each."""

    transports: tuple[str, ...] = KEYS
    clients: int = 1
    params: GenParams = dataclasses.field(default_factory=GenParams)
    server: str | None = None  # URL of a running server (or proxy); None: start one
    server_args: tuple[str, ...] = ()
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)
    warmup: bool = True


@contextlib.contextmanager
def server_target(url: str | None, args: tuple[str, ...] = ()) -> Iterator[Target]:
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


async def measure(
    transport: str,
    target: Target,
    params: GenParams,
    *,
    clients: int = 1,
    options: ClientOptions | None = None,
    keys: dict[str, object],
    warmup: bool = True,
) -> Tables:
    """Warm up, then measure `clients` concurrent streams of `transport`."""
    if warmup:
        await run_fleet(FleetSpec(transport, 1), target, WARMUP, options)
    with measuring():
        records = await run_fleet(FleetSpec(transport, clients), target, params, options)
    return to_tables(records, keys)


def condition_keys(
    run_id: str, experiment: str, params: GenParams, condition: str = ""
) -> dict[str, object]:
    label = condition or f"rate={params.rate:g} text={params.text}"
    return {
        "run_id": run_id,
        "experiment": experiment,
        "condition": label,
        "rate_hz": params.rate,
        "corpus": params.text,
    }


def run(spec: BenchSpec, run_id: str = "", progress: bool = False) -> Tables:
    """Measure every transport of `spec` in turn against one server."""
    from tqdm import tqdm

    parts = []
    with server_target(spec.server, spec.server_args) as target:
        for transport in tqdm(
            spec.transports, desc="bench", unit="transport", disable=not progress
        ):
            keys = condition_keys(run_id, "bench", spec.params)
            parts.append(
                asyncio.run(
                    measure(
                        transport,
                        target,
                        spec.params,
                        clients=spec.clients,
                        options=spec.options,
                        keys=keys,
                        warmup=spec.warmup,
                    )
                )
            )
    return concat(parts)
