"""The shared log (streams/redislog.py) against a real redis-server: several `RedisHub`s in
one event loop stand for several nodes. What a node's death does over processes is
tests/test_failover.py; here each rule of the theory of operation, one at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from netem.redis import RedisServer, redis_binary
from streams.errors import (
    HistoryGone,
    LogUnavailable,
    PermissionDenied,
    StreamLimitError,
    StreamNotFound,
)
from streams.generator import texts
from streams.hub import CANCELLED, DONE, TOKEN_OVERHEAD, Stream, Token
from streams.params import GenParams
from streams.redislog import RedisHub, parse_url
from streams.resp import encode_command
from tests.support import UNIT
from transports.token import encode_token

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed")

LEASE_MS = 300
SLOW = GenParams(tokens=30, rate=50.0, ttft_ms=0.0, seed=4)  # 0.6 s


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def nodes(redis: RedisServer) -> AsyncIterator[list[RedisHub]]:
    """Start `RedisHub`s on demand with `hubs.append(await node(...))`; all closed after."""
    redis.call("FLUSHALL")
    hubs: list[RedisHub] = []
    yield hubs
    for hub in hubs:
        with contextlib.suppress(Exception):
            await hub.aclose()


async def node(redis: RedisServer, name: str, **options: object) -> RedisHub:
    hub = RedisHub(encode_token, redis.url, node_id=name, lease_ms=LEASE_MS, **options)  # type: ignore[arg-type]
    await hub.start()
    return hub


def crash(hub: RedisHub) -> None:
    """What SIGKILL leaves of a node: no more timers, tasks or bytes, and no goodbye (its
    lease lapses on its own)."""
    for stream in hub._streams.values():
        if stream._timer is not None:
            stream._timer.cancel()
    for task in [*hub._tasks, hub._reaper]:
        if task is not None:
            task.cancel()
    hub._available = False  # its connections' loss must not run the lost-log path
    for conn in (hub._ctl, hub._follower):
        if conn is not None and conn._writer is not None:
            conn._writer.transport.abort()


async def until(stream: Stream, seq: int) -> None:
    """Wait until `stream` holds seq `seq` (a wake-up only says the log changed)."""
    async with asyncio.timeout(5 * UNIT):
        while stream.last_seq < seq and not stream.done:
            await stream.wait_beyond(stream.last_seq)
    assert stream.last_seq >= seq


async def read_all(stream: Stream, after: int = 0) -> list[tuple[int, str]]:
    async with asyncio.timeout(10 * UNIT):
        while not stream.done or stream.last_seq > after:
            got = stream.since(after)
            if got:
                after += len(got)
                continue
            if stream.done:
                break
            await stream.wait_beyond(after)
    return [(t.seq, t.text) for t in stream.since(0)]


def test_urls() -> None:
    assert parse_url("redis://h:7000/3") == ("h", 7000, 3, "")
    assert parse_url("redis://:s%40cret@h") == ("h", 6379, 0, "s@cret")
    for bad in ("http://h", "redis://", "redis://h:x", "redis://h/db"):
        with pytest.raises(Exception, match="--log must look like"):
            parse_url(bad)


async def test_a_stream_made_on_one_node_is_read_live_on_another(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a, b = await node(redis, "a"), await node(redis, "b")
    nodes += [a, b]
    made = await a.create(SLOW)
    seen = await b.readable(made.id)
    assert seen is not made and not seen.done  # a replica, following the log
    assert await read_all(seen) == await read_all(made)
    assert seen.state == DONE and [t.payload for t in seen.log] == [t.payload for t in made.log]
    assert b.log_statistics()["replicas"] == 1 and a.log_statistics()["claims"] == 0


async def test_a_survivor_takes_over_when_a_reader_comes_and_keeps_the_seeded_text(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a, b = await node(redis, "a"), await node(redis, "b")
    nodes += [a, b]
    made = await a.create(SLOW)
    await until(made, 6)
    crash(a)
    await asyncio.sleep(LEASE_MS / 1e3 + 0.05)  # the lease lapses: the owner is dead
    taken = await b.readable(made.id)
    assert b.log_statistics()["takeovers"] == 1
    got = await read_all(taken)
    assert [s for s, _ in got] == list(range(1, 31))
    assert "".join(t for _, t in got) == "".join(texts(SLOW))


async def test_the_sweep_takes_over_a_stream_nobody_reads(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a, b = await node(redis, "a"), await node(redis, "b")
    nodes += [a, b]
    made = await a.create(SLOW)
    crash(a)
    async with asyncio.timeout(5 * UNIT):
        while made.id not in b._streams:  # b's sweep runs every half lease
            await asyncio.sleep(0.02)
    assert [s for s, _ in await read_all(b.local(made.id))] == list(range(1, 31))


async def test_a_cancel_on_another_node_fences_the_owner(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a, b = await node(redis, "a"), await node(redis, "b")
    nodes += [a, b]
    made = await a.create(GenParams(tokens=1000, rate=50.0, ttft_ms=0.0))
    await until(made, 4)
    seen = await b.cancel(made.id, reason="user")
    assert seen.state == CANCELLED and seen.reason == "user"
    async with asyncio.timeout(5 * UNIT):  # the owner's next append is refused: it stops
        while not made.done:
            await made.wait_beyond(made.last_seq)
    assert made.state == CANCELLED and made.reason == "user"
    assert made.last_seq <= seen.last_seq + 1  # at most the one token already in flight
    assert a.log_statistics()["fenced"] == 1


async def test_a_stalled_owner_that_lost_its_lease_is_fenced_and_follows(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a, b = await node(redis, "a"), await node(redis, "b")
    nodes += [a, b]
    made = await a.create(SLOW)
    await until(made, 4)
    redis.call("DEL", "pl:lease:a")  # as if a had stalled past its lease
    await b.readable(made.id)  # b claims at once and generates from the last logged seq
    got = await read_all(made)  # a's own readers see every seq once, to the end
    assert [s for s, _ in got] == list(range(1, 31))
    assert a.log_statistics()["fenced"] >= 1 and b.log_statistics()["takeovers"] == 1


async def test_a_resume_from_before_the_kept_history_is_told_of_the_gap(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a = await node(redis, "a", max_len=5)
    b = await node(redis, "b")
    nodes += [a, b]
    made = await a.create(GenParams(tokens=20, rate=1000.0, ttft_ms=0.0))
    await read_all(made)
    await asyncio.sleep(0.05)  # the end entry is flushed
    with pytest.raises(HistoryGone, match="keeps tokens from seq 16 on") as info:
        await b.readable(made.id, after=3)
    assert info.value.status == 410
    kept = await b.readable(made.id, after=15)
    assert [t.seq for t in kept.since(15)] == [16, 17, 18, 19, 20] and kept.state == DONE


async def test_every_node_checks_the_owner_a_stream_was_created_with(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a, b = await node(redis, "a"), await node(redis, "b")
    nodes += [a, b]
    made = await a.create(SLOW, owner="alice", client="alice")
    for hub in (b, a):  # b: a replica read from the log; a: the stream itself
        with pytest.raises(PermissionDenied, match="another identity") as refused:
            await hub.readable(made.id, 0, owner="bob")
        assert refused.value.status == 403 and "alice" not in refused.value.message
        with pytest.raises(PermissionDenied):
            await hub.describe(made.id, owner="")
        with pytest.raises(PermissionDenied):
            await hub.cancel(made.id, owner="bob")
    assert not made.done  # neither refused cancel reached the log
    seen = await b.readable(made.id, 0, owner="alice")
    assert seen.owner == "alice" and seen.client == "alice"
    await until(made, 4)
    crash(a)
    await asyncio.sleep(LEASE_MS / 1e3 + 0.05)
    taken = await b.readable(made.id, owner="alice")  # b takes it over: the owner goes too
    assert b.log_statistics()["takeovers"] == 1 and taken.owner == "alice"
    assert made.id in b._streams and b.statistics().streams_running == 1
    with pytest.raises(PermissionDenied):
        await b.cancel(made.id, owner="bob")
    await b.cancel(made.id, owner="alice")
    assert taken.state == CANCELLED


async def test_replicas_count_in_the_memory_budget(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a, b = await node(redis, "a"), await node(redis, "b", memory_budget_bytes=1)
    nodes += [a, b]
    made = await a.create(GenParams(tokens=5, rate=1000.0, ttft_ms=0.0), client="x")
    await read_all(made)
    await asyncio.sleep(0.05)  # the end entry is flushed
    seen = await b.readable(made.id)  # a history is read in whole: accounted, not cut
    cost = sum(len(t.payload) + len(t.text) + TOKEN_OVERHEAD for t in seen.log)
    assert seen.state == DONE and seen.held_bytes == b.held_bytes == cost > 0
    assert b.statistics().held_bytes == cost
    with pytest.raises(StreamLimitError):  # b's budget is spent: no replica of another one
        await b.readable((await a.create(SLOW)).id)
    b.reap()  # nobody reads the finished replica: dropped, and its bytes with it
    assert b.held_bytes == 0 and b._ledger.statistics().clients_holding == 0


async def test_a_node_forgets_its_finished_streams_for_the_budget_and_the_log_keeps_them(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    one = GenParams(tokens=1, rate=1.0, ttft_ms=0.0, seed=3)  # emitted and ended in create
    probe = await node(redis, "probe")
    nodes.append(probe)
    cost = (await probe.create(one)).held_bytes
    a = await node(redis, "a", memory_budget_bytes=2 * cost + cost // 2, client_share=1.0)
    nodes.append(a)
    first, second, third = [await a.create(one) for _ in range(3)]
    assert first.id not in a._streams and a.statistics().evicted == 1
    assert a.held_bytes == 2 * cost == second.held_bytes + third.held_bytes
    again = await a.readable(first.id)  # forgotten here, not in the log: read back from it
    assert again is not first and [t.text for t in again.log] == [t.text for t in first.log]
    # the replica's token is held like any other: the next finished stream made room for it
    assert second.id not in a._streams and a.statistics().evicted == 2
    assert a.held_bytes == 2 * cost == third.held_bytes + again.held_bytes
    a.reap(now_s=(third.finished_s or 0.0) + a.retention_s + 1)  # and the replica, unread
    assert a._streams == {} and a.statistics().streams_expired == 1 and a.held_bytes == 0


async def test_unknown_streams_are_404_on_every_node(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a = await node(redis, "a")
    nodes.append(a)
    with pytest.raises(StreamNotFound):
        await a.readable("0123456789abcdef0123456789abcdef")


async def test_losing_redis_ends_running_streams_with_a_reason_and_refuses_new_ones(
    nodes: list[RedisHub],
) -> None:
    with RedisServer() as own:  # this test kills its Redis
        port = int(own.url.rsplit(":", 1)[1])
        a = await node(own, "a")
        nodes.append(a)
        made = await a.create(GenParams(tokens=1000, rate=50.0, ttft_ms=0.0))
        own.stop()
        async with asyncio.timeout(5 * UNIT):
            while not made.done:
                await made.wait_beyond(made.last_seq)
        assert made.state == CANCELLED and made.reason.startswith("log unavailable")
        with pytest.raises(LogUnavailable):
            await a.create(SLOW)
    with RedisServer(port=port) as again:  # back on the same address: the node reconnects
        async with asyncio.timeout(10 * UNIT):
            while not a.log_statistics()["available"]:
                await asyncio.sleep(0.05)
        assert (await a.create(GenParams(tokens=2, ttft_ms=0.0))).id
        assert again.call("EXISTS", "pl:lease:a") == 1


async def test_a_stream_read_only_through_another_node_is_not_idle(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a = await node(redis, "a", idle_timeout_s=0.6)
    b = await node(redis, "b", idle_timeout_s=0.6)
    nodes += [a, b]
    made = await a.create(GenParams(tokens=100, rate=50.0, ttft_ms=0.0))  # 2 s
    seen = await b.readable(made.id)
    with seen.listening():
        got = await read_all(seen)
    assert made.state == DONE and len(got) == 100  # a's reaper saw b's reader


async def test_a_relayed_stream_is_continued_by_asking_the_upstream_for_the_rest(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    asked: list[tuple[int, list[dict[str, object]] | None]] = []

    async def upstream(
        params: GenParams, messages: list[dict[str, object]] | None
    ) -> AsyncIterator[str]:
        """A model stand-in: says which request it got, then word i of the rest, paced."""
        asked.append((params.tokens, messages))
        for i in range(params.tokens):
            await asyncio.sleep(0.02)
            yield f" w{len(asked)}.{i}"

    prompt = [{"role": "user", "content": "hi"}]
    a = await node(redis, "a", source=upstream)
    b = await node(redis, "b", source=upstream)
    nodes += [a, b]
    made = await a.create(GenParams(tokens=12, ttft_ms=0.0), prompt)
    await until(made, 5)
    crash(a)
    await asyncio.sleep(LEASE_MS / 1e3 + 0.05)
    got = await read_all(await b.readable(made.id))
    k = len([t for t in got if t[1].startswith(" w1.")])  # what a logged before it died
    assert [s for s, _ in got] == list(range(1, 13)) and k >= 4
    so_far = "".join(t for _, t in got[:k])
    assert asked[1] == (12 - k, [*prompt, {"role": "assistant", "content": so_far}])
    assert [t for _, t in got[k:]] == [f" w2.{i}" for i in range(12 - k)]


async def test_a_node_that_finds_its_lease_lapsed_claims_back_what_nobody_took(
    redis: RedisServer, nodes: list[RedisHub]
) -> None:
    a = await node(redis, "a")
    nodes.append(a)
    made = await a.create(SLOW)
    await until(made, 4)
    redis.call("DEL", "pl:lease:a")  # as if a had stalled: its next renewal finds no lease
    got = await read_all(made)
    assert [s for s, _ in got] == list(range(1, 31))
    assert a.log_statistics()["lapsed"] == 1 and a.log_statistics()["takeovers"] == 1
    assert made.state == DONE


@pytest.mark.parametrize("max_len", [0, 7])
def test_the_per_token_xadd_is_the_codecs_bytes(max_len: int) -> None:
    hub = RedisHub(encode_token, "redis://127.0.0.1:1", max_len=max_len)
    token = Token(12, 1_795_998_613_746_281_353, " ünï\r\n", b'{"seq":12,"text":"x"}')
    trim = ("MAXLEN", max_len) if max_len else ()
    expected = encode_command("XADD", "pl:s:abc", *trim, "12-0", "t", token.t_emit_ns,
                              "x", token.text, "p", token.payload)  # fmt: skip
    assert hub.xadd("abc", token) == expected
    assert hub.xadd("abc", token._replace(seq=1)) == expected.replace(b"$4\r\n12-0", b"$3\r\n1-0")
