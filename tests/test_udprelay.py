"""The UDP relay (netem.udprelay): its timing rules with a fake clock, real datagrams through
it on loopback, its counts, its child-process form and its one-line refusals.

Every socket is on 127.0.0.1 port 0; every timeout is a multiple of UNIT. The one timing
check on a real clock is physics (a datagram never arrives before the delay it was given).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from harness.children import ROOT
from netem.conditions import NetSpecError, parse_net
from netem.udprelay import (
    FlowTiming,
    UdpRelay,
    UdpRelayProcess,
    delayed_path,
    parse_stats_line,
    parse_udp_net,
)
from tests.support import UNIT, wait_until_async

pytestmark = pytest.mark.timeout(UNIT * 30)


# -- sans-I/O timing, fake clock ----------------------------------------------------------------


def test_delay_each_way_with_a_fake_clock() -> None:
    timing = FlowTiming(parse_net("delay=50ms"), flow_id=0, started_s=10.0)
    assert timing.accept("up", 1200, 10.0) == pytest.approx(10.05)
    assert timing.accept("down", 300, 10.2) == pytest.approx(10.25)
    assert timing.counts["up"].received_bytes == 1200


def test_jitter_never_reorders() -> None:
    timing = FlowTiming(parse_net("delay=20ms,jitter=15ms,seed=3"), flow_id=1, started_s=0.0)
    releases = [timing.accept("down", 100, i * 0.001) for i in range(200)]
    assert all(r is not None for r in releases)
    times = [r for r in releases if r is not None]
    assert times == sorted(times)  # in order, although jitter spreads each by ±15 ms
    assert min(t - i * 0.001 for i, t in enumerate(times)) >= 0.005 - 1e-9
    assert len({round(t - i * 0.001, 6) for i, t in enumerate(times)}) > 10  # it does jitter


def test_cut_after_time_silences_both_directions() -> None:
    timing = FlowTiming(parse_net("cut_after=2s"), flow_id=0, started_s=5.0)
    assert timing.accept("up", 10, 6.0) == pytest.approx(6.0)
    assert timing.accept("down", 10, 6.9) == pytest.approx(6.9)
    assert timing.accept("up", 10, 7.0) is None
    assert timing.accept("down", 10, 7.5) is None
    assert timing.cut
    assert (timing.counts["up"].dropped, timing.counts["down"].dropped) == (1, 1)


def test_cut_while_waiting_drops_at_release() -> None:
    timing = FlowTiming(parse_net("delay=1s,cut_after=1500ms"), flow_id=0, started_s=0.0)
    assert timing.accept("up", 10, 1.0) == pytest.approx(2.0)
    assert not timing.due("up", 2.0)  # the path went silent at 1.5 s, while it waited
    assert timing.counts["up"].dropped == 1


def test_cut_after_bytes_counts_what_went_down() -> None:
    timing = FlowTiming(parse_net("cut_after=1000B"), flow_id=0, started_s=0.0)
    for _ in range(2):
        assert timing.accept("down", 600, 0.0) is not None
        timing.sent("down", 600)
    assert timing.cut  # 1200 >= 1000 bytes down
    assert timing.accept("up", 50, 0.1) is None


def test_refuses_what_udp_cannot_mean_in_one_line() -> None:
    for text in ("bandwidth=1mbit", "slice=10", "stall_after=1kB,stall=1s", "buffer=down"):
        with pytest.raises(NetSpecError) as info:
            parse_udp_net(text)
        assert "\n" not in str(info.value) and "UDP relay" in str(info.value)
    assert parse_udp_net("delay=5ms,jitter=1ms,cut_after=3s,seed=2").seed == 2


# -- real datagrams on loopback ---------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    """A UDP server that echoes each datagram to its sender, and notes who sent it."""

    def __init__(self) -> None:
        self.peers: set[tuple[str, int]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        assert isinstance(transport, asyncio.DatagramTransport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peers.add(addr)
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((asyncio.get_running_loop().time(), data))


async def _echo() -> tuple[asyncio.DatagramTransport, Echo]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))


async def _client(port: int) -> tuple[asyncio.DatagramTransport, Client]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))


async def test_echo_through_the_relay_is_delayed_counted_and_per_flow() -> None:
    server, echo = await _echo()
    echo_port = server.get_extra_info("sockname")[1]
    try:
        async with UdpRelay("127.0.0.1", echo_port, parse_net("delay=20ms")) as relay:
            loop = asyncio.get_running_loop()
            (a, ca), (b, cb) = await _client(relay.port), await _client(relay.port)
            sent_at = loop.time()
            for i in range(5):
                a.sendto(b"a%d" % i + b"x" * 100)
            b.sendto(b"b0")
            await wait_until_async(lambda: len(ca.received) == 5 and len(cb.received) == 1,
                                   what="6 echoes")  # fmt: skip
            a.close()
            b.close()
            # order kept; a round trip is two delayed hops: never under 40 ms
            assert [d[:2] for _, d in ca.received] == [b"a%d" % i for i in range(5)]
            assert ca.received[0][0] - sent_at >= 0.040
            assert len(echo.peers) == 2  # one upstream socket per client address
            stats = relay.statistics()
    finally:
        server.close()
    assert stats.flows == 2
    assert (stats.datagrams_up, stats.datagrams_down) == (6, 6)
    assert stats.bytes_up == stats.bytes_down == 5 * 102 + 2
    assert stats.bytes_up_received == stats.bytes_up and stats.dropped_up == 0
    assert sorted(f.datagrams_up for f in stats.per_flow) == [1, 5]


async def test_a_cut_path_goes_silent() -> None:
    server, _ = await _echo()
    echo_port = server.get_extra_info("sockname")[1]
    try:
        async with UdpRelay("127.0.0.1", echo_port, parse_net("cut_after=250B")) as relay:
            a, ca = await _client(relay.port)
            for i in range(3):  # 3 x 100 B down: the third echo crosses the 250 B limit
                a.sendto(b"x" * 100)
                await wait_until_async(lambda: len(ca.received) > i, what="an echo")  # noqa: B023
            a.sendto(b"y" * 100)  # after the cut: eaten
            await wait_until_async(lambda: relay.statistics().dropped_up == 1, what="a drop")
            a.close()
            stats = relay.statistics()
    finally:
        server.close()
    assert stats.flows_cut == 1 and stats.datagrams_down == 3 and len(ca.received) == 3


# -- child process ------------------------------------------------------------------------------


async def test_child_process_relays_and_prints_its_totals() -> None:
    server, _ = await _echo()
    echo_port = server.get_extra_info("sockname")[1]
    relay = UdpRelayProcess(("127.0.0.1", echo_port), "delay=5ms")
    try:
        port = await asyncio.to_thread(relay.start)
        a, ca = await _client(port)
        for _ in range(3):
            a.sendto(b"z" * 40)
        await wait_until_async(lambda: len(ca.received) == 3, what="3 echoes via the child")
        a.close()
    finally:
        totals = await asyncio.to_thread(relay.stop)
        server.close()
    assert totals["flows"] == 1
    assert totals["datagrams_up"] == totals["datagrams_down"] == 3
    assert totals["bytes_up"] == totals["bytes_down"] == 120


def test_delayed_path_shares_one_port_number_for_tcp_and_udp() -> None:
    with delayed_path("127.0.0.1", 9, "delay=1ms") as path:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # both taken: by proxy and relay
            with socket.socket(socket.AF_INET, kind) as sock, pytest.raises(OSError):
                sock.bind(("127.0.0.1", path.port))
    assert path.udp_totals["flows"] == 0  # its totals, printed as it stopped
    assert path.tcp_pid != path.udp_pid


def test_bad_net_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "netem.udprelay", "--upstream", "127.0.0.1:9", "--net",
         "delay=fast"],
        cwd=ROOT, capture_output=True, text=True, timeout=20 * UNIT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "delay=fast" in proc.stderr
    assert proc.stdout == ""


def test_stats_line_round_trips() -> None:
    text = "listening on 127.0.0.1:1\nnet: (clean)\nflows=2 datagrams_up=7 bytes_up=900\n"
    assert parse_stats_line(text) == {"flows": 2, "datagrams_up": 7, "bytes_up": 900}
    assert parse_stats_line("") == {}
