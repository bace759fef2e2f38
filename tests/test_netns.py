"""Real namespaces, veth pairs, tbf and nftables drops on this machine (needs root).

Traffic goes only between the root namespace and 198.18.X.2 inside namespaces made here.
Every test ends by proving nothing of this process is left (`_nothing_left`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from netem import netns
from netem.netns import Capabilities, LinkSpec, NetnsError, NetnsLink
from tests.support import UNIT, wait_until

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs Linux and root"),
    pytest.mark.timeout(UNIT * 30),
]

PORT = 7000
TCP_INFO_TOTAL_RETRANS_OFFSET = 100  # struct tcp_info: tcpi_total_retrans, u32

# One connection at a time: first line "echo" (echo until EOF) or "send N" (send N bytes).
SERVER = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen()
while True:
    conn, _ = srv.accept()
    with conn:
        head = b""
        while not head.endswith(b"\n"):
            byte = conn.recv(1)
            if not byte:
                break
            head += byte
        words = head.split()
        if words[:1] == [b"echo"]:
            while data := conn.recv(65536):
                conn.sendall(data)
        elif words[:1] == [b"send"]:
            conn.sendall(b"x" * int(words[1]))
"""


def _ours() -> set[str]:
    """Namespaces and root-side veths (by alias) attributable to this test process."""
    prefix = f"pushlab-{os.getpid()}-"
    namespaces = {entry["name"] for entry in json.loads(_ip("-j", "netns", "list") or "[]")}
    links = json.loads(_ip("-j", "link", "show", "type", "veth") or "[]")
    ours = {name for name in namespaces if name.startswith(prefix)}
    ours |= {link["ifname"] for link in links if link.get("ifalias", "").startswith(prefix)}
    # a root-side loss table whose veth is gone (ours, or anyone's: none may be left over)
    tables = json.loads(_nft("-j", "list", "tables", "netdev") or "{}").get("nftables", [])
    names = {item["table"]["name"] for item in tables if "table" in item}
    devices = {link["ifname"] for link in json.loads(_ip("-j", "link", "show") or "[]")}
    return ours | {f"netdev {name}" for name in names
                   if name.startswith("pushlab_x") and name.replace("_", "-") not in devices}


def _nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=True).stdout


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    yield
    assert _ours() == set()


def _start_server(link: NetnsLink) -> subprocess.Popen[bytes]:
    return link.popen([sys.executable, "-c", SERVER, link.server_host, str(PORT)])


def _connect(link: NetnsLink, *, within_s: float = 5 * UNIT) -> socket.socket:
    """Connect from the root namespace, retrying while the server is still starting."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            sock = socket.create_connection((link.server_host, PORT), timeout=within_s)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        sock.settimeout(10 * UNIT)
        return sock


def _recv_exactly(sock: socket.socket, size_bytes: int) -> bytes:
    chunks: list[bytes] = []
    received = 0
    while received < size_bytes:
        chunk = sock.recv(min(65536, size_bytes - received))
        assert chunk, f"EOF after {received} of {size_bytes} bytes"
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def _echo(sock: socket.socket, payload: bytes) -> bytes:
    """Send `payload` from a thread while reading the echo, so neither side blocks."""
    sock.sendall(b"echo\n")
    sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    sender.start()
    echoed = _recv_exactly(sock, len(payload))
    sender.join(5 * UNIT)
    return echoed


def _total_retrans(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, TCP_INFO_TOTAL_RETRANS_OFFSET)[0])


def _payload(size_bytes: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(size_bytes))


def test_capabilities_of_this_machine() -> None:
    caps = netns.capabilities()
    assert (caps.netns, caps.veth, caps.tbf, caps.nft_random_drop) == (True, True, True, True)
    assert caps.netem is False
    assert "netem" in caps.reasons["netem"]
    assert caps.reasons["netem"].endswith("Error: Specified qdisc kind is unknown.")
    assert set(caps.reasons) == {"netem"}
    assert netns.capabilities() is caps  # cached


def test_link_spec_validates() -> None:
    for bad in ({"loss_pct": -1}, {"loss_pct": 100.5}, {"rate_bps": 0}):
        with pytest.raises(ValueError):
            LinkSpec(**bad)


def test_echo_server_in_namespace_round_trips() -> None:
    with NetnsLink() as link:
        assert link.name.startswith(f"pushlab-{os.getpid()}-")
        assert link.client_host.startswith("198.18.") and link.client_host.endswith(".1")
        assert link.server_host == link.client_host[:-1] + "2"
        _start_server(link)
        with _connect(link) as sock:
            assert _echo(sock, b"hello, namespace") == b"hello, namespace"
            assert sock.getsockname()[0] == link.client_host


@pytest.mark.slow
def test_loss_is_repaired_by_tcp_and_counted() -> None:
    payload = _payload(300_000)
    with NetnsLink() as link:
        _start_server(link)
        with _connect(link) as clean:
            assert _echo(clean, payload) == payload
            assert _total_retrans(clean) == 0
        assert link.counters()["dropped_packets"] == 0

        with _connect(link) as lossy:  # connect cleanly, then lose 20 % both ways
            link.set_loss(20)
            assert link.spec.loss_pct == 20
            assert _echo(lossy, payload) == payload
            retrans = _total_retrans(lossy)
            link.set_loss(0)
        counters = link.counters()
        print(f"20 % loss, 300 kB echoed: total_retrans={retrans} counters={counters}")
        assert retrans > 0
        assert counters["dropped_in_packets"] > 0 and counters["dropped_out_packets"] > 0


UDP_ECHO = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(data, peer)
"""


def test_loss_rules_drop_tcp_and_udp_where_they_are_received() -> None:
    inside = netns._nft_script(5.0)  # client -> server: the namespace receives on veth0
    root = netns._ingress_script("pushlab-x7", 5.0)  # server -> client: the root side does
    rules = [line for text in (inside, root) for line in text.splitlines()
             if line.startswith("add rule")]  # fmt: skip
    assert rules == [
        'add rule inet pushlab input iifname "veth0" meta l4proto { tcp, udp } numgen random '
        'mod 10000 < 500 counter name "dropped_in" drop',
        "add rule netdev pushlab_x7 ingress meta l4proto { tcp, udp } numgen random "
        'mod 10000 < 500 counter name "dropped_out" drop',
    ]
    assert 'hook ingress device "pushlab-x7"' in root
    assert "output" not in inside  # a local output drop fails the sender's send (EPERM)


def test_udp_is_dropped_and_counted() -> None:
    """QUIC rides UDP: the loss rule drops datagrams too, both ways, and counts them."""
    sent = 400
    with NetnsLink(LinkSpec(loss_pct=30)) as link:
        link.popen([sys.executable, "-c", UDP_ECHO, link.server_host, str(PORT)])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # holds every echo
            sock.settimeout(0.05)
            # the echo is up once one probe round-trips (each probe crosses the loss twice)
            def probe() -> bool:
                sock.sendto(b"probe", (link.server_host, PORT))
                try:
                    return sock.recv(64) == b"probe"
                except TimeoutError:
                    return False

            wait_until(probe, what="the UDP echo answers")
            before = link.counters()
            for i in range(sent):
                sock.sendto(f"{i:04d}".encode(), (link.server_host, PORT))
                time.sleep(0.001)
            echoed = set()
            with contextlib.suppress(TimeoutError):
                while True:
                    echoed.add(sock.recv(64))
            after = link.counters()
    dropped_in = after["dropped_in_packets"] - before["dropped_in_packets"]
    dropped_out = after["dropped_out_packets"] - before["dropped_out_packets"]
    received = len(echoed - {b"probe"})
    print(f"30 % loss each way, {sent} datagrams: {received} echoed, "
          f"dropped in={dropped_in} out={dropped_out}")  # fmt: skip
    assert dropped_in > 0 and dropped_out > 0
    # every datagram sent either came back or was dropped on one of the two crossings
    assert received + dropped_in + dropped_out == sent
    assert received < sent


def test_tbf_limits_bandwidth() -> None:
    size_bytes = 200_000
    with NetnsLink(LinkSpec(rate_bps=4_000_000)) as link:
        _start_server(link)
        with _connect(link) as sock:
            started = time.monotonic()
            sock.sendall(f"send {size_bytes}\n".encode())
            _recv_exactly(sock, size_bytes)
            elapsed_s = time.monotonic() - started
    print(f"tbf 4 mbit, {size_bytes} bytes: {elapsed_s:.3f} s (ideal 0.400 s)")
    assert 0.25 <= elapsed_s <= 1.0 * UNIT


def test_close_removes_namespace_veth_and_processes() -> None:
    link = NetnsLink()
    server = _start_server(link)
    sleeper = link.popen(["sleep", "600"])
    names = {link.name, link.host_if}
    assert names <= _ours()
    link.close()
    link.close()  # idempotent
    for proc in (server, sleeper):
        assert proc.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)
    assert link.name not in _ip("netns", "list")
    assert subprocess.run(
        ["ip", "link", "show", "dev", link.host_if], capture_output=True
    ).returncode
    with pytest.raises(NetnsError):
        link.popen(["true"])


def test_exception_inside_with_still_cleans_up() -> None:
    with pytest.raises(ZeroDivisionError), NetnsLink(LinkSpec(loss_pct=5)) as link:
        sleeper = link.popen(["sleep", "600"])
        _ = 1 / 0
    assert sleeper.returncode is not None


def test_failed_setup_undoes_what_was_made(monkeypatch: pytest.MonkeyPatch) -> None:
    netns.capabilities()  # probe with the real tc first
    monkeypatch.setattr(netns, "_TC", "/nonexistent/tc")
    with pytest.raises(NetnsError, match=r"^/nonexistent/tc -n pushlab-\d+-\d+ qdisc add .*: "):
        NetnsLink(LinkSpec(rate_bps=1e6))


def test_missing_capability_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Capabilities(True, True, True, False, False, {"nft_random_drop": "nft: not found"})
    monkeypatch.setattr(netns, "capabilities", lambda: fake)
    with pytest.raises(NetnsError, match=r"cannot create 5 % random packet drop .*nft: not found"):
        NetnsLink(LinkSpec(loss_pct=5))
    with NetnsLink() as link:  # no loss needed: works, and loss cannot be added later
        assert link.counters()["dropped_packets"] == 0
        with pytest.raises(NetnsError, match="random packet drop"):
            link.set_loss(1)


def test_cleanup_stale_removes_dead_pid_namespace() -> None:
    dead_pid = 4_194_304 + os.getpid()  # above the kernel's largest possible pid_max
    name = f"pushlab-{dead_pid}-0"
    host_if = f"plstale{os.getpid() % 10**8}"
    _ip("netns", "add", name)
    orphan: subprocess.Popen[bytes] | None = None
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "veth0", "netns", name)
        _ip("link", "set", "dev", host_if, "alias", name)
        orphan = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
        wait_until(lambda: _ip("netns", "pids", name).split(), what=f"a process lives in {name}")
        with NetnsLink() as alive:
            removed = netns.cleanup_stale()
            assert alive.name not in removed and alive.host_if not in removed
        assert {name, host_if} <= set(removed)
        assert orphan.wait(5 * UNIT) == -9
        assert name not in _ip("netns", "list")
    finally:
        if orphan is not None and orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        if name in _ip("netns", "list"):
            _ip("netns", "del", name)


def test_two_links_are_independent() -> None:
    payload = _payload(50_000)
    with NetnsLink(LinkSpec(loss_pct=20)) as lossy, NetnsLink() as clean:
        assert lossy.name != clean.name and lossy.server_host != clean.server_host
        _start_server(lossy)
        _start_server(clean)
        with _connect(clean) as sock_clean, _connect(lossy) as sock_lossy:
            assert _echo(sock_clean, payload) == payload
            assert _echo(sock_lossy, payload) == payload
            assert _total_retrans(sock_clean) == 0
        assert lossy.counters()["dropped_packets"] > 0
        assert clean.counters()["dropped_packets"] == 0
