"""`transports.web.common.deliver`: the reader that writes from the hub's emitting callback.

Against a real hub: whether a write finishes at once (the emitting callback ran it), suspends
(a full socket: the reader's task takes the write over) or raises (a closed connection),
every token is written once, in order, and the hub keeps emitting for everyone else; a
backlog goes out in bounded chunks, and only a write that waits for the socket is timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from streams.hub import Hub, Stream, Token
from streams.params import GenParams
from tests.support import UNIT
from transports.token import encode_token
from transports.web import common
from transports.web.common import (
    TOKEN_FRAMING_BYTES,
    WRITE_CHUNK_BYTES,
    WriteTimeout,
    chunk_end,
    deliver,
)

MANY = GenParams(tokens=40, rate=2000.0, ttft_ms=0.0, seed=3)


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = Hub(encode_token, retention_s=3600, idle_timeout_s=3600)
    await h.start()
    yield h
    await h.aclose()


async def test_every_token_once_in_order_when_written_from_the_emitting_callback(
    hub: Hub,
) -> None:
    stream = await hub.create(MANY)
    seqs: list[int] = []
    in_task: list[bool] = []

    async def write(batch: list[Token]) -> None:
        seqs.extend(t.seq for t in batch)
        in_task.append(asyncio.current_task() is not None)

    async with asyncio.timeout(5 * UNIT):
        await deliver(stream, 0, write)
    assert seqs == list(range(1, 41))
    assert stream.done and stream._pushers == ()
    assert False in in_task  # some batches went out from the hub's timer callback itself


async def test_a_write_that_waits_for_the_socket_is_finished_by_the_task(hub: Hub) -> None:
    stream = await hub.create(MANY)
    socket_free = asyncio.get_running_loop().create_future()
    seqs: list[int] = []
    finished: list[int] = []
    suspended_in: list[asyncio.Task[Any] | None] = []

    async def write(batch: list[Token]) -> None:
        seqs.extend(t.seq for t in batch)  # in the socket's buffer: written
        if batch and batch[0].seq >= 5 and not socket_free.done():
            suspended_in.append(asyncio.current_task())
            await socket_free  # what aiohttp's drain does when the buffer is full
        finished.append(batch[-1].seq)

    reader = asyncio.create_task(deliver(stream, 0, write))
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:  # the hub goes on while the write waits
            await stream.wait_beyond(stream.last_seq)
        assert finished[-1] < 40 and reader.done() is False
        socket_free.set_result(None)
        await reader
    assert seqs == list(range(1, 41))
    assert finished[-1] == 40
    assert suspended_in == [None]  # begun by the timer callback, finished by the reader's task


async def test_a_failed_write_ends_that_reader_only(hub: Hub) -> None:
    stream = await hub.create(MANY)
    seqs: list[int] = []

    def broken(batch: list[Token]) -> Coroutine[Any, Any, None]:
        if batch and batch[-1].seq >= 3:
            raise ConnectionResetError("Cannot write to closing transport")
        return asyncio.sleep(0)

    async def write(batch: list[Token]) -> None:
        seqs.extend(t.seq for t in batch)

    async with asyncio.timeout(5 * UNIT):
        healthy = asyncio.create_task(deliver(stream, 0, write))
        with pytest.raises(ConnectionResetError):
            await deliver(stream, 0, broken)
        await healthy
    assert seqs == list(range(1, 41)) and stream.last_seq == 40
    assert stream.listeners == 0 and stream._pushers == ()


async def test_keep_alive_while_no_token_comes(hub: Hub) -> None:
    stream: Stream = await hub.create(GenParams(tokens=1, rate=1.0, ttft_ms=60_000))
    beats = asyncio.Event()
    count = 0

    async def write(batch: list[Token]) -> None:
        nonlocal count
        assert batch == []  # no token is due for a minute
        count += 1
        if count == 3:
            beats.set()

    reader = asyncio.create_task(deliver(stream, 0, write, heartbeat_s=0.01))
    async with asyncio.timeout(5 * UNIT):
        await beats.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert stream.listeners == 0 and stream._pushers == ()


async def test_a_backlog_is_written_in_bounded_chunks(hub: Hub) -> None:
    stream = await hub.create(GenParams(tokens=3000, rate=100_000.0, ttft_ms=0.0, seed=3))
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    batches: list[list[Token]] = []

    async def write(batch: list[Token]) -> None:
        batches.append(batch)

    await deliver(stream, 0, write)
    assert [t.seq for batch in batches for t in batch] == list(range(1, 3001))
    assert len(batches) > 1  # 3,000 tokens of ~80 bytes are more than one chunk
    for batch in batches:
        assert batch
        assert sum(len(t.payload) + TOKEN_FRAMING_BYTES for t in batch) <= WRITE_CHUNK_BYTES


def test_a_chunk_holds_at_least_one_token_and_never_more_than_the_limit() -> None:
    def token(size: int) -> Token:
        return Token(1, 0, "", b"x" * size)

    assert chunk_end([token(200_000), token(1)], 0) == 1  # one token larger than a chunk
    assert chunk_end([token(1), token(200_000)], 1) == 2
    mixed = [token(10)] + [token(1000)] * 200  # the first token is no guide to the others
    end = chunk_end(mixed, 0)
    assert 1 < end < len(mixed)
    assert sum(len(t.payload) + TOKEN_FRAMING_BYTES for t in mixed[:end]) <= WRITE_CHUNK_BYTES


async def test_a_write_stuck_longer_than_the_timeout_ends_the_reader(hub: Hub) -> None:
    stream = await hub.create(MANY)
    never = asyncio.get_running_loop().create_future()  # a socket nobody reads

    async def write(batch: list[Token]) -> None:
        if batch and batch[-1].seq >= 5:
            await never

    async with asyncio.timeout(5 * UNIT):
        with pytest.raises(WriteTimeout):
            await deliver(stream, 0, write, write_timeout_s=0.05)
    assert stream.listeners == 0 and stream._pushers == ()  # gone: the reaper may end it
    never.cancel()


async def test_only_a_write_that_waits_is_timed(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[object] = []
    real_within = common.within

    async def counting_within(pending: Any, timeout_s: float) -> None:
        timed.append(pending)
        await real_within(pending, timeout_s)

    monkeypatch.setattr(common, "within", counting_within)
    stream = await hub.create(MANY)
    socket_free = asyncio.get_running_loop().create_future()
    seqs: list[int] = []

    async def write(batch: list[Token]) -> None:
        seqs.extend(t.seq for t in batch)
        if batch and batch[-1].seq >= 20 and not socket_free.done():
            asyncio.get_running_loop().call_later(0.01, socket_free.set_result, None)
            await socket_free  # drains in time

    async with asyncio.timeout(5 * UNIT):
        await deliver(stream, 0, write, write_timeout_s=5 * UNIT)
    assert seqs == list(range(1, 41))
    assert len(timed) == 1  # the one write that waited, not one timer per token
