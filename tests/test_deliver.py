"""`transports.web.common.deliver`: the reader that writes from the hub's emitting callback.

Against a real hub: whether a write finishes at once (the emitting callback ran it), suspends
(a full socket: the reader's task takes the write over) or raises (a closed connection),
every token is written once, in order, and the hub keeps emitting for everyone else.
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
from transports.web.common import deliver

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
