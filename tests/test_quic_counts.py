"""QuicConn's counts (clients/quic.py) against two independent counts of the same datagrams.

1. A UDP relay in this process between QuicConn and an aioquic HTTP/3 server
   (tests/h3server.py) adds up the payload of every datagram it carries each way: QuicConn's
   `bytes_*` and `packets_*` (datagrams) must equal it exactly.
2. In a network namespace pair (netem/netns.py; needs root), the kernel's counters of the
   root-side veth (/sys/class/net/IF/statistics) against QuicConn's UDP payload plus 28
   bytes a datagram (IPv4 20 + UDP 8) plus the 14-byte Ethernet header a frame carries on a
   veth: within 1%.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.h3 import HTTP3
from clients.net import Target
from clients.quic import QuicConn, QuicSettings
from netem.pki import LabPKI, make_lab_pki
from tests.h3server import H3Server
from tests.support import UNIT, wait_until, wait_until_async

pytestmark = pytest.mark.timeout(UNIT * 60)

IP_UDP_HEADERS = 28  # IPv4 (20, no options) + UDP (8), per datagram
ETHERNET_HEADER = 14  # what a veth counts per frame beyond the IP packet (no FCS, no VLAN)
BODY = 300_000  # bytes down: ~250 datagrams, so a stray ARP or ND frame is far below 1%
RCVBUF = 4 * 2**20  # receive buffers of the client's and the relay's sockets (`_roomy`)
STRAY_FRAMES = 3  # frames on the veth that are not this connection's (ARP, a late ACK)
SO_RCVBUFFORCE = 33  # Linux (asm-generic/socket.h); root may exceed rmem_max with it


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return make_lab_pki(tmp_path_factory.mktemp("pki"))


class _Relay(asyncio.DatagramProtocol):
    """One client <-> one server, counting each datagram's payload as it passes."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: Any = None
        self.up = [0, 0]  # datagrams, bytes: client -> server
        self.down = [0, 0]  # server -> client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _roomy(transport.get_extra_info("socket"))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        if addr == self.server:
            self.down[0] += 1
            self.down[1] += len(data)
            self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.up[0] += 1
            self.up[1] += len(data)
            self.transport.sendto(data, self.server)


@pytest.fixture
async def relayed(pki: LabPKI) -> AsyncIterator[tuple[Target, _Relay]]:
    server = H3Server(str(pki.cert), str(pki.key))
    port = await server.start()
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(
        lambda: _Relay(("127.0.0.1", port)), local_addr=("127.0.0.1", 0)
    )
    yield Target("127.0.0.1", transport.get_extra_info("sockname")[1], secure=True), relay
    transport.close()
    server.stop()


def _roomy(sock: socket.socket) -> None:
    """A receive buffer big enough for a whole 300 kB burst. MEASURED (namespace test): with
    the default SO_RCVBUF (208 KiB) the kernel dropped 16 of the ~280 datagrams of the burst
    at the client's socket (/proc/net/udp drops): the veth counted them, the client never
    read them, the server sent them again. On a loaded loopback the relay's socket drops too.
    The comparisons here are about counting, not about drops."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except PermissionError:  # not root: as much as net.core.rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


async def _fetch(target: Target, settings: QuicSettings, n: int) -> tuple[HTTP3, QuicConn]:
    """GET /bytes?n=`n` over a new QUIC connection whose socket is `_roomy` before asking."""
    http = HTTP3(target, settings=settings)
    conn = (await http.session._usable()).quic  # handshake done, nothing asked yet
    sock = conn._transport.get_extra_info("socket") if conn._transport else None
    assert sock is not None
    _roomy(sock)
    assert (await http.request("GET", f"/bytes?n={n}")).status == 200
    assert len(await http.read_body()) == n
    return http, conn


async def test_bytes_and_datagrams_equal_what_a_relay_carried(
    relayed: tuple[Target, _Relay], pki: LabPKI
) -> None:
    target, relay = relayed
    settings = QuicSettings(ca_file=str(pki.ca_cert), cc="cubic")
    async with asyncio.timeout(10 * UNIT):
        http, conn = await _fetch(target, settings, BODY)
        # everything the relay forwarded has been read (ACKs may still be in flight)
        await wait_until_async(lambda: relay.down == [conn.datagrams_down, conn.bytes_down],
                               what="the client read all the relay forwarded")  # fmt: skip
        (stats,) = await http.aclose()
        await wait_until_async(lambda: relay.up == [stats.packets_up, stats.bytes_up],
                               what="the relay carried our CONNECTION_CLOSE")  # fmt: skip
    assert relay.up == [stats.packets_up, stats.bytes_up]
    assert relay.down == [stats.packets_down, stats.bytes_down]
    assert stats.bytes_down > BODY and stats.source == "udp" and stats.cc == "cubic"
    assert stats.handshake_packets_up > 0 and stats.handshake_packets_down > 0
    assert 0 < stats.tls_handshake_bytes_up <= stats.bytes_up
    assert stats.rcvbuf > 0 and stats.sndbuf > 0 and stats.retransmits >= 0


# -- the kernel's count, in a namespace pair -----------------------------------------------


def _netns_reason() -> str:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "network namespaces need Linux and root"
    from netem import netns

    caps = netns.capabilities()
    return "" if caps.netns and caps.veth else "this kernel cannot make namespaces and veths"


def _socket_drops(port: int) -> int:
    """The kernel's drop count of our UDP socket (/proc/net/udp, its last column)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")


def _if_stats(interface: str) -> dict[str, int]:
    base = Path("/sys/class/net") / interface / "statistics"
    return {name: int((base / name).read_text()) for name in
            ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")}  # fmt: skip


@pytest.mark.skipif(bool(_netns_reason()), reason=_netns_reason() or "ok")
async def test_udp_payload_plus_headers_match_the_veth_counters(pki: LabPKI) -> None:
    from netem.netns import NetnsLink

    repo = Path(__file__).resolve().parent.parent
    with NetnsLink() as link:
        proc = link.popen([sys.executable, "-m", "tests.h3server", link.server_host, "4433",
                           str(pki.cert), str(pki.key)], cwd=repo,
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10 * UNIT)
        assert line.startswith("ready"), line
        # IPv6 off on both veth ends: a new link's router solicitations, neighbour discovery
        # and MLD reports (MEASURED: 5 frames up and 7 down of 70-90 bytes during one test)
        # are the only other frames on this veth; off, the counters are QUIC's and ARP's
        sysctl = ["sysctl", "-q", "-w"]
        subprocess.run([*sysctl, f"net.ipv6.conf.{link.host_if}.disable_ipv6=1"], check=True)
        subprocess.run(["ip", "netns", "exec", link.name, *sysctl,
                        "net.ipv6.conf.veth0.disable_ipv6=1"], check=True)  # fmt: skip
        target = Target(link.server_host, 4433, secure=True)
        settings = QuicSettings(ca_file=str(pki.ca_cert))
        async with asyncio.timeout(20 * UNIT):
            warm, _ = await _fetch(target, settings, 10)  # ARP resolved before counting
            await warm.aclose()
            before = _if_stats(link.host_if)
            http, conn = await _fetch(target, settings, BODY)
            port = conn._transport.get_extra_info("sockname")[1] if conn._transport else 0
            # every datagram the server sent has been read: none still on the wire
            # every datagram the veth delivered has been read, but for a stray frame or two
            # (MEASURED: now and then an ARP request, 42 bytes, or a late ACK of the warm-up)
            await wait_until_async(
                lambda: _if_stats(link.host_if)["rx_packets"] - before["rx_packets"]
                <= conn.datagrams_down + STRAY_FRAMES,
                what="the client read every datagram the veth delivered",
            )
            drops = _socket_drops(port)
            (stats,) = await http.aclose()
            wait_until(
                lambda: _if_stats(link.host_if)["tx_packets"] - before["tx_packets"]
                >= stats.packets_up,
                what="the veth sent our CONNECTION_CLOSE",
            )
            after = _if_stats(link.host_if)
    delta = {k: after[k] - before[k] for k in after}
    assert drops == 0  # nothing the veth delivered was dropped before we read it
    per_frame = IP_UDP_HEADERS + ETHERNET_HEADER
    expect_up = stats.bytes_up + stats.packets_up * per_frame
    expect_down = stats.bytes_down + stats.packets_down * per_frame
    print(f"QUIC up {stats.packets_up} datagrams {stats.bytes_up} B -> expect {expect_up} B; "
          f"veth tx {delta['tx_packets']} frames {delta['tx_bytes']} B")  # fmt: skip
    print(f"QUIC down {stats.packets_down} datagrams {stats.bytes_down} B -> expect "
          f"{expect_down} B; veth rx {delta['rx_packets']} frames {delta['rx_bytes']} B")
    assert abs(delta["tx_bytes"] - expect_up) <= 0.01 * expect_up
    assert abs(delta["rx_bytes"] - expect_down) <= 0.01 * expect_down
    assert 0 <= delta["tx_packets"] - stats.packets_up <= STRAY_FRAMES
    assert 0 <= delta["rx_packets"] - stats.packets_down <= STRAY_FRAMES
