"""harness/capture.py against real traffic: its per-connection TCP payload counts equal the
applications' byte counts (plain TCP) and the client's TCP_INFO (plain TCP, real TLS, and a
lossy veth in a real network namespace), exactly.

The counting core (`SeqSpace`, `_Flows`) is also fed hand-made headers, for the cases real
traffic here does not produce on demand (sequence wrap, a 0 IP length, the loopback copy).
Capturing needs Linux and root (AF_PACKET is CAP_NET_RAW); those tests skip elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.net import TcpInfo, read_tcp_info
from harness import capture
from harness.capture import Capture, SeqSpace, _Flows, port_filter
from netem.pki import make_lab_pki
from streams.errors import EnvironmentUnavailable
from tests.support import UNIT, wait_until, wait_until_async

needs_capture = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="AF_PACKET capture needs Linux and root"
)
pytestmark = pytest.mark.timeout(UNIT * 60)

UP_WRITES = 7
UP_BYTES = 10_000
DOWN_BYTES = 123_456
CLOSE_WAIT = 8  # include/net/tcp_states.h: our socket has received the peer's FIN


# --- the counting core, on hand-made headers ------------------------------------------------


def test_seq_space_counts_each_byte_once() -> None:
    space = SeqSpace()
    space.start(1001)  # ISN 1000: the SYN took 1000, payload starts at 1001
    assert space.add(1001, 100) == 100
    assert space.add(1101, 50) == 50
    assert space.add(1001, 100) == 0  # a retransmission
    assert space.add(1301, 100) == 100  # ahead: a hole at [1151, 1301)
    assert space.add(1121, 200) == 150  # fills the hole, overlaps both sides
    assert space.add(1001, 400) == 0


def test_seq_space_unwraps_past_2_to_the_32() -> None:
    space = SeqSpace()
    seq = 2**32 - 3000
    total = 0
    for _ in range(5):  # crosses 0 in the middle
        total += space.add(seq, 1448)
        seq = (seq + 1448) % 2**32
    assert total == 5 * 1448
    assert space.add((2**32 - 3000 + 1448) % 2**32, 1448) == 0  # retransmit across the wrap


def _ipv4_tcp(src_port: int, dst_port: int, seq: int, flags: int, payload: int,
              tot_len: int | None = None) -> bytearray:  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", src_port, dst_port, seq, 0, 5 << 4, flags, 65535, 0, 0)
    length = 20 + len(tcp) + payload if tot_len is None else tot_len
    addr = socket.inet_aton("127.0.0.1")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, 6, 0, addr, addr)
    return bytearray(ip + tcp)


def test_flows_count_payload_not_syn_or_fin_and_one_loopback_copy() -> None:
    flows = _Flows(port=8000)
    packets = [
        (_ipv4_tcp(40000, 8000, 99, capture.SYN, 0), 0),
        (_ipv4_tcp(8000, 40000, 499, capture.SYN | capture.ACK, 0), 0),
        (_ipv4_tcp(40000, 8000, 100, capture.ACK, 300), 0),
        (_ipv4_tcp(40000, 8000, 100, capture.ACK, 300), socket.PACKET_OUTGOING),  # lo's twin
        (_ipv4_tcp(8000, 40000, 500, capture.ACK | capture.FIN, 70_000, tot_len=0), 0),
        (_ipv4_tcp(40000, 8000, 100, capture.ACK, 300), 0),  # retransmitted
    ]
    for pkt, pkttype in packets:
        # tot_len 0 (a GSO packet past 64 KiB): the length comes from PACKET_AUXDATA's tp_len
        flows.add(pkt, len(pkt), pkttype, True, 20 + 20 + 70_000, 1)
    (flow,) = flows.flows.values()
    assert (flow.up.payload_bytes, flow.up.retrans_bytes, flow.up.packets) == (300, 300, 3)
    assert (flow.down.payload_bytes, flow.down.syn, flow.down.fin) == (70_000, 1, 1)
    assert flows.ignored == 1


def test_a_reused_4_tuple_is_a_new_connection_and_the_earlier_is_kept() -> None:
    flows = _Flows(port=8000)
    for isn, size in ((1000, 10), (90_000, 20)):  # TIME_WAIT reuse: a new ISN after the FIN
        for pkt in (
            _ipv4_tcp(40000, 8000, isn, capture.SYN, 0),
            _ipv4_tcp(40000, 8000, isn + 1, capture.ACK, size),
            _ipv4_tcp(40000, 8000, isn + 1 + size, capture.ACK | capture.FIN, 0),
        ):
            flows.add(pkt, len(pkt), 0, True, len(pkt), 1)
    (latest,) = flows.flows.values()
    (earlier,) = flows.ended
    assert (earlier.up.payload_bytes, latest.up.payload_bytes) == (10, 20)
    assert latest.up.syn == latest.up.fin == 1


def test_port_filter_jumps_land_inside_the_program() -> None:
    for loopback in (False, True):
        program = port_filter(8443, loopback=loopback)
        for pc, (code, jt, jf, _k) in enumerate(program):
            if code & 0x07 == 0x05:  # BPF_JMP
                assert pc + 1 + max(jt, jf) < len(program)
        assert program[-1] == (0x06, 0, 0, 0) and program[-2][3] == capture.SNAP_BYTES


# --- real connections on loopback -----------------------------------------------------------


def _serve_one(listener: socket.socket, up_bytes: int, down_bytes: int) -> None:
    """Read `up_bytes`, answer `down_bytes`, half-close, read to EOF, close."""
    conn, _ = listener.accept()
    with conn:
        got = 0
        while got < up_bytes:
            data = conn.recv(65536)
            assert data, "client closed early"
            got += len(data)
        conn.sendall(b"d" * down_bytes)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass


def _client(host: str, port: int, up_bytes: int, writes: int) -> tuple[int, int, TcpInfo]:
    """Send `up_bytes` in `writes` writes, read to EOF; (sent, received, TCP_INFO at EOF)."""
    with socket.create_connection((host, port), timeout=10 * UNIT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one segment per write
        sizes = [up_bytes // writes + (i < up_bytes % writes) for i in range(writes)]
        for size in sizes:
            sock.sendall(b"u" * size)
        down = 0
        while data := sock.recv(65536):
            down += len(data)
        # The server acked all we sent before answering, and its FIN is in: final counts
        info = read_tcp_info(sock)
        assert info is not None and info.state == CLOSE_WAIT
        return sum(sizes), down, info


@contextlib.contextmanager
def _listener(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen(16)
        yield listener


def _assert_matches(got: tuple[int, int], app: tuple[int, int], info: TcpInfo) -> None:
    """Capture == application == TCP_INFO (SYN off bytes_acked, FIN off bytes_received)."""
    assert got == app
    assert got == (info.bytes_acked - 1, info.bytes_received - 1)


@needs_capture
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_counts_equal_the_application_and_tcp_info(host: str) -> None:
    with _listener(host) as listener, Capture(listener.getsockname()[1]) as cap:
        server = threading.Thread(target=_serve_one, args=(listener, UP_BYTES, DOWN_BYTES))
        server.start()
        up, down, info = _client(host, listener.getsockname()[1], UP_BYTES, UP_WRITES)
        server.join(10 * UNIT)  # it read our FIN: every segment has passed the tap
    ((key, conn),) = cap.connections().items()
    assert key == (*conn.client, *conn.server) and conn.server[0] == host
    _assert_matches((conn.up.payload_bytes, conn.down.payload_bytes), (up, down), info)
    assert cap.totals() == (UP_BYTES, DOWN_BYTES)
    assert (conn.up.syn, conn.up.fin, conn.down.syn, conn.down.fin) == (1, 1, 1, 1)
    assert conn.up.rst == conn.down.rst == 0
    assert conn.up.retrans_bytes == conn.down.retrans_bytes == 0
    assert conn.up.packets >= UP_WRITES + 2  # SYN, 7 writes (TCP_NODELAY), FIN at least
    assert conn.first_ns <= conn.last_ns
    stats = cap.statistics()
    assert cap.dropped == stats.dropped == 0 and stats.kernel_packets == stats.packets_read


def _sized_client(port: int, up: int, down: int) -> tuple[int, int, int, TcpInfo]:
    """Ask for `down` bytes in an 8-byte header, sending `up` bytes in all; read to EOF.
    (client port, sent, received, TCP_INFO at EOF)"""
    with socket.create_connection(("127.0.0.1", port), timeout=10 * UNIT) as sock:
        sock.sendall(struct.pack("!II", up, down) + b"u" * (up - 8))
        got = 0
        while data := sock.recv(65536):
            got += len(data)
        info = read_tcp_info(sock)
        assert info is not None and info.state == CLOSE_WAIT
        return sock.getsockname()[1], up, got, info


def _answer_sized(conn: socket.socket, together: threading.Barrier) -> None:
    with conn:
        head = b""
        while len(head) < 8:
            head += conn.recv(8 - len(head))
        up, down = struct.unpack("!II", head)
        got = 8
        while got < up:
            got += len(conn.recv(65536))
        together.wait(10 * UNIT)  # every connection is open, none has been answered yet
        conn.sendall(b"d" * down)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass


@needs_capture
def test_concurrent_connections_are_kept_apart() -> None:
    sizes = [(1000 * (i + 1), 5000 * (i + 1) + 7) for i in range(4)]
    results: list[tuple[int, int, int, TcpInfo]] = []
    with _listener() as listener, Capture(listener.getsockname()[1]) as cap:
        port = listener.getsockname()[1]
        clients = [
            threading.Thread(target=lambda s=s: results.append(_sized_client(port, *s)))
            for s in sizes
        ]
        for t in clients:
            t.start()
        servers, together = [], threading.Barrier(len(sizes))
        for _ in sizes:
            accepted, _ = listener.accept()
            servers.append(threading.Thread(target=_answer_sized, args=(accepted, together)))
            servers[-1].start()
        for t in [*clients, *servers]:
            t.join(10 * UNIT)
    by_port = {conn.client[1]: conn for conn in cap.connections().values()}
    assert sorted(by_port) == sorted(r[0] for r in results)
    for client_port, up, down, info in results:
        conn = by_port[client_port]
        _assert_matches((conn.up.payload_bytes, conn.down.payload_bytes), (up, down), info)
        assert cap.totals(client_port) == (up, down) and (up, down) in sizes
    assert cap.totals() == tuple(map(sum, zip(*sizes, strict=True)))
    assert cap.dropped == 0


# --- the thread and its errors --------------------------------------------------------------


@needs_capture
def test_stop_joins_the_thread_and_is_idempotent() -> None:
    before = set(threading.enumerate())
    cap = Capture(port=9)  # nothing talks to it: the thread sits in its recv timeout
    cap.start()
    (thread,) = set(threading.enumerate()) - before
    cap.stop()  # bounded: RuntimeError if the thread outlived JOIN_S
    assert not thread.is_alive() and set(threading.enumerate()) == before
    cap.stop()
    assert cap.totals() == (0, 0) and cap.connections() == {}


@needs_capture
def test_stop_returns_under_a_flood() -> None:
    """The recv timeout never fires while packets keep coming: stop() is still seen (every
    CHECK_EVERY packets) and the final drain is bounded (DRAIN_S)."""
    with _listener() as listener:
        port = listener.getsockname()[1]
        sender = socket.create_connection(("127.0.0.1", port))
        receiver, _ = listener.accept()
        sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flooding = threading.Event()
        flooding.set()

        def flood() -> None:
            while flooding.is_set():
                sender.send(b"x")

        def sink() -> None:
            while receiver.recv(65536):
                pass

        threads = [threading.Thread(target=flood), threading.Thread(target=sink)]
        with sender, receiver:
            cap = Capture(port)
            cap.start()
            for t in threads:
                t.start()
            wait_until(lambda: cap.statistics().packets_read > 2 * capture.CHECK_EVERY,
                       what="a flood of packets")  # fmt: skip
            cap.stop()  # RuntimeError if the thread did not end within JOIN_S
            flooding.clear()
            threads[0].join(10 * UNIT)
            sender.shutdown(socket.SHUT_WR)
            threads[1].join(10 * UNIT)
    assert not any(t.name == f"capture-{port}" for t in threading.enumerate())


@needs_capture
def test_an_interface_going_down_is_a_capture_error() -> None:
    """packet(7): a bound socket whose device goes down reports ENETDOWN; stop() raises it,
    and statistics() says why the counts stopped, rather than leaving them silently short."""
    name = f"pcap{os.getpid() % 100_000}"
    subprocess.run(["ip", "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b"],
                   check=True)  # fmt: skip
    try:
        subprocess.run(["ip", "link", "set", f"{name}a", "up"], check=True)
        cap = Capture(8000, f"{name}a")
        cap.start()
        subprocess.run(["ip", "link", "set", f"{name}a", "down"], check=True)
        wait_until(lambda: cap.statistics().error, what="the capture to see its link down")
        with pytest.raises(capture.CaptureError, match="Network is down"):
            cap.stop()
    finally:
        subprocess.run(["ip", "link", "del", f"{name}a"], check=True)


def test_permission_denied_is_environment_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(capture, "_packet_socket", refuse)
    before = set(threading.enumerate())
    with pytest.raises(EnvironmentUnavailable) as caught, Capture(8000):
        pass
    message = str(caught.value)
    assert "\n" not in message and "lo" in message and "Operation not permitted" in message
    assert set(threading.enumerate()) == before


@needs_capture
@pytest.mark.parametrize(
    ("interface", "netns", "why"),
    [("pushlab-none0", None, "No such device"), ("lo", "pushlab-no-such-ns", "No such file")],
)
def test_missing_interface_or_namespace_is_environment_unavailable(
    interface: str, netns: str | None, why: str
) -> None:
    with pytest.raises(EnvironmentUnavailable, match=why), Capture(8000, interface, netns):
        pass


# --- real TLS: the capture counts ciphertext, as TCP_INFO does --------------------------------

REQUEST_BYTES = 3_000
ANSWER_BYTES = 200_000


async def _tls_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(REQUEST_BYTES)
    writer.write(b"a" * ANSWER_BYTES)
    await writer.drain()
    writer.close()  # close_notify, then (once the client's arrives) FIN
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()


@needs_capture
async def test_tls_counts_equal_the_clients_tcp_info(tmp_path: Path) -> None:
    """Exactly, not within 1 %: both count the same TCP sequence space (TLS records, the
    handshake, session tickets and close_notify alerts are all TCP payload), and TCP_INFO is
    read once the last payload byte is acked and the server's FIN is in, so nothing moves
    between the two reads but the client's FIN, which is no payload."""
    pki = make_lab_pki(tmp_path)
    server = await asyncio.start_server(_tls_answer, "127.0.0.1", 0, ssl=pki.server_context())
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=pki.ca_cert)
    with Capture(port) as cap:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        # A second descriptor of the client's socket keeps it open past asyncio's close, so
        # its TCP_INFO can be read after the TLS shutdown (our close_notify) has been acked.
        fd = writer.get_extra_info("socket").fileno()
        kept = socket.socket(fileno=os.dup(fd))
        writer.write(b"r" * REQUEST_BYTES)
        assert len(await reader.read()) == ANSWER_BYTES  # to EOF: the server's close_notify
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()

        def settled() -> TcpInfo | None:
            info = read_tcp_info(kept)
            done = info is not None and info.state == CLOSE_WAIT and info.unacked == 0
            return info if done else None

        info = await wait_until_async(settled, what="the server's FIN and our last ack")
        assert info is not None
        kept.close()  # our FIN
        (conn,) = cap.connections().values()
        await wait_until_async(
            lambda: cap.connections()[(*conn.client, *conn.server)].up.fin,
            what="the capture to see our FIN",
        )
    server.close()
    await server.wait_closed()
    (conn,) = cap.connections().values()
    assert (conn.up.payload_bytes, conn.down.payload_bytes) == (
        info.bytes_acked - 1,  # our SYN
        info.bytes_received - 1,  # the server's FIN
    )
    # TLS costs bytes: the handshake, record headers and tags, tickets, alerts
    assert conn.up.payload_bytes > REQUEST_BYTES and conn.down.payload_bytes > ANSWER_BYTES
    assert conn.up.fin == conn.down.fin == 1 and cap.dropped == 0


# --- a lossy veth, captured inside the server's network namespace -----------------------------

# One connection: read UP bytes, send DOWN bytes, half-close, read to EOF.
NS_SERVER = r"""
import socket, sys
host, port, up, down = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
srv = socket.socket()
srv.bind((host, port))
srv.listen()
print("ready", flush=True)
conn, _ = srv.accept()
got = 0
while got < up:
    got += len(conn.recv(65536))
conn.sendall(b"d" * down)
conn.shutdown(socket.SHUT_WR)
while conn.recv(65536):
    pass
"""
NS_PORT = 7100
LOSSY_BYTES = 300_000


@needs_capture
def test_lossy_veth_in_a_namespace_counts_unique_bytes_and_retransmissions() -> None:
    """5 % loss each way (netem/netns.py: nftables in the namespace). The capture on the
    namespace's veth sees a client segment before the input hook drops it, then again when
    it is retransmitted: counted once as payload, once as retransmitted. The server's dropped
    segments die at the output hook, before the tap: only their retransmission is seen."""
    from netem.netns import LinkSpec, NetnsLink

    try:
        link = NetnsLink(LinkSpec(loss_pct=5))
    except EnvironmentUnavailable as exc:
        pytest.skip(str(exc))
    with link:
        argv = [NS_SERVER, link.server_host, str(NS_PORT), str(LOSSY_BYTES), str(LOSSY_BYTES)]
        server = link.popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE)
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        with Capture(NS_PORT, "veth0", netns=link.name) as cap:
            up, down, info = _client(link.server_host, NS_PORT, LOSSY_BYTES, 1)
            server.wait(30 * UNIT)  # it read our FIN: every segment has passed the tap
        drops = link.counters()
    ((_key, conn),) = cap.connections().items()
    _assert_matches((conn.up.payload_bytes, conn.down.payload_bytes), (up, down), info)
    # ~200 segments each way: no client segment dropped at 5 % has a chance of 0.95**200 ≈ 4e-5
    assert drops["dropped_in_packets"] > 0 and conn.up.retrans_bytes > 0
    assert cap.dropped == 0
