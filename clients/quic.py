"""A client's QUIC connection over UDP, on aioquic's sans-I/O `QuicConnection`, counted exactly.

QUIC runs in user space, so there is no kernel TCP_INFO to ask: the exact count is ours. Every
datagram `datagrams_to_send()` hands us is one `sendto` of that many UDP payload bytes, and
every datagram the socket delivers is one `datagram_received` of its payload; we add them up
as they pass (`bytes_up`, `bytes_down`, `datagrams_up`, `datagrams_down`). That is the UDP
payload: QUIC headers, TLS handshake, every frame, padding. It is not what the wire carries
beyond it (IPv4 20 + UDP 8 bytes per datagram, and the link's own framing); an independent
count (a namespace interface's counters) must add those per datagram to compare (the test in
tests/test_quic_counts.py does, within 1%).

Theory of operation. `QuicConn` owns the UDP socket (an asyncio datagram endpoint), one
`QuicConnection` and one `H3Connection` over it. Everything that changes QUIC's state is
followed by `transmit()`: send what QUIC queued, and re-arm the one loss/idle timer at
`get_timer()`. Received datagrams are stamped with both clocks (as `clients/net.Conn` stamps
each TCP read) before aioquic parses them; the HTTP/3 events they produce are handed, in
order, to the consumer's `on_event` with those stamps in `last_recv_ns`/`last_recv_perf_ns`.

Handshake. `handshake_ns` runs from the first Initial sent to `HandshakeCompleted` (QUIC
merges the transport and TLS handshakes: one round trip to the first request), and the
datagrams and bytes each way until then are kept apart, so a record can say what the
handshake cost. Lost packets are what aioquic's loss detection declares lost (RFC 9002),
counted where it declares them (`QuicPacketRecovery._on_packets_lost`: aioquic has no public
counter), which is the QUIC analogue of TCP's `tcpi_total_retrans`.

Certificates: `ca_file` verifies the chain (Caddy's front, with the lab CA); `cert_sha256`
pins the leaf instead, as a browser's `serverCertificateHashes` does for the lab's own
WebTransport endpoint (its certificate is self-signed and lives under 14 days).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import H3Event
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.tls import AlertDescription
from cryptography.hazmat.primitives.serialization import Encoding

from clients.net import ConnStats, Target
from streams.errors import TransportError

CONGESTION_CONTROLLERS = ("reno", "cubic")  # aioquic's; its default is reno
HANDSHAKE_TIMEOUT_S = 10.0
DATAGRAM_FRAME_SIZE = 65536  # max_datagram_frame_size offered with WebTransport (aioquic's example)


@dataclasses.dataclass(frozen=True)
class QuicSettings:
    """How a client speaks QUIC (a frozen value: it crosses into fleet worker processes)."""

    server_name: str = "localhost"  # SNI: Caddy's QUIC handshake fails without one (alert 80)
    ca_file: str = ""  # verify the server's chain against this CA
    cert_sha256: str = ""  # or pin the leaf certificate's SHA-256 (hex), as browsers may
    cc: str = "reno"  # congestion controller: "reno" (aioquic's default) or "cubic"
    webtransport: bool = False  # offer H3_DATAGRAM and ENABLE_WEBTRANSPORT
    idle_timeout_s: float = 60.0
    source_host: str = ""  # bind the UDP socket to this local address ("": any)

    def __post_init__(self) -> None:
        if self.cc not in CONGESTION_CONTROLLERS:
            raise ValueError(f"cc must be one of {CONGESTION_CONTROLLERS}, got {self.cc!r}")
        if not self.ca_file and not self.cert_sha256:
            raise ValueError("a QUIC client needs ca_file or cert_sha256 to trust the server")

    def configuration(self) -> QuicConfiguration:
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(H3_ALPN),
            server_name=self.server_name,
            congestion_control_algorithm=self.cc,
            idle_timeout=self.idle_timeout_s,
            max_datagram_frame_size=DATAGRAM_FRAME_SIZE if self.webtransport else None,
        )
        if self.ca_file:
            config.load_verify_locations(cafile=self.ca_file)
        else:  # pinned: checked against the hash once the handshake is done (QuicConn.open)
            config.verify_mode = ssl.CERT_NONE
        return config


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, conn: QuicConn) -> None:
        self.conn = conn

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.conn._received(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable, etc.
        self.conn._error = f"{exc}"
        self.conn._unreachable(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._socket_closed(exc)


class QuicConn:
    """One QUIC connection (HTTP/3 on it) to a target; its counts at `aclose()`."""

    stack = "quic"

    def __init__(self, target: Target, settings: QuicSettings, index: int = 0) -> None:
        self.target, self.settings, self.index = target, settings, index
        self.quic = QuicConnection(configuration=settings.configuration())
        self.h3 = H3Connection(self.quic, enable_webtransport=settings.webtransport)
        self.on_event: Callable[[H3Event], None] = lambda event: None
        # every QUIC event, before HTTP/3 sees it: aioquic's H3Connection turns a peer's
        # RESET_STREAM into no H3Event at all, so a request layer watches StreamReset here
        self.on_quic_event: Callable[[QuicEvent], None] = lambda event: None
        self.on_terminated: Callable[[str], None] = lambda reason: None
        self.bytes_up = self.bytes_down = self.datagrams_up = self.datagrams_down = 0
        self.lost_packets = 0
        self.last_recv_ns = 0
        self.last_recv_perf_ns = 0
        self.handshake_ns = -1
        self.handshake_bytes = (-1, -1)
        self.handshake_datagrams = (-1, -1)
        self.alpn = ""
        self.terminated = ""  # why the connection ended ("" while it lives)
        self.rcvbuf = self.sndbuf = -1
        self._transport: asyncio.DatagramTransport | None = None
        self._addr: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._handshake = asyncio.get_running_loop().create_future()
        self._started_perf = 0
        self._error = ""
        self._stats: ConnStats | None = None
        self._closed = False  # the socket is closed: nothing more is sent or counted
        self._count_losses()

    def _count_losses(self) -> None:
        loss = self.quic._loss
        declare = loss._on_packets_lost

        def counting(*args: Any, **kwargs: Any) -> None:
            self.lost_packets += len(kwargs.get("packets", args[0] if args else ()))
            declare(*args, **kwargs)

        loss._on_packets_lost = counting  # type: ignore[method-assign]

    @classmethod
    async def open(cls, target: Target, settings: QuicSettings, index: int = 0) -> QuicConn:
        """Connect and complete the handshake (TransportError when it fails or times out)."""
        conn = cls(target, settings, index)
        await conn._connect()
        return conn

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.target.host, self.target.port, type=socket.SOCK_DGRAM
            )
            family, _, _, _, addr = infos[0]
            any_host = "0.0.0.0" if family == socket.AF_INET else "::"
            local = (self.settings.source_host or any_host, 0)
            # connected (remote_addr): Linux reports an ICMP port unreachable only to a
            # connected UDP socket, so a handshake to a port nobody listens on fails at once
            # instead of after HANDSHAKE_TIMEOUT_S (a stale discovery: a restarted server)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self), local_addr=local, remote_addr=(str(addr[0]), int(addr[1]))
            )
        except OSError as exc:
            raise TransportError(f"cannot open UDP to {self.target.authority}: {exc}") from exc
        self._transport = transport
        self._addr = addr
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self.sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self._started_perf = time.perf_counter_ns()
        self.quic.connect(addr, now=loop.time())
        self.transmit()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await self._handshake
        except TimeoutError:
            await self.aclose()
            raise TransportError(
                f"QUIC handshake with {self.target.authority} timed out"
                + (f" ({self._error})" if self._error else "")
            ) from None
        except TransportError:
            await self.aclose()
            raise
        if self.settings.cert_sha256:
            self._check_pin()

    def _unreachable(self, exc: Exception) -> None:
        """An ICMP error before the handshake completed: nobody answers there (retryable)."""
        if not self._handshake.done():
            why = exc.strerror or exc if isinstance(exc, OSError) else exc
            self._handshake.set_exception(TransportError(f"QUIC to {self.target.authority}: {why}"))

    def _check_pin(self) -> None:
        cert = self.quic.tls._peer_certificate
        seen = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() if cert else ""
        if seen != self.settings.cert_sha256.lower():
            self.quic.close(error_code=0x100 + 42, reason_phrase="certificate hash mismatch")
            self.transmit()
            raise TransportError(
                f"the server's certificate hash {seen[:16]}... is not the pinned one",
                retryable=False,
            )

    # --- I/O ---------------------------------------------------------------------------

    def transmit(self) -> None:
        """Send what QUIC has queued and re-arm its timer."""
        if self._transport is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        for data, _addr in self.quic.datagrams_to_send(now=loop.time()):
            self._transport.sendto(data)  # the connected peer (aioquic's addr is it)
            self.bytes_up += len(data)
            self.datagrams_up += 1
        at = self.quic.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(at, self._on_timer) if at is not None else None
            self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._closed:
            return
        self.quic.handle_timer(now=asyncio.get_running_loop().time())
        self._process()

    def _received(self, data: bytes, addr: Any) -> None:
        if self._closed:
            return
        self.last_recv_ns = time.time_ns()
        self.last_recv_perf_ns = time.perf_counter_ns()
        self.bytes_down += len(data)
        self.datagrams_down += 1
        self.quic.receive_datagram(data, addr, now=asyncio.get_running_loop().time())
        self._process()

    def _socket_closed(self, exc: Exception | None) -> None:
        """The UDP socket closed under a live connection (not by `aclose`): nothing more can
        arrive, so the connection is over now, not at the idle timeout."""
        if self._stats is not None or self.terminated:
            return
        self.terminated = "QUIC connection lost: its UDP socket closed" + (
            f" ({exc})" if exc else ""
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        self._closed = True
        if not self._handshake.done():
            self._handshake.set_exception(TransportError(self.terminated))
        self.on_terminated(self.terminated)

    def _process(self) -> None:
        event: QuicEvent | None = self.quic.next_event()
        while event is not None:
            if isinstance(event, HandshakeCompleted):
                self.handshake_ns = time.perf_counter_ns() - self._started_perf
                self.handshake_bytes = (self.bytes_up, self.bytes_down)
                self.handshake_datagrams = (self.datagrams_up, self.datagrams_down)
                self.alpn = event.alpn_protocol or ""
                if not self._handshake.done():
                    self._handshake.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                self._terminated(event)
            self.on_quic_event(event)
            for h3_event in self.h3.handle_event(event):
                self.on_event(h3_event)
            event = self.quic.next_event()
        self.transmit()

    def _terminated(self, event: ConnectionTerminated) -> None:
        """The connection ended (the peer's CONNECTION_CLOSE, idle timeout, or our own
        error). Before the handshake completed, a transport close with a code in
        0x100-0x1ff is a TLS alert (RFC 9001 4.8: CRYPTO_ERROR = 0x100 + alert): the server
        refused this client's TLS (a missing or empty SNI, a certificate it cannot choose):
        trying again with the same settings cannot help, so it is not retryable. MEASURED
        against Caddy 2.6.2: an empty server_name (aioquic then sends an EMPTY SNI extension)
        is closed at once with 0x10a, alert 10 (unexpected_message); an IP literal (aioquic
        sends no SNI at all, RFC 6066 3) completes the handshake."""
        code, during_handshake = event.error_code, not self._handshake.done()
        reason = event.reason_phrase or f"error 0x{code:x}"
        retryable = True
        if during_handshake and event.frame_type is not None and 0x100 <= code <= 0x1FF:
            try:
                alert = AlertDescription(code - 0x100).name
            except ValueError:
                alert = "unknown"
            sni = f"SNI {self.settings.server_name!r}" if self.settings.server_name else "empty SNI"
            reason = f"TLS alert {code - 0x100} ({alert}) in the handshake, {sni}: {reason}"
            retryable = False
        self.terminated = f"QUIC connection closed: {reason}"
        if during_handshake:
            self._handshake.set_exception(TransportError(self.terminated, retryable=retryable))
        self.on_terminated(self.terminated)

    async def aclose(self, code: int = 0, reason: str = "") -> ConnStats:
        """Close (CONNECTION_CLOSE sent and counted), then the socket; idempotent."""
        if self._stats is not None:
            return self._stats
        if not self.terminated and self._transport is not None:
            self.quic.close(error_code=code, reason_phrase=reason)
            self.transmit()
        if self._timer is not None:
            self._timer.cancel()
        self._stats = self.stats()
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        if not self._handshake.done():
            self._handshake.cancel()
        return self._stats

    def stats(self) -> ConnStats:
        up, down = self.handshake_bytes
        return ConnStats(
            self.index,
            self.bytes_up,
            self.bytes_down,
            self.bytes_up,  # QUIC is in user space: what we sent is what crossed the socket
            self.bytes_down,
            self.datagrams_up,
            self.datagrams_down,
            self.lost_packets,
            "udp",
            self.stack,
            http_version="3",
            tls_version="TLSv1.3",  # QUIC is TLS 1.3 only (RFC 9001 section 4.2)
            alpn=self.alpn,
            handshake_ns=self.handshake_ns,
            tls_handshake_bytes_up=up,
            tls_handshake_bytes_down=down,
            handshake_packets_up=self.handshake_datagrams[0],
            handshake_packets_down=self.handshake_datagrams[1],
            cc=self.settings.cc,
            rcvbuf=self.rcvbuf,
            sndbuf=self.sndbuf,
        )
