"""One behavioural suite, run over every transport in the registry.

Each check starts from a real server on 127.0.0.1 and runs the transport's own client against
it. The checks are plain `async (served, key)` functions in `CHECKS`, so a transport
registered later (tests/test_registry.py) runs the very same suite; whatever differs between
transports is read from the registry entry, never from the key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable

import pytest

from clients.base import ClientOptions
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import StreamRecord, stream_row
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT, Served
from transports import registry
from transports.registry import KEYS

FAST = GenParams(tokens=12, rate=400.0, ttft_ms=5.0, seed=7)
OPTIONS = ClientOptions(interval_ms=5.0, wait_s=2.0)

Check = Callable[[Served, str], Awaitable[None]]


async def run_one(
    served: Served, key: str, params: GenParams, clients: int = 1
) -> list[StreamRecord]:
    async with asyncio.timeout(10 * UNIT):
        return await run_fleet(FleetSpec(key, clients), served.target, params, OPTIONS)


async def every_token_once_in_order_with_the_seeds_text(served: Served, key: str) -> None:
    [rec] = await run_one(served, key, FAST)
    row = stream_row(rec)
    assert rec.error == ""
    assert list(rec.seq) == list(range(1, FAST.tokens + 1))
    assert rec.text() == "".join(texts(FAST))
    assert (row["lost"], row["duplicated"], row["out_of_order"]) == (0, 0, 0)
    assert rec.end_reason == "done"


async def multibyte_text_and_openai_envelope_arrive_intact(
    served: Served, key: str, corpus: str
) -> None:
    params = GenParams(tokens=10, rate=500.0, ttft_ms=0.0, seed=3, text=corpus, envelope="openai")
    [rec] = await run_one(served, key, params)
    assert rec.error == ""
    assert rec.text() == "".join(texts(params))
    assert stream_row(rec)["payload_bytes"] == len("".join(texts(params)).encode())


async def bytes_are_counted_by_the_kernel_and_agree_with_the_application(
    served: Served, key: str
) -> None:
    [rec] = await run_one(served, key, FAST)
    row = stream_row(rec)
    # TCP's bytes are the kernel's count (TCP_INFO); QUIC runs in user space, where the
    # client's own count of UDP payload is exact (clients/quic.py)
    assert row["bytes_source"] == {"tcp": "kernel", "quic": "udp"}[registry.get(key).stack]
    assert row["connections"] == 1
    assert row["stack"] == registry.get(key).stack  # the stack the registry says it runs on
    assert row["bytes_up"] == row["app_bytes_up"] > 0
    # on an upgraded (WebSocket) connection the kernel may also have received the close
    # frame the client never read
    slack = 4 if registry.get(key).connection == "upgraded" else 0
    assert 0 <= row["bytes_down"] - row["app_bytes_down"] <= slack
    assert row["bytes_down"] > row["payload_bytes"] > 0
    assert row["packets_up"] > 0 and row["packets_down"] > 0


async def requests_and_connections_per_answer(served: Served, key: str) -> None:
    [rec] = await run_one(served, key, FAST)
    row = stream_row(rec)
    if registry.get(key).requests_per_answer == "many":
        assert row["http_requests"] >= 2  # create, then at least one poll
    else:
        assert row["http_requests"] == 1
    assert row["reconnects"] == 0


async def concurrent_streams_are_independent(served: Served, key: str) -> None:
    records = await run_one(served, key, FAST, clients=3)
    assert len({r.stream_id for r in records}) == 3
    for rec in records:
        assert rec.error == "" and rec.text() == "".join(texts(FAST))


async def same_seed_same_texts_across_transports(served: Served, key: str) -> None:
    reference = await run_one(served, registry.ordered()[0].key, FAST)
    [rec] = await run_one(served, key, FAST)
    assert rec.texts == reference[0].texts


async def bad_parameters_end_the_stream_with_the_servers_message(served: Served, key: str) -> None:
    bad = dataclasses.replace(FAST)
    object.__setattr__(bad, "rate", -5.0)  # GenParams does not validate itself; the server does
    [rec] = await run_one(served, key, bad)
    assert "rate" in rec.error
    assert rec.reconnects == 0  # a 4xx is not worth retrying


async def continuation_in_parts_stitches_the_same_answer(served: Served, key: str) -> None:
    params = GenParams(tokens=11, rate=400.0, ttft_ms=5.0, seed=9)
    options = dataclasses.replace(OPTIONS, part_tokens=4)  # requests of 4, 4 and 3 tokens
    async with asyncio.timeout(10 * UNIT):
        [rec] = await run_fleet(FleetSpec(key, 1), served.target, params, options)
    row = stream_row(rec)
    assert rec.error == "" and rec.end_reason == "done"
    assert list(rec.seq) == list(range(1, 12))
    assert rec.text() == "".join(texts(params))
    assert row["continuations"] == 2 and row["continuation_gap_max_ms"] > 0
    assert len(set(rec.part_streams)) == 2 and rec.stream_id == rec.part_streams[0]


def _named(check: Callable[..., Awaitable[None]], name: str, **fixed: object) -> Check:
    bound = functools.partial(check, **fixed)
    functools.update_wrapper(bound, check)
    bound.__name__ = name  # type: ignore[attr-defined]
    return bound


# The suite: every check any transport must pass, whatever its key.
CHECKS: tuple[Check, ...] = (
    every_token_once_in_order_with_the_seeds_text,
    *(
        _named(multibyte_text_and_openai_envelope_arrive_intact, f"{corpus}_text", corpus=corpus)
        for corpus in ("zh", "mixed")
    ),
    bytes_are_counted_by_the_kernel_and_agree_with_the_application,
    requests_and_connections_per_answer,
    concurrent_streams_are_independent,
    same_seed_same_texts_across_transports,
    bad_parameters_end_the_stream_with_the_servers_message,
    continuation_in_parts_stitches_the_same_answer,
)


def check_id(check: Check) -> str:
    return str(getattr(check, "__name__", check))


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
@pytest.mark.parametrize("key", KEYS)
async def test_conformance(served: Served, key: str, check: Check) -> None:
    await check(served, key)
