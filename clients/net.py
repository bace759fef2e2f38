"""The connections a client owns, with their bytes counted by the kernel and by us.

`Connection` is the small network-stream interface every HTTP layer speaks through (read,
write, aclose -> `ConnStats`), and a `Connector` opens one to a `Target`: the HTTP layer is
handed a connector rather than a host and port, so TCP, TLS over it (`clients/tls.py`),
QUIC later, or the in-memory fakes of `clients/fake.py` plug in without touching it.

`Conn` is the TCP implementation. Before the socket closes it reads Linux's
`struct tcp_info` (TCP_INFO): `tcpi_bytes_acked` (offset 120) is what we sent and the peer
acknowledged, and `tcpi_bytes_received` (offset 128) what we received, each the TCP payload
of the whole connection (HTTP headers, chunk framing, WebSocket frames: everything). The
application's own byte count is kept beside it as the cross-check and as the fallback where
TCP_INFO is missing. Every read stamps both clocks before anything parses the bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

from streams.errors import TransportError

READ_SIZE = 65536
ACK_WAIT_S = 0.25  # at most this long for the peer to ack our last bytes before counting

# struct tcp_info (include/uapi/linux/tcp.h): offset, format
_TCPI_FIELDS = {
    "state": (0, "B"),
    "unacked": (24, "I"),
    "rtt_us": (68, "I"),
    "total_retrans": (100, "I"),
    "bytes_acked": (120, "Q"),
    "bytes_received": (128, "Q"),
    "segs_out": (136, "I"),
    "segs_in": (140, "I"),
}
_TCPI_SIZE = 144

# include/net/tcp_states.h: states in which the peer's FIN has been received
_FIN_RECEIVED_STATES = frozenset({8, 9, 11, 6})  # CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the server (or a proxy in front of it) listens; `secure`: speak TLS to it."""

    host: str = "127.0.0.1"
    port: int = 8000
    secure: bool = False  # an https:// or wss:// URL: the client needs a TLS connector
    # a credential (streams/credentials.py) sent as `Authorization: Bearer` on every request
    # and WebSocket handshake; "" for a server without --auth. Never in a repr or a record.
    token: str = dataclasses.field(default="", repr=False, compare=False)

    def authorization(self) -> list[tuple[str, str]]:
        """The Authorization header this target's requests carry (none without a token)."""
        return [("Authorization", f"Bearer {self.token}")] if self.token else []

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "ws", "https", "wss") or not parts.hostname:
            raise ValueError(f"server URL must look like http(s)://HOST:PORT, got {url!r}")
        secure = parts.scheme in ("https", "wss")
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError:
            raise ValueError(f"bad port in server URL {url!r}") from None
        return cls(parts.hostname, port, secure)

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.authority}"

    @property
    def authority(self) -> str:
        """`host:port` as the Host header and a WebSocket URI write it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class TcpInfo:
    state: int
    unacked: int
    rtt_us: int
    total_retrans: int
    bytes_acked: int
    bytes_received: int
    segs_out: int
    segs_in: int


def read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    """The kernel's counters for `sock`, or None where TCP_INFO is unavailable."""
    opt = getattr(socket, "TCP_INFO", None)
    if opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, opt, 256)
    except (OSError, ValueError):  # ValueError: uvloop's stand-in socket once its fd is gone
        return None
    if len(raw) < _TCPI_SIZE:
        return None
    return TcpInfo(
        **{name: struct.unpack_from(fmt, raw, off)[0] for name, (off, fmt) in _TCPI_FIELDS.items()}
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ConnStats:
    """What one connection carried; `bytes_*` are the kernel's when `source` is "kernel".

    `packets_*` are the stack's units (TCP segments, QUIC packets), -1 when unknown; `stack`
    names the stack that carried the bytes: "tcp", "tls" (clients/tls.py), "quic" later.
    `app_bytes_*` are what the layer above wrote and read: over TLS, the plaintext.

    The fields after `stack` have defaults (-1: not measured), so every stack fills in only
    what it knows:

    - `http_version`: "1.1" or "2", set by the HTTP layer (dataclasses.replace) at close.
    - `tls_version`, `tls_cipher`, `alpn`: as negotiated ("TLSv1.3", "TLS_AES_256_GCM_SHA384",
      "http/1.1"); empty over plain TCP or when ALPN chose nothing.
    - `connect_ns`: how long the TCP connect took; `handshake_ns`: the TLS handshake after it
      (ClientHello sent to our Finished written).
    - `tls_resumed`: the handshake resumed an earlier session (a session ticket, RFC 8446 2.2).
    - `tls_handshake_bytes_up/down`: ciphertext on the wire until the handshake completed.
    - `tls_records_down`: records received after the handshake that carried application data,
      `tls_record_bytes_down` their wire bytes, 5-byte headers included (minus the plaintext:
      the TLS overhead, 22 bytes per record for TLS 1.3 with AES-GCM or ChaCha20-Poly1305);
      `tls_control_bytes_down`: post-handshake records with no application data
      (NewSessionTicket, KeyUpdate, alerts such as close_notify). Likewise `*_up`.
      Over TLS, bytes_down = handshake + record + control bytes down, when all was read.
    - `streams`: the most HTTP streams this connection carried at once (HTTP/2 sets it).
    - QUIC (clients/quic.py; `source` "udp": our exact count of UDP payload bytes):
      `packets_*` count datagrams, `retransmits` the packets loss detection declared lost,
      `handshake_packets_up/down` the datagrams until the handshake completed, `cc` the
      congestion controller ("reno", "cubic"; "" for TCP, whose is the kernel's), and
      `rcvbuf`/`sndbuf` the socket's buffer sizes (SO_RCVBUF/SO_SNDBUF, -1 unknown).
    """

    index: int
    bytes_up: int
    bytes_down: int
    app_bytes_up: int
    app_bytes_down: int
    packets_up: int
    packets_down: int
    retransmits: int
    source: str
    stack: str
    http_version: str = ""
    tls_version: str = ""
    tls_cipher: str = ""
    alpn: str = ""
    connect_ns: int = -1
    handshake_ns: int = -1
    tls_resumed: bool = False
    tls_handshake_bytes_up: int = -1
    tls_handshake_bytes_down: int = -1
    tls_records_down: int = -1
    tls_record_bytes_down: int = -1
    tls_control_bytes_down: int = -1
    tls_records_up: int = -1
    tls_record_bytes_up: int = -1
    tls_control_bytes_up: int = -1
    streams: int = 1
    handshake_packets_up: int = -1
    handshake_packets_down: int = -1
    cc: str = ""
    rcvbuf: int = -1
    sndbuf: int = -1


class Connection(Protocol):
    """One client connection: bytes in and out, timestamped reads, and its counts at close.

    `read` returns b"" at EOF; both raise TransportError (retryable) when the connection
    breaks; `aclose` is idempotent and returns the same `ConnStats` every time. The HTTP
    layer numbers its connections by setting `index` before the first read."""

    index: int
    last_recv_ns: int  # time.time_ns() of the latest read
    last_recv_perf_ns: int  # time.perf_counter_ns() of the latest read

    async def read(self, size: int = ...) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> ConnStats: ...


Connector = Callable[[Target], Awaitable[Connection]]
"""Opens a connection to a target; failing to connect is a (retryable) TransportError."""


async def tcp_connector(target: Target) -> Connection:
    """The default `Connector`: a TCP connection (`Conn`), errors translated here."""
    try:
        return await Conn.open(target.host, target.port)
    except OSError as exc:
        raise TransportError(
            f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}"
        ) from exc


class Conn:
    """A client-side TCP connection: write, read (timestamped), aclose (-> ConnStats)."""

    stack = "tcp"

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int = 0
    ) -> None:
        self._reader, self._writer = reader, writer
        self.index = index
        self.app_up = 0
        self.app_down = 0
        self.last_recv_ns = 0  # time.time_ns() of the latest read
        self.last_recv_perf_ns = 0  # time.perf_counter_ns() of the latest read
        self.connect_ns = -1  # how long `open` took to connect (-1: handed an open socket)
        self.stats: ConnStats | None = None
        self._eof_info: TcpInfo | None = None  # TCP_INFO when the peer's FIN arrived
        self.close_error = ""
        sock = writer.get_extra_info("socket")
        self._sock: socket.socket | None = sock
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    async def open(cls, host: str, port: int, index: int = 0) -> Conn:
        start = time.perf_counter_ns()
        reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE * 4)
        conn = cls(reader, writer, index)
        conn.connect_ns = time.perf_counter_ns() - start
        return conn

    async def write(self, data: bytes) -> None:
        """Send `data`; a broken connection is a (retryable) TransportError."""
        try:
            self._writer.write(data)
            self.app_up += len(data)
            await self._writer.drain()
        except OSError as exc:
            raise TransportError(f"connection broken while sending: {exc.strerror or exc}") from exc

    async def read(self, size: int = READ_SIZE) -> bytes:
        """Up to `size` bytes as they arrive; b"" at EOF; a reset is a TransportError."""
        try:
            data = await self._reader.read(size)
        except OSError as exc:
            raise TransportError(f"connection broken: {exc.strerror or exc}") from exc
        self.last_recv_ns = time.time_ns()
        self.last_recv_perf_ns = time.perf_counter_ns()
        self.app_down += len(data)
        if not data:
            # the peer's FIN: count now. A write after it can draw a reset, and uvloop then
            # closes the socket before aclose() could read TCP_INFO (seen with a WebSocket
            # over TLS whose server closed first, our close_notify answered by RST)
            self._eof_info = self.tcp_info()
        return data

    def tcp_info(self) -> TcpInfo | None:
        fresh = read_tcp_info(self._sock) if self._sock is not None else None
        return fresh or self._eof_info

    async def aclose(self) -> ConnStats:
        """Count (waiting briefly for our last bytes to be acked), then close."""
        if self.stats is not None:
            return self.stats
        info = self.tcp_info()
        deadline = time.monotonic() + ACK_WAIT_S
        # bytes_acked includes our SYN (see _stats), hence the +1
        while (
            info is not None and info.bytes_acked < self.app_up + 1 and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.002)
            info = self.tcp_info()
        self.stats = self._stats(info)
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError) as exc:  # the peer reset it: the counts are taken
            self.close_error = f"{type(exc).__name__}"
        return self.stats

    def _stats(self, info: TcpInfo | None) -> ConnStats:
        if info is None:
            return ConnStats(
                self.index,
                self.app_up,
                self.app_down,
                self.app_up,
                self.app_down,
                -1,
                -1,
                -1,
                "app",
                self.stack,
                connect_ns=self.connect_ns,
            )
        # The kernel counts sequence space: our SYN is in bytes_acked once the handshake is
        # done (tcp_snd_una_update), and the peer's FIN is in bytes_received once it arrived
        # (tcp_rcv_nxt_update on the FIN's end_seq). Take one off for each: payload bytes.
        up = max(0, info.bytes_acked - 1)
        down = info.bytes_received - (1 if info.state in _FIN_RECEIVED_STATES else 0)
        return ConnStats(
            self.index,
            up,
            down,
            self.app_up,
            self.app_down,
            info.segs_out,
            info.segs_in,
            info.total_retrans,
            "kernel",
            self.stack,
            connect_ns=self.connect_ns,
        )
