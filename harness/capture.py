"""Our own packet capture: TCP payload bytes per connection, counted off the wire.

The clients count bytes with the kernel's TCP_INFO (`tcpi_bytes_acked - 1` up,
`tcpi_bytes_received` down, see clients/net.py). Over TLS the front proxy's access log
($bytes_sent) counts plaintext, so it cannot check them; this module is the independent
count: the packets themselves, seen by an AF_PACKET socket (no tcpdump, no libpcap).

Theory of operation. `Capture(port)` opens an AF_PACKET SOCK_DGRAM socket (packet(7): the
link-layer header is removed, so offset 0 is the IP header on any link type: lo, veth, tun)
bound to one interface, with a classic BPF program (`port_filter`) that passes only TCP
segments to or from `port`, truncated to their headers. A background *thread* (never the
measuring event loop) reads them until `stop()` and keeps, per TCP connection (4-tuple) and
per direction ("up" = toward `port`, client -> server):

    payload_bytes   TCP payload (IP length - IP header - TCP data offset) of sequence space
                    not seen before: comparable to tcpi_bytes_acked - 1 / tcpi_bytes_received
    retrans_bytes   payload whose sequence range had already been seen (retransmissions)
    packets         segments, pure ACKs included; syn / fin / rst: flags seen

SYN and FIN each take one sequence number; they are not payload and are not counted as
bytes (a SYN's data, TCP Fast Open, starts at ISN + 1 and is). `stop()` drains what the
socket still holds, so once both applications have read their bytes, the count is complete:
a packet tap runs before the stack delivers the data (dev_queue_xmit_nit on transmit,
__netif_receive_skb on receive).

A count that missed packets says so: the kernel's PACKET_STATISTICS (tp_drops, packets the
socket's 32 MB receive buffer had no room for) is summed into `dropped`.

`netns="NAME"` captures inside /run/netns/NAME (as `ip netns add` makes them): the thread
enters it with setns(2) before opening the socket, which then stays bound to that namespace's
interface; setns moves only the calling thread, so nothing else of the process moves. Python
3.11 (this venv) has no os.setns, so it is libc's, through ctypes.

Measured on this machine (2 cores shared with other jobs, load average about 2, Python 3.11,
kernel 6.18): the thread counts 50,000 to 78,000 packets/s (13 to 20 µs each). Method: hold
its lock while a subprocess floods one loopback connection with 1-byte writes, release it,
time the drain of the full socket. With the counting replaced by a no-op it drains 78,000 to
108,000/s: recvmsg_into and its ancillary data (a system call per packet) are about two
thirds of the cost; a TPACKET_V3 mmap ring would remove them if ever needed. A token stream
is a few hundred to a few thousand packets/s, and the kernel-side filter means unrelated
traffic costs the thread nothing. The 32 MB buffer (64 MB of kernel accounting) is charged
each packet's whole truesize, not the 128 bytes kept: a flood of 1,000-byte writes filled it
at 22,000 queued segments (100,000 1-byte segments did not), and `dropped` says when. The
thread holds the GIL while it counts, taking that CPU from a measuring event loop in the
same process.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

from streams.errors import EnvironmentUnavailable, PushlabError

# <linux/if_ether.h>, <linux/if_packet.h>, <asm-generic/socket.h>, <linux/sockios.h>
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS has the same value (x86 and arm64; not in Python 3.11)
SIOCGIFFLAGS = 0x8913
IFF_LOOPBACK = 0x8
CLONE_NEWNET = 0x40000000

RCVBUF_BYTES = 32 * 1024 * 1024
POLL_S = 0.1  # the thread's recv timeout: how long stop() may wait for it to notice
DRAIN_S = 1.0  # stop() reads what is queued for at most this long (a flood never ends)
JOIN_S = DRAIN_S + 2 * POLL_S
CHECK_EVERY = 1024  # packets between two looks at stop() and PACKET_STATISTICS under load
# What the filter keeps of a packet: IPv4 header (<= 60) + TCP header (<= 60). The lengths
# come from the IP header (and from PACKET_AUXDATA's tp_len when that says 0), not from this.
SNAP_BYTES = 128
_BUF_BYTES = 256

# TCP flags (RFC 9293 section 3.1)
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_SEQ_MOD = 1 << 32

# struct tpacket_auxdata {u32 tp_status, tp_len, tp_snaplen; u16 tp_mac, tp_net, tp_vlan_tci,
# tp_vlan_tpid}: tp_len is the packet's length before the filter truncated it
_AUXDATA = struct.Struct("IIIHHHH")
_IPV4 = struct.Struct("!2xH8x4s4s")  # total length, source, destination
_IPV6 = struct.Struct("!4xH2x16s16s")  # payload length, source, destination
_TCP = struct.Struct("!HHI4xH")  # source port, destination port, seq, data offset + flags


# Classic BPF opcodes (<linux/bpf_common.h>, <linux/filter.h>)
_LD_B, _LD_H, _LD_W = 0x30, 0x28, 0x20  # BPF_LD | BPF_B/H/W | BPF_ABS: A = [k]
_LD_H_IND = 0x48  # BPF_LD | BPF_H | BPF_IND: A = [X + k]
_LDX_MSH = 0xB1  # BPF_LDX | BPF_B | BPF_MSH: X = 4 * ([k] & 0xf), the IPv4 header length
_RSH, _JEQ, _JSET, _RET = 0x74, 0x15, 0x45, 0x06  # BPF_ALU|BPF_RSH|BPF_K, BPF_JMP|..., BPF_RET
_SKF_AD_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_PKTTYPE: skb->pkt_type

# One instruction: (opcode, k, label if true, label if false); None jumps to the next one.
_Insn = tuple[int, int, str | None, str | None]


def port_filter(port: int, *, loopback: bool) -> list[tuple[int, int, int, int]]:
    """A classic BPF program, as struct sock_filter (code, jt, jf, k) tuples: TCP to or from
    `port` over IPv4 or IPv6, truncated to SNAP_BYTES; everything else dropped.

    Offset 0 is the IP header (a SOCK_DGRAM packet socket). On loopback it also drops the
    PACKET_OUTGOING copy of each packet (see `_Flows.add`). Not followed, hence not counted:
    IPv6 extension headers before TCP and IPv4 fragments, neither of which Linux TCP sends
    (it sets DF and uses no extension headers)."""
    program: list[str | _Insn] = []
    if loopback:
        program += [(_LD_W, _SKF_AD_PKTTYPE, None, None),
                    (_JEQ, socket.PACKET_OUTGOING, "drop", None)]  # fmt: skip
    program += [
        (_LD_B, 0, None, None), (_RSH, 4, None, None),  # A = IP version
        (_JEQ, 4, None, "v6"),
        (_LD_B, 9, None, None), (_JEQ, socket.IPPROTO_TCP, None, "drop"),  # protocol
        (_LD_H, 6, None, None), (_JSET, 0x3FFF, "drop", None),  # MF or fragment offset
        (_LDX_MSH, 0, None, None),  # X = IPv4 header length
        (_LD_H_IND, 0, None, None), (_JEQ, port, "accept", None),  # source port
        (_LD_H_IND, 2, None, None), (_JEQ, port, "accept", "drop"),  # destination port
        "v6",
        (_JEQ, 6, None, "drop"),  # A is still the version
        (_LD_B, 6, None, None), (_JEQ, socket.IPPROTO_TCP, None, "drop"),  # next header
        (_LD_H, 40, None, None), (_JEQ, port, "accept", None),
        (_LD_H, 42, None, None), (_JEQ, port, "accept", "drop"),
        "accept", (_RET, SNAP_BYTES, None, None),
        "drop", (_RET, 0, None, None),
    ]  # fmt: skip
    return _assemble(program)


def _assemble(program: list[str | _Insn]) -> list[tuple[int, int, int, int]]:
    """Resolve labels into the relative jump offsets of struct sock_filter."""
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def offset(pc: int, label: str | None) -> int:
        return 0 if label is None else labels[label] - pc - 1

    return [(code, offset(pc, jt), offset(pc, jf), k) for pc, (code, k, jt, jf) in enumerate(insns)]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog {u16 len; struct sock_filter *filter}."""
    insns = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class SeqSpace:
    """The sequence ranges one direction of a connection has carried: which bytes are new.

    Sequence numbers are unwrapped (RFC 9293 section 3.4: arithmetic modulo 2**32) against the
    highest seen, so flows past 4 GiB stay exact. Ranges are kept merged: in order, that is one
    range, and adding a segment is O(1); reordering or a retransmission after loss leaves holes
    until they are filled."""

    __slots__ = ("_base", "_high", "_ranges")

    def __init__(self) -> None:
        self._base: int | None = None  # the first payload sequence number (ISN + 1 when a SYN)
        self._high = 0  # the highest unwrapped end seen, relative to _base
        self._ranges: list[list[int]] = []  # [start, end) relative to _base, sorted, merged

    def start(self, seq: int) -> None:
        """Anchor at `seq` (the ISN + 1 of a SYN), unless anchored already."""
        if self._base is None:
            self._base = seq

    def add(self, seq: int, length: int) -> int:
        """Record payload [seq, seq + length); return how many of its bytes are new."""
        if self._base is None:
            self._base = seq
        rel = (seq - self._base - self._high) % _SEQ_MOD
        start = self._high + (rel - _SEQ_MOD if rel >= _SEQ_MOD // 2 else rel)
        end = start + length
        self._high = max(self._high, end)
        ranges = self._ranges
        if ranges and ranges[-1][1] == start:  # the common case: the next bytes, in order
            ranges[-1][1] = end
            return length
        if not ranges or ranges[-1][1] < start:
            ranges.append([start, end])
            return length
        return self._merge(start, end)

    def _merge(self, start: int, end: int) -> int:
        new = end - start
        keep: list[list[int]] = []
        lo, hi = start, end
        for r in self._ranges:
            if r[1] < start or r[0] > end:
                keep.append(r)
                continue
            new -= max(0, min(r[1], end) - max(r[0], start))  # the overlap was seen before
            lo, hi = min(lo, r[0]), max(hi, r[1])
        keep.append([lo, hi])
        keep.sort()
        self._ranges = keep
        return new


@dataclasses.dataclass(slots=True)
class DirCount:
    """One direction of one connection, as the capture saw it."""

    payload_bytes: int = 0  # unique sequence space carried (comparable to TCP_INFO)
    retrans_bytes: int = 0  # payload of sequence space already seen
    packets: int = 0
    syn: int = 0
    fin: int = 0
    rst: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ConnCount:
    """One TCP connection: `up` toward the server end (the capture's `port`), `down` back.

    `first_ns` / `last_ns` are the kernel's receive timestamps (CLOCK_REALTIME, ns) of its
    first and last segment seen."""

    client: tuple[str, int]
    server: tuple[str, int]
    up: DirCount
    down: DirCount
    first_ns: int
    last_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class CaptureStats:
    """The capture's own health: `dropped` > 0 means the counts are low by that many packets."""

    packets_read: int  # segments the thread parsed (after the kernel filter)
    packets_ignored: int  # read but not counted (a loopback PACKET_OUTGOING copy, not TCP)
    kernel_packets: int  # PACKET_STATISTICS tp_packets: passed the filter, drops included
    dropped: int  # PACKET_STATISTICS tp_drops: no room in the receive buffer
    error: str  # why reading stopped early ("" when it did not): the counts are incomplete


class CaptureError(PushlabError):
    """The capture socket failed while reading (its interface went away): counts are short."""


class _Flow:
    __slots__ = ("client", "closed", "down", "first_ns", "isn", "last_ns", "seq_down", "seq_up",
                 "server", "up")  # fmt: skip

    def __init__(self, client: tuple[bytes, int], server: tuple[bytes, int], now_ns: int) -> None:
        self.client, self.server = client, server
        self.up, self.down = DirCount(), DirCount()
        self.seq_up, self.seq_down = SeqSpace(), SeqSpace()
        self.isn: int | None = None  # the client's SYN sequence number
        self.first_ns = self.last_ns = now_ns
        self.closed = False  # a FIN or RST seen: a new SYN on this 4-tuple is a new connection

    def snapshot(self) -> ConnCount:
        def addr(end: tuple[bytes, int]) -> tuple[str, int]:
            family = socket.AF_INET if len(end[0]) == 4 else socket.AF_INET6
            return socket.inet_ntop(family, end[0]), end[1]

        return ConnCount(addr(self.client), addr(self.server), dataclasses.replace(self.up),
                         dataclasses.replace(self.down), self.first_ns, self.last_ns)  # fmt: skip


_Key = tuple[bytes, int, bytes, int]  # client address, client port, server address, server port


class _Flows:
    """The counting, apart from the socket: segments in, per-connection counts out."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.flows: dict[_Key, _Flow] = {}
        self.ended: list[_Flow] = []  # earlier connections on a 4-tuple used again
        self.read = self.ignored = 0

    def add(self, pkt: bytearray, n: int, pkttype: int, loopback: bool, orig_len: int,
            ts_ns: int) -> None:  # fmt: skip
        """Count one packet: `pkt[:n]` from its IP header, `orig_len` its untruncated length."""
        self.read += 1
        # On loopback each packet is seen twice: once PACKET_OUTGOING (dev_queue_xmit_nit, as
        # lo transmits) and once PACKET_HOST (__netif_receive_skb, as it is received). We count
        # the PACKET_HOST copy: it exists only if the packet reached the receiving stack (a
        # full backlog, net.core.netdev_max_backlog, drops it after the OUTGOING copy was
        # seen), so the bytes counted are the bytes the receiver's TCP was handed, which is
        # what tcpi_bytes_received counts. On any other link each packet is seen once: ours
        # leave as OUTGOING, the peer's arrive as HOST; both count. (On loopback the kernel
        # filter already drops the OUTGOING copy; this test keeps the rule in one place.)
        if (loopback and pkttype == socket.PACKET_OUTGOING) or pkttype not in (0, 4):
            self.ignored += 1
            return
        version = pkt[0] >> 4
        if version == 4 and n >= 40:  # RFC 791 section 3.1: IHL in 32-bit words
            length, src, dst = _IPV4.unpack_from(pkt)
            ip_hlen = (pkt[0] & 0x0F) << 2
            # A length of 0 is a GSO packet beyond 64 KiB (BIG TCP, or a bogus field of a
            # super-packet on a veth): take the packet's own length, PACKET_AUXDATA's tp_len.
            ip_len = length or orig_len
        elif version == 6 and n >= 60:  # RFC 8200 section 3: payload length excludes the 40
            length, src, dst = _IPV6.unpack_from(pkt)
            ip_hlen = 40
            ip_len = length + 40 if length else orig_len
        else:
            self.ignored += 1
            return
        sport, dport, seq, off_flags = _TCP.unpack_from(pkt, ip_hlen)
        payload = ip_len - ip_hlen - ((off_flags >> 12) << 2)  # RFC 9293 3.1: data offset
        self._count(src, sport, dst, dport, seq, payload, off_flags & 0x3F, ts_ns)

    def _count(self, src: bytes, sport: int, dst: bytes, dport: int, seq: int, payload: int,
               flags: int, ts_ns: int) -> None:  # fmt: skip
        upward = dport == self.port
        key = (src, sport, dst, dport) if upward else (dst, dport, src, sport)
        flow = self.flows.get(key)
        new_syn = flags & SYN and upward and not flags & ACK
        if flow is None or (new_syn and flow.closed and flow.isn != seq):
            if flow is not None:
                self.ended.append(flow)
            flow = self.flows[key] = _Flow((key[0], key[1]), (key[2], key[3]), ts_ns)
        flow.last_ns = ts_ns
        count, space = (flow.up, flow.seq_up) if upward else (flow.down, flow.seq_down)
        count.packets += 1
        if flags & SYN:
            count.syn += 1
            if new_syn:
                flow.isn = seq
            seq = (seq + 1) % _SEQ_MOD  # the SYN takes one sequence number; data follows it
            space.start(seq)
        if flags & FIN:
            count.fin += 1
            flow.closed = True
        if flags & RST:
            count.rst += 1
            flow.closed = True
        if payload > 0:
            new = space.add(seq, payload)
            count.payload_bytes += new
            count.retrans_bytes += payload - new


def _packet_socket() -> socket.socket:
    """An AF_PACKET socket that receives nothing until bound (protocol 0), so the filter is
    in place before the first packet arrives; PermissionError without CAP_NET_RAW."""
    return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it: setns(2) acts on one task) into /run/netns/NAME.

    Python 3.11 has no os.setns (3.12 added it), so libc's, through ctypes."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _is_loopback(sock: socket.socket, interface: str) -> bool:
    ifreq = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, struct.pack("16s16x", interface.encode()))
    return bool(struct.unpack_from("H", ifreq, 16)[0] & IFF_LOOPBACK)


def _open(interface: str, port: int, netns: str | None) -> tuple[socket.socket, bool]:
    """The filtered packet socket on `interface` (in `netns`), and whether it is a loopback."""
    if netns is not None:
        _enter_netns(netns)
    sock = _packet_socket()
    try:
        loopback = _is_loopback(sock, interface)
        _attach_filter(sock, port_filter(port, loopback=loopback))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        with contextlib.suppress(PermissionError):  # beyond net.core.rmem_max (4 MB): root
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((interface, ETH_P_ALL))
        sock.settimeout(POLL_S)
    except BaseException:
        sock.close()
        raise
    return sock, loopback


_ANC_BYTES = socket.CMSG_SPACE(_AUXDATA.size) + socket.CMSG_SPACE(16)


class Capture:
    """Count TCP payload per connection to or from `port` on `interface`, from a thread.

    Use as a context manager (or start() / stop()). `connections()` and `totals()` may be
    read while it runs; after stop() they include every packet the socket had queued."""

    def __init__(self, port: int, interface: str = "lo", netns: str | None = None) -> None:
        self.port, self.interface, self.netns = port, interface, netns
        self._flows = _Flows(port)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None  # opening failed
        self._failure: OSError | None = None  # reading failed
        self._thread: threading.Thread | None = None
        self._kernel_packets = 0
        self._dropped = 0

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Open the socket (in the thread, so a netns applies to it alone) and start reading;
        EnvironmentUnavailable when this machine or user cannot capture."""
        if self._ready.is_set():
            raise RuntimeError("a Capture is started once")
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            if not isinstance(self._error, OSError | AttributeError):  # AttributeError: no
                raise self._error  # AF_PACKET (not Linux); anything else is our bug
            where = f"{self.interface}" + (f" in netns {self.netns}" if self.netns else "")
            exc = self._error
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise EnvironmentUnavailable(
                f"cannot capture packets on {where}: {type(exc).__name__}: {reason}"
            ) from exc

    def stop(self) -> None:
        """Count what the socket holds (for at most DRAIN_S), read its drop count, close it,
        join the thread; CaptureError if reading failed on the way."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(JOIN_S)
        if self._thread.is_alive():
            raise RuntimeError(f"capture thread for port {self.port} did not stop")
        self._thread = None
        if self._failure is not None:
            raise CaptureError(f"capture on {self.interface} failed: {self._failure}") from (
                self._failure
            )

    @property
    def dropped(self) -> int:
        return self._dropped

    def statistics(self) -> CaptureStats:
        with self._lock:
            f = self._flows
            error = "" if self._failure is None else str(self._failure)
            return CaptureStats(f.read, f.ignored, self._kernel_packets, self._dropped, error)

    def connections(self) -> dict[tuple[str, int, str, int], ConnCount]:
        """Each connection's counts, keyed by (client address, client port, server address,
        server port); a 4-tuple used by two connections in turn shows the later one."""
        with self._lock:
            return {(*f.client, *f.server): f for f in self._snapshots()}

    def totals(self, client_port: int | None = None) -> tuple[int, int]:
        """(payload up, payload down) in unique bytes, over all connections (ended ones too)
        or those from `client_port`."""
        with self._lock:
            counts = [c for c in self._snapshots() if client_port in (None, c.client[1])]
        return sum(c.up.payload_bytes for c in counts), sum(c.down.payload_bytes for c in counts)

    def _snapshots(self) -> Iterator[ConnCount]:
        for flow in [*self._flows.ended, *self._flows.flows.values()]:
            yield flow.snapshot()

    def _run(self) -> None:
        try:
            sock, loopback = _open(self.interface, self.port, self.netns)
        except BaseException as exc:  # start() raises it in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        buf = bytearray(_BUF_BYTES)
        with sock:
            try:
                while not self._stop.is_set():
                    self._read(sock, buf, loopback, None)
                sock.setblocking(False)
                self._read(sock, buf, loopback, time.monotonic() + DRAIN_S)
                self._read_drops(sock)
            except OSError as exc:  # ENETDOWN: the interface (or its namespace) went away
                self._failure = exc

    def _read(self, sock: socket.socket, buf: bytearray, loopback: bool,
              drain_until: float | None) -> None:  # fmt: skip
        """Count packets until none comes for POLL_S or stop() is called; or, draining
        (non-blocking), until none is left or `drain_until` (time.monotonic()) passes."""
        flows, lock = self._flows, self._lock
        for n_read in itertools.count(1):
            if n_read % CHECK_EVERY == 0:  # under a flood the timeout never comes
                self._read_drops(sock)
                late = drain_until is not None and time.monotonic() > drain_until
                if late or (drain_until is None and self._stop.is_set()):
                    return
            try:
                n, anc, _flags, addr = sock.recvmsg_into([buf], _ANC_BYTES)
            except (TimeoutError, BlockingIOError):
                self._read_drops(sock)
                return
            except InterruptedError:
                continue
            orig_len, ts_ns = n, time.time_ns()
            for level, kind, data in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    orig_len = _AUXDATA.unpack_from(data)[1]
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack_from("qq", data)
                    ts_ns = sec * 1_000_000_000 + nsec
            with lock:
                flows.add(buf, n, addr[2], loopback, orig_len, ts_ns)

    def _read_drops(self, sock: socket.socket) -> None:
        # getsockopt(PACKET_STATISTICS) returns the counts since the last call and resets them
        packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        with self._lock:
            self._kernel_packets += packets
            self._dropped += drops
