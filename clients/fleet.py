"""Run N clients of one transport at once against one target, in this process."""

from __future__ import annotations

import asyncio
import dataclasses

from clients.base import ClientOptions, Target
from clients.recorder import StreamRecord
from streams.params import GenParams
from transports.registry import get


@dataclasses.dataclass(frozen=True)
class FleetSpec:
    transport: str
    clients: int = 1
    stagger_ms: float = 0.0  # start client i at i * stagger_ms
    timeout_s: float | None = None  # whole fleet; default: from the generation schedule


def expected_duration_s(params: GenParams) -> float:
    return params.ttft_ms / 1e3 + params.tokens / params.rate


async def run_fleet(
    spec: FleetSpec, target: Target, params: GenParams, options: ClientOptions | None = None
) -> list[StreamRecord]:
    """Every client's record; a client that has not finished by the timeout is recorded as such."""
    cls = get(spec.transport).client_class()
    records = [
        StreamRecord(spec.transport, cls.name, params.tokens, params.envelope)
        for _ in range(spec.clients)
    ]
    timeout_s = (
        spec.timeout_s
        or 2 * expected_duration_s(params) + spec.clients * spec.stagger_ms / 1e3 + 10
    )

    async def one(i: int, rec: StreamRecord) -> None:
        if spec.stagger_ms:
            await asyncio.sleep(i * spec.stagger_ms / 1e3)
        client = cls(dataclasses.replace(options or ClientOptions(), seed=i))
        try:
            async with asyncio.timeout(timeout_s):
                await client.run(target, params, rec)
        except TimeoutError as exc:
            rec.failed(TimeoutError(f"stream not finished after {timeout_s:.1f} s"))
            del exc

    async with asyncio.TaskGroup() as tg:
        for i, rec in enumerate(records):
            tg.create_task(one(i, rec))
    return records
