"""The hub: ids and seqs, replay from any cursor, cancellation, idle cancel, retention."""

from __future__ import annotations

import asyncio

import pytest

from streams.errors import StreamLimitError, StreamNotFound
from streams.generator import texts
from streams.hub import CANCELLED, DONE, Hub
from streams.params import GenParams
from tests.support import UNIT, wait_until_async
from transports.token import encode_token

FAST = GenParams(tokens=8, rate=1000.0, ttft_ms=0.0, seed=2)


@pytest.fixture
async def hub() -> Hub:
    h = Hub(encode_token, retention_s=3600, idle_timeout_s=3600, max_streams=4)
    await h.start()
    yield h  # type: ignore[misc]
    await h.aclose()


async def test_tokens_have_seq_1_to_n_and_the_generators_texts(hub: Hub) -> None:
    stream = await hub.create(FAST)
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    assert [t.seq for t in stream.log] == list(range(1, 9))
    assert [t.text for t in stream.log] == texts(FAST)
    assert stream.state == DONE
    t_emit = [t.t_emit_ns for t in stream.log]
    assert t_emit == sorted(t_emit)


async def test_since_replays_from_any_cursor(hub: Hub) -> None:
    stream = await hub.create(FAST)
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    for after in range(0, 9):
        assert [t.seq for t in stream.since(after)] == list(range(after + 1, 9))


async def test_wait_beyond_times_out_without_a_token(hub: Hub) -> None:
    stream = await hub.create(GenParams(tokens=2, rate=1.0, ttft_ms=60_000))
    assert await stream.wait_beyond(0, timeout_s=0.02 * UNIT) is False
    assert stream._waiters == []  # a timed-out waiter leaves nothing behind


async def test_cancel_stops_generation_and_wakes_readers(hub: Hub) -> None:
    stream = await hub.create(GenParams(tokens=1000, rate=50.0, ttft_ms=0.0))
    waiter = asyncio.create_task(stream.wait_beyond(10_000))
    await wait_until_async(lambda: stream.last_seq >= 2, what="the stream has emitted 2 tokens")
    next_token = stream._timer  # tokens are emitted only by this chain of loop timers
    await hub.cancel(stream.id)
    async with asyncio.timeout(2 * UNIT):
        assert await waiter is True
    emitted = stream.last_seq
    # no token can ever follow, shown by the chain being cut rather than by a quiet pause
    assert next_token is not None and next_token.cancelled() and stream._timer is None
    assert stream.state == CANCELLED and stream.last_seq == emitted < 1000
    assert hub.statistics().streams_cancelled == 1


async def test_a_stream_nobody_listens_to_is_cancelled_after_the_idle_timeout() -> None:
    hub = Hub(encode_token, idle_timeout_s=0.2 * UNIT, retention_s=3600)
    await hub.start()
    try:
        watched = await hub.create(GenParams(tokens=1000, rate=20.0))
        orphan = await hub.create(GenParams(tokens=1000, rate=20.0))
        with watched.listening():
            async with asyncio.timeout(5 * UNIT):
                while not orphan.done:
                    await orphan.wait_beyond(orphan.last_seq)
            assert orphan.reason == "idle"
            assert not watched.done  # a listener keeps it alive
        assert hub.statistics().streams_idle_cancelled == 1
    finally:
        await hub.aclose()


async def test_finished_streams_are_forgotten_after_retention(hub: Hub) -> None:
    stream = await hub.create(FAST)
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    assert stream.finished_s is not None
    hub.reap(now_s=stream.finished_s + hub.retention_s - 1)
    assert await hub.get(stream.id) is stream
    hub.reap(now_s=stream.finished_s + hub.retention_s + 1)  # +1: clear of float rounding
    with pytest.raises(StreamNotFound):
        await hub.get(stream.id)
    assert hub.statistics().streams_expired == 1


async def test_the_hub_refuses_streams_beyond_its_limit(hub: Hub) -> None:
    for _ in range(4):
        await hub.create(GenParams(tokens=5, rate=1.0, ttft_ms=10_000))
    with pytest.raises(StreamLimitError):
        await hub.create(FAST)


async def test_payload_is_encoded_once_and_shared(hub: Hub) -> None:
    stream = await hub.create(FAST)
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    first = stream.log[0]
    assert first.payload == encode_token(stream.id, 1, first.t_emit_ns, first.text, FAST)
    assert stream.since(0)[0].payload is first.payload
