"""The fault proxy (netem.proxy) and its conditions string (netem.conditions).

Every server here listens on 127.0.0.1 port 0; every timeout is a multiple of UNIT. Timing
tolerances (scheduler slack, not the asked-for values) scale with UNIT too.
"""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netem.conditions import (
    Conditions,
    NetSpec,
    NetSpecError,
    ReleaseSchedule,
    Shaper,
    TokenBucket,
    format_net,
    parse_net,
)
from netem.proxy import FaultProxy, main
from tests.support import UNIT, wait_until_async

pytestmark = pytest.mark.timeout(UNIT * 20)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Arrivals = list[tuple[float, int]]  # (loop time, bytes) of each read


class Upstream:
    """A server on 127.0.0.1:0 running `handler` per connection; exits only when they have."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.peer_errors: list[ConnectionError] = []

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self

    def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.create_task(self._run(reader, writer)))

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        except ConnectionError as exc:  # cut and reset tests expect some
            self.peer_errors.append(exc)
        finally:
            writer.transport.abort()

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        async with asyncio.timeout(UNIT * 2):
            await asyncio.gather(*self._tasks)
        await self._server.wait_closed()


@asynccontextmanager
async def proxied(handler: Handler, net: str = "") -> AsyncIterator[tuple[Upstream, FaultProxy]]:
    async with (
        Upstream(handler) as upstream,
        FaultProxy("127.0.0.1", upstream.port, parse_net(net)) as proxy,
    ):
        yield upstream, proxy


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_to_eof(reader: asyncio.StreamReader) -> tuple[bytes, Arrivals]:
    loop = asyncio.get_running_loop()
    data, arrivals = bytearray(), []
    while chunk := await reader.read(65536):
        arrivals.append((loop.time(), len(chunk)))
        data += chunk
    return bytes(data), arrivals


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


def sender(payload: bytes) -> Handler:
    """Send `payload` at once, then FIN, then wait for the client's EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        await reader.read()

    return handler


PAYLOAD = random.Random(7).randbytes(10_000)


# -- forwarding ------------------------------------------------------------------------------


async def test_forwards_both_directions_byte_exact() -> None:
    data = random.Random(1).randbytes(300_000)
    async with proxied(echo) as (_, proxy):
        reader, writer = await connect(proxy.port)

        async def upload() -> None:
            for i in range(0, len(data), 7_000):
                writer.write(data[i : i + 7_000])
                await writer.drain()
            writer.write_eof()

        async with asyncio.timeout(UNIT * 5), asyncio.TaskGroup() as group:
            group.create_task(upload())
            received = group.create_task(read_to_eof(reader))
        writer.close()
        async with asyncio.timeout(UNIT * 2):
            await proxy.wait_idle()
        stats = proxy.statistics()
    assert received.result()[0] == data
    assert (stats.bytes_up, stats.bytes_down) == (len(data), len(data))
    assert (stats.bytes_up_received, stats.bytes_down_received) == (len(data), len(data))
    assert (stats.connections_total, stats.connections_open, stats.cuts) == (1, 0, 0)
    (conn,) = stats.conns
    assert conn.end == "eof" and conn.error is None
    assert conn.ended_s is not None and conn.ended_s >= conn.started_s
    assert (conn.bytes_up, conn.bytes_down) == (len(data), len(data))


async def test_half_close_lets_server_answer_after_client_eof() -> None:
    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's FIN
        writer.write(request.upper())
        await writer.drain()
        writer.write_eof()

    async with proxied(shout, "delay=5ms") as (_, proxy):
        reader, writer = await connect(proxy.port)
        writer.write(b"hello")
        writer.write_eof()
        async with asyncio.timeout(UNIT * 2):
            assert (await read_to_eof(reader))[0] == b"HELLO"
        writer.close()


async def test_reset_by_upstream_is_counted_not_raised() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with proxied(rude) as (_, proxy):
        reader, writer = await connect(proxy.port)
        writer.write(b"x")
        async with asyncio.timeout(UNIT * 2):
            with pytest.raises(ConnectionResetError):
                await reader.read()
            await proxy.wait_idle()
        writer.close()
        stats = proxy.statistics()
    assert (stats.resets, stats.conns[0].end) == (1, "reset")
    assert "ConnectionResetError" in (stats.conns[0].error or "")


async def test_clients_resetting_at_once_are_counted_not_raised() -> None:
    loop = asyncio.get_running_loop()
    async with proxied(echo) as (_, proxy):
        for i in range(20):  # reset before, during and after the proxy's upstream connect
            with socket.socket() as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await asyncio.sleep(0.001 * (i % 3))
        await wait_until_async(
            lambda: proxy.statistics().connections_total >= 20,
            timeout_units=2,
            what="the proxy has counted all 20 connections",
        )
        async with asyncio.timeout(UNIT * 2):
            await proxy.wait_idle()
        stats = proxy.statistics()
    assert (stats.connections_open, stats.resets) == (0, 20)


async def test_upstream_refused_resets_client() -> None:
    with socket.socket() as unused:  # bound, not listening: connecting is refused
        unused.bind(("127.0.0.1", 0))
        async with FaultProxy("127.0.0.1", unused.getsockname()[1]) as proxy:
            reader, writer = await connect(proxy.port)
            async with asyncio.timeout(UNIT * 2):
                with pytest.raises(ConnectionResetError):
                    await reader.read()
                await proxy.wait_idle()
            writer.close()
            stats = proxy.statistics()
    assert stats.upstream_failures == 1
    assert "ConnectionRefusedError" in (stats.conns[0].error or "")


# -- delay and jitter ------------------------------------------------------------------------


class Pinger:
    """Round trips of 32 bytes through an echo server, on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.rtts_ms: list[float] = []

    @classmethod
    async def open(cls, port: int) -> Pinger:
        pinger = cls(*await connect(port))
        await pinger.ping()  # warm-up, not recorded
        pinger.rtts_ms.clear()
        return pinger

    async def ping(self) -> None:
        started_s = time.perf_counter()
        self.writer.write(b"p" * 32)
        await self.reader.readexactly(32)
        self.rtts_ms.append((time.perf_counter() - started_s) * 1000)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rtts_ms)


@pytest.mark.parametrize(("net", "added_ms"), [("down.delay=30ms", 30.0), ("delay=15ms", 30.0)])
async def test_delay_adds_the_asked_latency(net: str, added_ms: float) -> None:
    async with proxied(echo) as (upstream, proxy):
        direct = await Pinger.open(upstream.port)
        clean = await Pinger.open(proxy.port)
        proxy.set_net(parse_net(net))  # new connections only
        delayed = await Pinger.open(proxy.port)
        async with asyncio.timeout(UNIT * 5):
            for _ in range(11):
                for pinger in (direct, clean, delayed):
                    await pinger.ping()
        for pinger in (direct, clean, delayed):
            pinger.writer.close()
    error_ms = delayed.median_ms - clean.median_ms - added_ms
    print(f"{net}: direct {direct.median_ms:.3f} ms, proxy {clean.median_ms:.3f} ms, "
          f"delayed {delayed.median_ms:.3f} ms, error {error_ms:+.3f} ms")  # fmt: skip
    assert abs(error_ms) <= 2.5 * UNIT
    assert clean.median_ms - direct.median_ms <= 2.5 * UNIT  # the live one kept clean conditions


async def test_jitter_stays_in_bounds_and_never_reorders() -> None:
    count = 200
    sent_at_s: list[float] = []

    async def numbered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for seq in range(count):
            sent_at_s.append(asyncio.get_running_loop().time())
            writer.write(b"%07d\n" % seq)
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write_eof()
        await reader.read()

    seqs: list[int] = []
    latencies_ms: list[float] = []
    async with proxied(numbered, "down.delay=20ms,down.jitter=10ms,seed=3") as (_, proxy):
        reader, writer = await connect(proxy.port)
        async with asyncio.timeout(UNIT * 5):
            while line := await reader.readline():
                seqs.append(int(line))
                latencies_ms.append((asyncio.get_running_loop().time() - sent_at_s[seqs[-1]]) * 1e3)
        writer.close()
    p95_ms = statistics.quantiles(latencies_ms, n=20)[-1]
    print(f"jitter: latency {min(latencies_ms):.3f}..{max(latencies_ms):.3f} ms, p95 {p95_ms:.3f}")
    assert seqs == list(range(count))
    assert min(latencies_ms) >= 10.0  # never early: the bound the proxy guarantees
    # Late only by scheduling slack: a tail (max) suffers CPU contention, so it is looser.
    assert p95_ms <= 30.0 + 2.0 * UNIT
    assert max(latencies_ms) <= 30.0 + 20.0 * UNIT
    assert max(latencies_ms) - min(latencies_ms) >= 10.0  # the spread is really applied


def test_release_schedule_is_seeded_ordered_and_bounded() -> None:
    cond = Conditions(delay_ms=20, jitter_ms=10)
    reads_s = [i * 0.001 for i in range(500)]

    def releases(seed: int) -> list[float]:
        schedule = ReleaseSchedule(cond, random.Random(seed))
        return [schedule.release_at(t) for t in reads_s]

    first = releases(1)
    assert first == releases(1) != releases(2)
    assert first == sorted(first)
    for read_s, release_s in zip(reads_s, first, strict=True):
        assert read_s + 0.010 <= release_s <= read_s + 0.030


# -- bandwidth, cuts, stall, slice, buffering ------------------------------------------------


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read to EOF, answer with the byte count."""
    writer.write(b"%d" % len(await reader.read()))
    writer.write_eof()


@pytest.mark.parametrize("direction", ["down", "up"])
async def test_bandwidth_paces_the_bytes(direction: str) -> None:
    payload = bytes(200_000)
    handler = sender(payload) if direction == "down" else sink
    async with proxied(handler, f"{direction}.bandwidth=8mbit") as (_, proxy):
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        reader, writer = await connect(proxy.port)
        if direction == "up":
            writer.write(payload)
            writer.write_eof()
        async with asyncio.timeout(UNIT * 5):
            received, _ = await read_to_eof(reader)
        elapsed_s = loop.time() - started_s
        writer.close()
    print(f"bandwidth {direction}: 200 kB at 8 mbit in {elapsed_s:.3f} s")
    assert received == (payload if direction == "down" else b"200000")
    assert 0.2 * 0.75 <= elapsed_s <= 0.2 * 1.25 * UNIT


def test_token_bucket_long_run_rate() -> None:
    bucket = TokenBucket(8_000_000, now_s=0.0)
    now_s, sent_bytes = 0.0, 0
    while sent_bytes < 1_000_000:
        now_s += bucket.take(bucket.capacity_bytes, now_s)
        sent_bytes += bucket.capacity_bytes
    assert now_s == pytest.approx(sent_bytes / 1_000_000)


def test_shaper_decisions_with_a_fake_clock() -> None:
    shaper = Shaper(Conditions(stall_after_bytes=100, stall_s=2.0, slice_bytes=64), now_s=0.0)
    assert not shaper.wrote(0, 0.0)
    assert shaper.next_piece(1000, 0.0) == (64, 0.0)  # sliced
    assert not shaper.wrote(64, 0.0)
    assert shaper.next_piece(1000, 0.0) == (36, 0.0)  # up to the stall point
    assert not shaper.wrote(36, 1.0)
    assert shaper.next_piece(1000, 1.5) == (64, 1.5)  # stalled until 3.0
    assert shaper.next_piece(1000, 3.0) == (64, 0.0)
    cut = Shaper(Conditions(cut_after_bytes=10), now_s=0.0)
    assert cut.next_piece(1000, 0.0) == (10, 0.0) and cut.wrote(10, 0.0)
    assert Shaper(Conditions(cut_after_bytes=0), now_s=0.0).wrote(0, 0.0)


async def test_cut_after_bytes_fin_gives_exactly_n_bytes_then_eof() -> None:
    async with proxied(sender(PAYLOAD), "cut_after=4kB,cut_mode=fin") as (_, proxy):
        reader, writer = await connect(proxy.port)
        async with asyncio.timeout(UNIT * 2):
            received, _ = await read_to_eof(reader)
            await proxy.wait_idle()
        writer.close()
        stats = proxy.statistics()
    assert received == PAYLOAD[:4000]
    assert (stats.cuts, stats.bytes_down, stats.conns[0].end) == (1, 4000, "cut")


async def test_cut_after_bytes_rst_gives_n_bytes_then_reset() -> None:
    received = bytearray()
    async with proxied(sender(PAYLOAD), "cut_after=4kB,cut_mode=rst") as (upstream, proxy):
        reader, writer = await connect(proxy.port)
        async with asyncio.timeout(UNIT * 2):
            with pytest.raises(ConnectionResetError):
                while chunk := await reader.read(65536):
                    received += chunk
            await proxy.wait_idle()
        writer.close()
        stats = proxy.statistics()
    # Linux queues the data segment before the RST, and the reader drains it first.
    assert received == PAYLOAD[:4000]
    assert (stats.cuts, stats.bytes_down) == (1, 4000)
    assert [type(exc) for exc in upstream.peer_errors] == [ConnectionResetError]  # both sides


@pytest.mark.parametrize("mode", ["fin", "rst"])
async def test_cut_after_time(mode: str) -> None:
    async with proxied(echo, f"cut_after=200ms,cut_mode={mode}") as (_, proxy):
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        reader, writer = await connect(proxy.port)
        writer.write(b"ping")
        async with asyncio.timeout(UNIT * 2):
            assert await reader.readexactly(4) == b"ping"
            if mode == "fin":
                assert await reader.read() == b""
            else:
                with pytest.raises(ConnectionResetError):
                    await reader.read()
        elapsed_s = loop.time() - started_s
        writer.close()
    print(f"cut_after=200ms {mode}: cut after {elapsed_s * 1000:.1f} ms")
    assert 0.2 <= elapsed_s <= 0.2 + 0.02 * UNIT


async def test_stall_pauses_after_n_bytes() -> None:
    async with proxied(sender(PAYLOAD), "stall_after=2kB,stall=300ms") as (_, proxy):
        reader, writer = await connect(proxy.port)
        async with asyncio.timeout(UNIT * 2):
            received, arrivals = await read_to_eof(reader)
        writer.close()
    assert received == PAYLOAD
    gaps = []
    for i in range(1, len(arrivals)):
        gap_s = arrivals[i][0] - arrivals[i - 1][0]
        gaps.append((gap_s, sum(size for _, size in arrivals[:i])))
    gap_s, bytes_before = max(gaps)
    print(f"stall: {gap_s * 1000:.1f} ms gap after {bytes_before} bytes")
    assert bytes_before == 2000
    assert 0.3 - 0.002 * UNIT <= gap_s <= 0.3 + 0.02 * UNIT


async def test_slice_delivers_small_segments() -> None:
    async with proxied(sender(PAYLOAD[:4096]), "slice=16") as (_, proxy):
        reader, writer = await connect(proxy.port)
        async with asyncio.timeout(UNIT * 2):
            received, arrivals = await read_to_eof(reader)
        writer.close()
    sizes = [size for _, size in arrivals]
    print(f"slice=16: {len(sizes)} reads, largest {max(sizes)} bytes")
    assert received == PAYLOAD[:4096]
    assert len(sizes) >= 4096 // 16 // 4


async def test_buffer_down_holds_everything_until_upstream_eof() -> None:
    eof_at_s: list[float] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(3):
            writer.write(PAYLOAD[i * 1000 : (i + 1) * 1000])
            await writer.drain()
            await asyncio.sleep(0.05)
        eof_at_s.append(asyncio.get_running_loop().time())
        writer.write_eof()
        await reader.read()

    async with proxied(trickle, "buffer=down") as (_, proxy):
        reader, writer = await connect(proxy.port)
        async with asyncio.timeout(UNIT * 2):
            received, arrivals = await read_to_eof(reader)
        writer.close()
    assert received == PAYLOAD[:3000]
    assert arrivals[0][0] >= eof_at_s[0]  # nothing before the upstream's EOF
    assert arrivals[0][1] == 3000  # then everything at once


# -- lifecycle -------------------------------------------------------------------------------


async def test_aclose_closes_live_connections_and_leaves_no_task() -> None:
    async with Upstream(echo) as upstream:
        proxy = FaultProxy("127.0.0.1", upstream.port, parse_net("delay=1s"))
        await proxy.start()
        assert proxy.url() == f"http://127.0.0.1:{proxy.port}"
        assert proxy.url("ws") == f"ws://127.0.0.1:{proxy.port}"
        clients = [await connect(proxy.port) for _ in range(3)]
        for _, writer in clients:
            writer.write(b"in flight")
        await wait_until_async(
            lambda: proxy.statistics().bytes_up_received >= 3 * len(b"in flight"),
            timeout_units=2,
            what="the proxy has received what the 3 clients sent",
        )
        assert proxy.statistics().connections_open == 3
        await proxy.aclose()
        stats = proxy.statistics()
        assert (stats.connections_total, stats.connections_open) == (3, 0)
        assert [c.end for c in stats.conns] == ["closed"] * 3
        assert (stats.bytes_up, stats.bytes_down) == (0, 0)  # still delayed when closed
        for reader, writer in clients:
            async with asyncio.timeout(UNIT * 2):
                assert await reader.read() == b""
            writer.close()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_ipv6_loopback_and_url() -> None:
    async with (
        Upstream(echo) as upstream,
        FaultProxy("127.0.0.1", upstream.port, listen_host="::1") as proxy,
    ):
        assert proxy.address == ("::1", proxy.port)
        assert proxy.url("ws") == f"ws://[::1]:{proxy.port}"
        reader, writer = await asyncio.open_connection("::1", proxy.port)
        writer.write(b"six")
        async with asyncio.timeout(UNIT * 2):
            assert await reader.readexactly(3) == b"six"
        writer.close()


async def test_main_rejects_a_bad_net_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        await main(["--upstream", "127.0.0.1:9", "--net", "delay=abc"])
    assert info.value.code == 2
    assert "net: 'delay=abc'" in capsys.readouterr().err


# -- the conditions string -------------------------------------------------------------------


def test_parse_net_example_and_direction_defaults() -> None:
    spec = parse_net(
        "delay=50ms,jitter=5ms,bandwidth=1mbit,cut_after=4kB,cut_mode=rst,"
        "stall_after=2kB,stall=1s,slice=16,buffer=down,seed=9"
    )
    both = {"delay_ms": 50.0, "jitter_ms": 5.0, "bandwidth_bps": 1e6, "cut_mode": "rst"}
    both |= {"stall_s": 1.0, "slice_bytes": 16}
    assert spec.up == Conditions(**both)  # type: ignore[arg-type]
    assert spec.down == Conditions(
        **both,  # type: ignore[arg-type]
        cut_after_bytes=4000,
        stall_after_bytes=2000,
        buffer_all=True,
    )
    assert spec.seed == 9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", NetSpec()),
        ("delay=500us", NetSpec(Conditions(delay_ms=0.5), Conditions(delay_ms=0.5))),
        ("delay=2", NetSpec(Conditions(delay_ms=2), Conditions(delay_ms=2))),
        ("down.delay=20ms", NetSpec(down=Conditions(delay_ms=20))),
        ("up.delay=5,delay=1", NetSpec(Conditions(delay_ms=5), Conditions(delay_ms=1))),
        ("delay=1,up.delay=5", NetSpec(Conditions(delay_ms=5), Conditions(delay_ms=1))),
        ("up.bandwidth=1Mbps", NetSpec(up=Conditions(bandwidth_bps=1e6))),
        ("down.bandwidth=1500", NetSpec(down=Conditions(bandwidth_bps=1500))),
        ("cut_after=2s", NetSpec(down=Conditions(cut_after_s=2.0))),
        ("up.cut_after=1KiB", NetSpec(up=Conditions(cut_after_bytes=1024))),
        ("down.slice=1.5kB", NetSpec(down=Conditions(slice_bytes=1500))),
        ("stall_after=1MiB", NetSpec(down=Conditions(stall_after_bytes=2**20))),
        ("buffer=both", NetSpec(Conditions(buffer_all=True), Conditions(buffer_all=True))),
        (" delay = 1 ms , ", NetSpec(Conditions(delay_ms=1), Conditions(delay_ms=1))),
    ],
)
def test_parse_net_units_and_prefixes(text: str, expected: NetSpec) -> None:
    assert parse_net(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("delay=abc", "delay=abc"),
        ("unknown=1", "unknown"),
        ("bandwidth=5 parsecs", "parsecs"),
        ("delay=5 parsecs", "parsecs"),
        ("delay", "'delay'"),
        ("delay=-1ms", "delay=-1ms"),
        ("slice=0", "slice=0"),
        ("cut_after=1.5B", "cut_after=1.5B"),
        ("cut_mode=maybe", "cut_mode=maybe"),
        ("buffer=sideways", "buffer=sideways"),
        ("up.buffer=down", "up.buffer"),
        ("seed=x", "seed=x"),
        ("left.delay=1", "left.delay"),
        ("delay=1,delay=2", "delay=2"),
        ("bandwidth=0", "bandwidth=0"),
        ("delay=1e999s", "delay=1e999s"),
    ],
)
def test_parse_net_errors_name_the_bad_item(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=r"^net: ") as info:
        parse_net(text)
    assert isinstance(info.value, NetSpecError)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_format_net_example() -> None:
    text = "delay=50ms,bandwidth=8mbit,up.cut_after=4KiB,cut_after=2s,buffer=down,seed=3"
    assert format_net(parse_net(text)) == text
    assert format_net(NetSpec()) == ""


_times = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
_sizes = st.none() | st.integers(min_value=0, max_value=10**12)
_conditions = st.builds(
    Conditions,
    delay_ms=_times,
    jitter_ms=_times,
    bandwidth_bps=st.none() | st.floats(min_value=1e-6, max_value=1e15),
    cut_after_bytes=_sizes,
    cut_after_s=st.none() | _times,
    cut_mode=st.sampled_from(["fin", "rst"]),
    stall_after_bytes=_sizes,
    stall_s=_times,
    slice_bytes=st.none() | st.integers(min_value=1, max_value=10**9),
    buffer_all=st.booleans(),
)


@settings(deadline=None)  # the only time limit is pytestmark's, a multiple of UNIT
@given(st.builds(NetSpec, _conditions, _conditions, st.integers(-(2**63), 2**63)))
def test_format_net_round_trips(spec: NetSpec) -> None:
    assert parse_net(format_net(spec)) == spec
