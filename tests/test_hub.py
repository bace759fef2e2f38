"""The hub: ids and seqs, replay from any cursor, cancellation, idle cancel, retention;
ownership, running-stream limits, the memory budget and per-client quotas."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from streams.errors import PermissionDenied, QuotaExceeded, StreamLimitError, StreamNotFound
from streams.generator import texts
from streams.hub import CANCELLED, DONE, TOKEN_OVERHEAD, Hub, Stream
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
    for client in ("a", "a", "b", "b"):  # 2 each: ceil(4 x 0.5), a client's share
        await hub.create(GenParams(tokens=5, rate=1.0, ttft_ms=10_000), client=client)
    with pytest.raises(StreamLimitError) as refused:
        await hub.create(FAST, client="c")
    assert refused.value.status == 503 and refused.value.retry_after_s


async def test_payload_is_encoded_once_and_shared(hub: Hub) -> None:
    stream = await hub.create(FAST)
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    first = stream.log[0]
    assert first.payload == encode_token(stream.id, 1, first.t_emit_ns, first.text, FAST)
    assert stream.since(0)[0].payload is first.payload


# -- ownership, limits, memory budget, quotas: no timing involved. A stream of ONE token due
# at once is emitted and finished inside create(); a RUNNING one emits its first token there
# and the next 10 s later. The clock is fixed, so every token of a seed costs the same bytes.

ONE = GenParams(tokens=1, rate=1.0, ttft_ms=0.0, seed=3)
RUNNING = GenParams(tokens=100, rate=0.1, ttft_ms=0.0, seed=3)
NOW_NS = 1_764_000_000_000_000_000


def budget_hub(budget_bytes: int = 1 << 30, **options: object) -> Hub:
    options = {"retention_s": 3600, "idle_timeout_s": 3600, **options}
    return Hub(encode_token, memory_budget_bytes=budget_bytes, clock_ns=lambda: NOW_NS,
               **options)  # type: ignore[arg-type]  # fmt: skip


async def token_bytes() -> int:
    """What one token of ONE or RUNNING costs, as accounted."""
    stream = await budget_hub().create(ONE)
    (token,) = stream.log
    assert stream.held_bytes == len(token.payload) + len(token.text) + TOKEN_OVERHEAD
    return stream.held_bytes


def held(hub: Hub) -> int:
    assert hub.held_bytes == sum(s.held_bytes for s in hub._streams.values())  # incremental
    return hub.statistics().held_bytes


async def test_stream_ids_are_128_random_bits() -> None:
    hub = budget_hub()
    ids = {(await hub.create(ONE)).id for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


async def test_only_the_owner_may_use_a_stream() -> None:
    hub = budget_hub()
    stream = await hub.create(RUNNING, owner="alice", client="alice")
    calls = (
        lambda owner: hub.get(stream.id, owner=owner),
        lambda owner: hub.readable(stream.id, 0, owner=owner),
        lambda owner: hub.describe(stream.id, owner=owner),
        lambda owner: hub.cancel(stream.id, owner=owner),
    )
    for call in calls:
        with pytest.raises(PermissionDenied) as refused:
            await call("bob")
        assert refused.value.status == 403 and "alice" not in refused.value.message
        with pytest.raises(PermissionDenied):
            await call("")  # anonymous is another identity
    assert not stream.done  # the refused cancel did nothing
    assert (await hub.describe(stream.id, owner="alice"))["owned"] is True
    assert await hub.readable(stream.id, 0) is stream  # None: the hub's own callers
    await hub.cancel(stream.id, owner="alice")
    assert stream.state == CANCELLED
    anonymous = await hub.create(ONE)
    assert (await hub.get(anonymous.id, owner="")) is anonymous
    assert anonymous.describe()["owned"] is False


async def test_max_streams_counts_running_streams_only() -> None:
    hub = budget_hub(max_streams=10)
    for _ in range(100):  # each finishes inside create: never more than 0 running
        await hub.create(ONE, client="a")
    stats = hub.statistics()
    assert (stats.streams_running, stats.streams_held, stats.clients) == (0, 100, 0)
    for _ in range(5):  # ceil(10 x 0.5) running for one client
        await hub.create(RUNNING, client="a")
    with pytest.raises(QuotaExceeded) as refused:
        await hub.create(RUNNING, client="a")
    assert refused.value.status == 429 and refused.value.retry_after_s
    for _ in range(5):  # another client's share is its own
        await hub.create(RUNNING, client="b")
    with pytest.raises(StreamLimitError) as full:
        await hub.create(RUNNING, client="c")
    assert full.value.status == 503 and full.value.retry_after_s
    assert hub.statistics().clients == 2
    a_stream = next(s for s in hub._streams.values() if s.client == "a" and not s.done)
    await hub.cancel(a_stream.id)  # a running stream ends: room again
    await hub.create(RUNNING, client="c")
    assert hub.statistics().streams_running == 10


async def test_over_the_budget_finished_streams_go_first_finished_first() -> None:
    c = await token_bytes()
    hub = budget_hub(3 * c + c // 2, client_share=1.0)
    late = await hub.create(RUNNING)  # created first, finished last
    early = [await hub.create(ONE) for _ in range(2)]
    await hub.cancel(late.id)
    assert held(hub) == 3 * c
    newest = await hub.create(ONE)  # 4 tokens > 3.5: the first finished goes
    assert held(hub) == 3 * c and hub.statistics().evicted == 1
    with pytest.raises(StreamNotFound):
        await hub.get(early[0].id)
    await hub.create(ONE)
    await hub.create(ONE)
    with pytest.raises(StreamNotFound):
        await hub.get(early[1].id)
    with pytest.raises(StreamNotFound):
        await hub.get(late.id)  # it finished after those two, and went after them
    assert await hub.get(newest.id) is newest
    assert held(hub) == 3 * c and hub.statistics().evicted == 3


async def test_an_append_past_the_budget_cancels_its_stream_within_one_batch() -> None:
    c = await token_bytes()
    budget = 2 * c + c // 2
    hub = budget_hub(budget, client_share=1.0)
    running = [await hub.create(RUNNING, client=f"c{i}") for i in range(2)]
    third = await hub.create(RUNNING, client="c2")  # 2 tokens held < 2.5: admitted
    assert third.state == CANCELLED and third.reason == "memory budget"
    assert budget < held(hub) == 3 * c <= budget + c  # the bound: one batch over, no more
    assert hub.statistics().budget_cancelled == 1
    assert not any(s.done for s in running)
    fourth = await hub.create(RUNNING, client="c3")  # the cancelled one is forgotten first
    assert fourth.reason == "memory budget" and hub.statistics().evicted == 1
    assert held(hub) == 3 * c <= budget + c


async def test_a_budget_spent_by_running_streams_refuses_new_ones_with_503() -> None:
    c = await token_bytes()
    hub = budget_hub(2 * c, client_share=1.0)
    first = await hub.create(RUNNING)
    await hub.create(RUNNING)
    assert held(hub) == 2 * c and hub.statistics().budget_cancelled == 0
    with pytest.raises(StreamLimitError) as refused:
        await hub.create(RUNNING)
    assert refused.value.status == 503 and refused.value.retry_after_s
    await hub.cancel(first.id)  # finished: forgotten for the next one
    await hub.create(RUNNING)
    assert held(hub) == 2 * c and hub.statistics().evicted == 1


async def test_a_client_past_its_byte_share_loses_its_own_stream_only() -> None:
    c = await token_bytes()
    hub = budget_hub(4 * c - 2)  # a client's share: 2 tokens less a byte
    kept = await hub.create(RUNNING, client="greedy")
    over = await hub.create(RUNNING, client="greedy")
    assert over.state == CANCELLED and over.reason == "memory quota" and not kept.done
    assert hub.statistics().quota_cancelled == 1
    with pytest.raises(QuotaExceeded) as refused:  # its finished stream still counts
        await hub.create(ONE, client="greedy")
    assert refused.value.status == 429 and refused.value.retry_after_s
    other = await hub.create(RUNNING, client="other")  # independent of greedy's
    assert not other.done and held(hub) == 3 * c


async def test_per_client_counters_are_dropped_at_zero() -> None:
    hub = budget_hub()
    streams = [await hub.create(RUNNING, client=f"c{i}") for i in range(20)]
    assert hub.statistics().clients == 20 and hub._ledger.statistics().clients_holding == 20
    for stream in streams:
        await hub.cancel(stream.id)
    assert hub.statistics().clients == 0  # the ledger's per-client entries go at zero
    hub.reap(now_s=max(s.finished_s or 0.0 for s in streams) + hub.retention_s + 1)
    assert hub._ledger.statistics().clients_holding == 0 and held(hub) == 0
    assert hub._streams == {}


async def test_relayed_tokens_are_accounted_as_they_arrive() -> None:
    async def source(params: GenParams, messages: object) -> AsyncIterator[str]:
        for text in (" one", " two", " three"):
            yield text

    hub = budget_hub(source=source)
    stream: Stream = await hub.create(GenParams(tokens=3))
    async with asyncio.timeout(5 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    assert stream.state == DONE
    assert held(hub) == sum(len(t.payload) + len(t.text) + TOKEN_OVERHEAD for t in stream.log)


async def test_a_stream_far_behind_its_schedule_emits_in_bounded_batches() -> None:
    from streams.hub import EMIT_BATCH

    hub = budget_hub()
    due_at_once = GenParams(tokens=3 * EMIT_BATCH + 5, rate=100_000.0, ttft_ms=0.0, seed=3)
    stream = await hub.create(due_at_once)  # every token is due by the first callback
    sizes: list[int] = []
    stream.attach(lambda: sizes.append(stream.last_seq))  # called once per wake
    async with asyncio.timeout(10 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    batches = [b - a for a, b in zip([0, *sizes], sizes, strict=False) if b > a]
    assert stream.last_seq == due_at_once.tokens and sum(batches) == due_at_once.tokens
    assert max(batches) <= EMIT_BATCH and len(batches) >= 4  # the loop ran between batches


async def test_a_share_is_checked_after_every_batch_not_every_stream() -> None:
    from streams.hub import EMIT_BATCH

    c = await token_bytes()
    share = 2 * EMIT_BATCH * c  # a client's half of the budget: two batches' worth
    hub = budget_hub(2 * share)
    big = GenParams(tokens=40 * EMIT_BATCH, rate=100_000.0, ttft_ms=0.0, seed=3)
    stream = await hub.create(big, client="greedy")
    async with asyncio.timeout(10 * UNIT):
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    assert stream.reason == "memory quota"
    # cancelled within one batch past its share (tokens of this seed cost `c` or less)
    assert share < stream.held_bytes <= share + EMIT_BATCH * c
    assert stream.last_seq <= 3 * EMIT_BATCH
