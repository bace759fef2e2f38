"""WebTransport server half: the lab's own HTTP/3 endpoint on UDP, beside the aiohttp app.

Theory of operation
-------------------
aiohttp speaks no HTTP/3, so this module runs a second listener in the same process and
over the same hub: an aioquic `QuicServer` on a UDP socket (`config.host`, the port of
the `wt_port` rule), started and stopped by an app `cleanup_ctx`. Each QUIC connection is a
`_Protocol` (aioquic's `QuicConnectionProtocol`); once ALPN settled on h3 it gets an
`H3Connection(enable_webtransport=True)`, which sends SETTINGS_ENABLE_WEBTRANSPORT and
H3_DATAGRAM (draft-ietf-webtrans-http3-02 section 3.1) and turns QUIC events into HTTP/3
events.

A session is an extended CONNECT (RFC 9220 section 3, `:protocol webtransport`) to `/wt`.
Before it is accepted it passes what the guard checks for every HTTP request
(transports/web/guard.py): the draft (`check_draft`), the Host (`:authority`), the Origin
(Chromium sends one on every session: the page this server served, or `--allowed-origins`)
and, with `--auth`, the identity (`Authorization: Bearer`, `?ticket=`, `?access_token=`
only with `--auth-query`). A refusal is the status and the JSON error body of every other
transport (docs/PROTOCOL.md "Errors"), then FIN; any other request gets 404.

Inside a session the wire format is transports/webtransport.py's: JSON lines on the first
client bidirectional stream (control), tokens on a unidirectional stream the server opens
per start/resume, or as datagrams. Tokens go through `common.deliver`, so batching
(WRITE_CHUNK_BYTES per write), the emitter-side push and the write timeout are the other
transports' own.

Bounds. aioquic's send buffers grow without limit: a stream keeps every byte until it is
acknowledged (`QuicStreamSender._buffer`) and datagrams wait in `_datagrams_pending` until
congestion control lets them out. A write returns at once while the token stream holds less
than WRITE_CHUNK_BYTES unacknowledged, or fewer than MAX_PENDING_DATAGRAMS datagrams wait;
beyond, it waits for the peer's acknowledgements (each received UDP datagram wakes the
waiters), and `write_timeout_s` without progress closes the QUIC connection (the reader
stopped reading: the TCP transports' abort). Per session that is one chunk plus one batch.

What one client may hold (the TCP side's rule, transports/web/limits.py: no client takes
memory or slots without bound, refusals are quiet and cheap):

- QUIC connections: at most `max_connections` (`--max-connections`; its 0, the TCP side's
  descriptor-derived cap, means DEFAULT_MAX_CONNECTIONS here: a QUIC connection costs memory,
  not a descriptor) and `client_share` of that per peer address (an identity is not known
  before the handshake). `_Server` checks both before aioquic makes a connection, and answers
  the Initial with CONNECTION_CLOSE(CONNECTION_REFUSED) and a reason phrase: one packet of
  at most 136 bytes, no state kept. The refusals are /stats' `refused_global`/`refused_client`.
- Sessions: MAX_SESSIONS_PER_CONNECTION (16) on one connection; the next CONNECT gets 429
  with the JSON error body. A browser opens one session per connection unless it pools.
- Client streams: a session's first client bidirectional stream is its control stream; any
  other stream the client opens in it closes the session 1008 (nothing is defined on it),
  and gets STOP_SENDING. QUIC lets a client open MAX_CLIENT_BIDI_STREAMS and
  MAX_CLIENT_UNI_STREAMS at once (aioquic: 128 each).
- Buffers: each client stream's receive window is credit beyond what was delivered
  (`_BoundedQuicConnection`, RECEIVE_WINDOW 128 KiB: aioquic's own doubling let a stream with
  a gap grow its reorder buffer without limit), an HTTP/3 frame aioquic must hold whole is at
  most MAX_H3_BUFFER (else the connection closes with H3_EXCESSIVE_LOAD), the CONNECT
  stream's capsule parser holds at most one capsule of MAX_CAPSULE_BYTES (64 KiB), the
  control stream's line buffer one line of MAX_LINE_BYTES (64 KiB), and a session's inbox at
  most MAX_INBOX_MESSAGES lines (more waiting: 1008) plus its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import math
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import (
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    TRANSPORT_CLOSE_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
)
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.events import (
    ConnectionTerminated,
    ProtocolNegotiated,
    QuicEvent,
    StreamDataReceived,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from streams.credentials import Authority, Claim
from streams.errors import (
    AuthenticationError,
    ParamError,
    PermissionDenied,
    ProtocolError,
    PushlabError,
    QuotaExceeded,
)
from streams.hub import Hub, Stream, Token
from transports import webtransport as codec
from transports.errors import error_body, exception_body
from transports.web.common import (
    CONFIG,
    COUNTERS,
    HUB,
    WRITE_CHUNK_BYTES,
    Counters,
    WriteTimeout,
    deliver,
    json_response,
    written,
)
from transports.web.config import ServerConfig
from transports.web.guard import ALLOWED, AUTHORITY, Allowed, _hostname, same_origin

KEY = "webtransport"
log = logging.getLogger("pushlab.server")

# A datagram must fit in one QUIC packet (RFC 9221 section 5: DATAGRAM frames are never
# split) and aioquic stalls its whole send queue on one that never fits. 1200 bytes is
# the smallest datagram size QUIC allows (RFC 9000 section 14); short header, 20-byte
# connection id, packet number, AEAD tag, frame header and the quarter stream id leave
# at least 1100: a token line longer than this goes on the token stream instead.
MAX_DATAGRAM_PAYLOAD = 1100
MAX_PENDING_DATAGRAMS = 64  # about WRITE_CHUNK_BYTES of tokens waiting for the congestion window
H3_NO_ERROR = 0x100
H3_INTERNAL_ERROR = 0x102
H3_EXCESSIVE_LOAD = 0x107  # RFC 9114 section 8.1

# What one client may hold (the module docstring, "Bounds"). QUIC connections cost memory,
# not descriptors, so `--max-connections 0` (the TCP side's descriptor-derived cap) gives
# this fixed default here instead.
DEFAULT_MAX_CONNECTIONS = 4096
# Sessions one QUIC connection may carry. Chromium pools WebTransport sessions to an origin
# on one connection only when the page asks (`allowPooling`) and the server allows it (a
# later draft's SETTINGS_WEBTRANSPORT_MAX_SESSIONS; draft-02 has none), so a browser opens
# one session per connection and the lab's clients do too; 16 leaves room for a pooling
# client while the connection's share of memory stays a small multiple of one session's.
MAX_SESSIONS_PER_CONNECTION = 16
MAX_INBOX_MESSAGES = 16  # control lines read but not yet acted on, per session
# Each stream the client opens may hold at most this much received-but-unread data: the
# longest control line or capsule (64 KiB) and its framing fit. aioquic doubles a stream's
# window whenever the highest offset seen passes half of it, consumed or not, so a client
# that leaves a gap at the front of a stream grows the reorder buffer without limit
# (`_BoundedQuicConnection`). The streams a client may have open at once: every session's
# CONNECT and control stream, a few spare; HTTP/3's three unidirectional streams and spare.
RECEIVE_WINDOW = 128 * 1024
MAX_CLIENT_BIDI_STREAMS = 2 * MAX_SESSIONS_PER_CONNECTION + 4
MAX_CLIENT_UNI_STREAMS = 16
# aioquic's HTTP/3 layer buffers a frame it must parse whole (HEADERS, SETTINGS, a stream
# blocked on QPACK) with no limit of its own, as the QUIC layer delivers it; our requests'
# header blocks are well under 1 KiB, so a frame this large is a client's attack
MAX_H3_BUFFER = RECEIVE_WINDOW


@dataclasses.dataclass
class Endpoint:
    """The running QUIC listener and what /webtransport and /stats say about it."""

    config: ServerConfig
    hub: Hub
    all_counters: Counters
    allowed: Allowed
    authority: Authority | None
    port: int
    sha256_hex: str
    sha256_b64: str
    not_after: datetime.datetime
    server: QuicServer | None = None
    rcvbuf: int = -1
    sndbuf: int = -1
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_address: int = DEFAULT_MAX_CONNECTIONS // 2
    connections: int = 0  # QUIC connections open now
    connections_total: int = 0
    by_address: dict[str, int] = dataclasses.field(default_factory=dict)  # deleted at zero
    refused_global: int = 0  # new connections refused: the endpoint was full
    refused_client: int = 0  # ... the peer's address held its share
    sessions_refused: int = 0  # sessions beyond MAX_SESSIONS_PER_CONNECTION (429)
    sessions: int = 0  # sessions open now (counters["open"] counts them too)
    sessions_total: int = 0
    # ports of this server's HTTP listener a page can have come from (its Origin), learnt
    # from each GET /webtransport (with --port 0 the port is unknown until the site listens)
    http_ports: set[int] = dataclasses.field(default_factory=set)
    protocols: set[_Protocol] = dataclasses.field(default_factory=set)

    @property
    def counters(self) -> dict[str, int]:
        """This transport's counters, made on first use (as every handler's: /stats lists
        a transport once something used it)."""
        return self.all_counters.by_transport[KEY]

    def statistics(self) -> dict[str, object]:
        return {
            "port": self.port,
            "cc": self.config.quic_cc,
            "connections": self.connections,
            "connections_total": self.connections_total,
            "max_connections": self.max_connections,
            "max_per_address": self.max_per_address,
            "addresses": len(self.by_address),
            "refused_global": self.refused_global,
            "refused_client": self.refused_client,
            "sessions_refused": self.sessions_refused,
            "sessions": self.sessions,
            "sessions_total": self.sessions_total,
            "rcvbuf": self.rcvbuf,
            "sndbuf": self.sndbuf,
        }


ENDPOINT = web.AppKey("webtransport_endpoint", Endpoint)


# --- one QUIC connection -----------------------------------------------------------------


class _Protocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, *args: Any, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        self.endpoint = endpoint
        self.h3: H3Connection | None = None
        self.sessions: dict[int, Session] = {}  # by the CONNECT stream's id
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.peer = ""
        self.gone = False
        endpoint.connections += 1
        endpoint.connections_total += 1
        endpoint.protocols.add(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.peer:  # the first datagram: the one _Server admitted
            self.peer = str(addr[0])
            by_address = self.endpoint.by_address
            by_address[self.peer] = by_address.get(self.peer, 0) + 1
        super().datagram_received(data, addr)
        self.wake_writers()  # an ACK may have freed send buffer or congestion window

    def wake_writers(self, error: BaseException | None = None) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self._quic, enable_webtransport=True)
        elif isinstance(event, ConnectionTerminated):
            self._terminated(event.reason_phrase or f"error 0x{event.error_code:x}")
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                try:
                    self._h3_event(h3_event)
                except Exception as exc:  # a fault of ours: that session closes 1011, not the loop
                    log.error("webtransport event handling failed", exc_info=exc)
                    session = self.sessions.get(getattr(h3_event, "session_id", -1))
                    if session is not None:
                        session.post(PushlabError("internal error"))
            if isinstance(event, StreamDataReceived):
                stream = self.h3._stream.get(event.stream_id)
                if stream is not None and len(stream.buffer) > MAX_H3_BUFFER:
                    why = f"an HTTP/3 frame of over {MAX_H3_BUFFER} bytes"
                    self.close(error_code=H3_EXCESSIVE_LOAD, reason_phrase=why)

    def _terminated(self, reason: str) -> None:
        if self.gone:
            return
        self.gone = True
        self.endpoint.connections -= 1
        by_address = self.endpoint.by_address
        if self.peer in by_address:
            by_address[self.peer] -= 1
            if not by_address[self.peer]:
                del by_address[self.peer]
        self.endpoint.protocols.discard(self)
        self.wake_writers(ConnectionError(f"QUIC connection closed: {reason}"))
        for session in list(self.sessions.values()):
            session.peer_gone()

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            if event.stream_id not in self.sessions:  # trailers of a session: ignored
                self._request(event)
        elif isinstance(event, DataReceived):
            session = self.sessions.get(event.stream_id)
            if session is not None:
                session.connect_stream_data(event.data, event.stream_ended)
        elif isinstance(event, WebTransportStreamDataReceived):
            session = self.sessions.get(event.session_id)
            if session is not None:
                session.stream_data(event.stream_id, event.data, event.stream_ended)
        # DatagramReceived: the client has nothing to say in datagrams; dropped

    # --- the session request -------------------------------------------------------------

    def _request(self, event: HeadersReceived) -> None:
        assert self.h3 is not None
        self.endpoint.counters["requests"] += 1
        headers: dict[str, str] = {}
        for name, value in event.headers:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        target = headers.get(":path", "")
        path, _, query = target.partition("?")
        method, protocol = headers.get(":method"), headers.get(":protocol")
        is_session = method == "CONNECT" and protocol == "webtransport"
        if not is_session or path != codec.PATH:
            what = f"{headers.get(':method', '?')} {path[:100]}"
            body = error_body(f"not found: {what} (WebTransport sessions: CONNECT {codec.PATH})",
                              "not_found_error")  # fmt: skip
            self._respond(event.stream_id, 404, body)
            return
        try:
            codec.check_draft(headers)
            claim = self._admit(headers, query)
        except PushlabError as exc:
            self.endpoint.counters["errors"] += 1
            self._respond(event.stream_id, exc.status, exception_body(exc),
                          www_auth=exc.status == 401)  # fmt: skip
            return
        if len(self.sessions) >= MAX_SESSIONS_PER_CONNECTION:
            self.endpoint.sessions_refused += 1
            self.endpoint.counters["errors"] += 1
            full = QuotaExceeded(
                f"this connection holds its maximum of {MAX_SESSIONS_PER_CONNECTION} sessions; "
                "open another connection"
            )
            self._respond(event.stream_id, full.status, exception_body(full))
            return
        identity = claim.identity if claim is not None else ""
        self.h3.send_headers(
            event.stream_id,
            [(b":status", b"200"), (codec.DRAFT_RESPONSE_HEADER.encode(), codec.DRAFT.encode())],
        )
        session = Session(self, event.stream_id, identity)
        self.sessions[event.stream_id] = session
        self.transmit()

    def _admit(self, headers: dict[str, str], query: str) -> Claim | None:
        """The guard's checks, on the CONNECT's pseudo-headers (see the module docstring)."""
        ep = self.endpoint
        authority = headers.get(":authority", "")
        if not ep.allowed.host(authority):
            raise PermissionDenied(f"host {authority[:100]!r} is not served here", param="Host")
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin.lower(), authority):
            raise PermissionDenied(
                f"sessions from origin {origin[:100]!r} are not allowed", param="Origin"
            )
        if not ep.config.auth or ep.authority is None:
            return None
        values = parse_qsl(query, keep_blank_values=True)
        header = headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("use 'Authorization: Bearer <credential>'")
            return ep.authority.verify(token.strip(), ("key", "session"))
        for name in ("ticket", "access_token"):
            if sum(1 for k, _ in values if k == name) > 1:
                raise ParamError(f"parameter '{name}' given more than once", param=name)
        given = dict(values)
        if "ticket" in given:
            return ep.authority.redeem(given["ticket"])
        if ep.config.auth_query and "access_token" in given:
            return ep.authority.verify(given["access_token"], ("key",))
        raise AuthenticationError("this server needs a credential (docs/SECURITY.md)")

    def _origin_ok(self, origin: str, authority: str) -> bool:
        ep = self.endpoint
        if origin in ep.allowed.origins or same_origin(origin, authority):
            return True
        # the page this server's HTTP listener served: same host, one of its ports
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https"):
            return False
        name, _, port = rest.rpartition(":")
        return (
            port.isdigit()
            and int(port) in ep.http_ports
            and _hostname(name + ":0") == _hostname(authority)
        )

    def _respond(self, stream_id: int, status: int, body: object, www_auth: bool = False) -> None:
        assert self.h3 is not None
        headers = [(b":status", str(status).encode()), (b"content-type", b"application/json")]
        if www_auth:
            headers.append((b"www-authenticate", b'Bearer realm="pushlab"'))
        data = json_response(body).body
        assert isinstance(data, bytes)
        self.h3.send_headers(stream_id, headers)
        self.h3.send_data(stream_id, data, end_stream=True)
        self.transmit()


# --- one session ---------------------------------------------------------------------------


class Session:
    """One accepted WebTransport session: its control stream read into an inbox, a task
    that acts on it (start, resume, cancel), and the sender of the running stream."""

    def __init__(self, proto: _Protocol, session_id: int, identity: str) -> None:
        self.proto, self.id, self.identity = proto, session_id, identity
        assert proto.h3 is not None
        self.h3: H3Connection = proto.h3
        self.endpoint = proto.endpoint
        self.counters = self.endpoint.counters
        self.client_key = f"id:{identity}" if identity else f"addr:{proto.peer or '?'}"
        self.control: int | None = None
        self.lines = codec.LineBuffer()
        self.capsules = codec.CapsuleParser()
        # at most MAX_INBOX_MESSAGES lines, then one error or None (`_post`)
        self.inbox: asyncio.Queue[bytes | PushlabError | None] = asyncio.Queue()
        self.inbox_ended = False  # an error or None is queued: nothing after it is read
        self.closed = False  # a close capsule was sent, or the peer ended the session
        self.fin_sent = False  # our half of the CONNECT stream has ended
        self.stream: Stream | None = None
        self.sender: asyncio.Task[None] | None = None
        self.counters["open"] += 1
        self.endpoint.sessions += 1
        self.endpoint.sessions_total += 1
        self.task = asyncio.get_running_loop().create_task(self.run())

    # --- input (from the protocol's event handler, synchronous) ------------------------

    def post(self, item: bytes | PushlabError | None) -> None:
        """Queue a control line, or the error or end that stops the session's task; a line
        beyond MAX_INBOX_MESSAGES waiting is a 1008 (the client sends faster than its
        commands are served), and nothing is queued after an error or the end."""
        if self.inbox_ended:
            return
        if isinstance(item, bytes) and self.inbox.qsize() >= MAX_INBOX_MESSAGES:
            item = ProtocolError(f"over {MAX_INBOX_MESSAGES} control messages waiting to be served")
        self.inbox_ended = not isinstance(item, bytes)
        self.inbox.put_nowait(item)

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        if self.control is None and stream_id % 4 == 0:  # client-initiated bidirectional
            self.control = stream_id
        if stream_id != self.control:
            # Nothing is defined on any other client stream: a policy violation (1008), and
            # STOP_SENDING so the peer's stream stops holding one of its connection's slots.
            with contextlib.suppress(Exception):  # already stopped or finished
                self.proto._quic.stop_stream(stream_id, H3_NO_ERROR)
            self.post(ProtocolError(
                "a client stream besides the control stream (the session's first "
                "bidirectional stream): nothing is defined on it"
            ))  # fmt: skip
            return
        if self.inbox_ended:
            return
        try:
            for line in self.lines.feed(data):
                self.post(line)
        except ProtocolError as exc:
            self.post(exc)

    def connect_stream_data(self, data: bytes, ended: bool) -> None:
        try:
            for capsule in self.capsules.feed(data):
                if isinstance(capsule, codec.SessionClosed):
                    self.peer_gone()
                    return
            if ended:
                self.capsules.end()
                self.peer_gone()  # FIN on the CONNECT stream ends the session (draft-02 5)
        except ProtocolError as exc:
            self.post(exc)

    def peer_gone(self) -> None:
        """The client closed the session (capsule or FIN) or the connection is lost."""
        self.closed = True
        self.post(None)

    # --- the session's task ------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except ConnectionError:
            self.counters["errors"] += 1
        except Exception as exc:  # after the 200 no HTTP error can be sent: close 1011
            log.error("webtransport session failed", exc_info=exc)
            self.counters["errors"] += 1
            self.fail(PushlabError(f"internal error: {type(exc).__name__}"),
                      codec.CLOSE_INTERNAL_ERROR)  # fmt: skip
        finally:
            await self._stop_sender()
            if self.stream is not None:
                await self._reader_gone(self.stream)
            self._finish()
            self.counters["open"] -= 1
            self.endpoint.sessions -= 1
            self.proto.sessions.pop(self.id, None)

    async def _serve(self) -> None:
        hub = self.endpoint.hub
        while True:
            item = await self.inbox.get()
            if item is None:
                return
            if isinstance(item, PushlabError):
                self.counters["errors"] += 1
                internal = type(item) is PushlabError
                code = codec.CLOSE_INTERNAL_ERROR if internal else codec.CLOSE_POLICY_VIOLATION
                self.fail(item, code)
                return
            try:
                command = codec.parse_client_message(item)
                if isinstance(command, codec.Cancel):
                    if self.stream is None:
                        raise ParamError("nothing to cancel: no stream started in this session")
                    await hub.cancel(self.stream.id, owner=self.identity)
                    continue
                if self.sender is not None and not self.sender.done():
                    raise ParamError("a stream is already running in this session", param="type")
                stream, after = await self._open(command)
            except PushlabError as exc:
                self.counters["errors"] += 1
                self.fail(exc, codec.CLOSE_POLICY_VIOLATION)
                return
            self.stream = stream
            self.sender = asyncio.create_task(self._pump(stream, after, command.delivery))

    async def _open(self, command: codec.Start | codec.Resume) -> tuple[Stream, int]:
        hub = self.endpoint.hub
        if isinstance(command, codec.Start):
            stream = await hub.create(command.params, owner=self.identity, client=self.client_key)
            return stream, 0
        stream = await hub.readable(command.stream, command.after, owner=self.identity)
        if command.after > stream.params.tokens:
            raise ParamError(f"'after' {command.after} is beyond the stream's end", param="after")
        return stream, command.after

    async def _stop_sender(self) -> None:
        if self.sender is None:
            return
        self.sender.cancel()
        try:
            await self.sender
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception as exc:
            log.error("webtransport sender failed", exc_info=exc)

    async def _reader_gone(self, stream: Stream) -> None:
        """As common.reader_gone: with cancel_on_disconnect the stream stops with its
        reader; otherwise it keeps generating for a resume until the idle timeout."""
        if self.endpoint.config.cancel_on_disconnect and not stream.done:
            await self.endpoint.hub.cancel(stream.id, reason="disconnect")

    def fail(self, exc: PushlabError, code: int) -> None:
        """The error line on the control stream, then the close capsule and FIN; nothing
        when the client already ended the session."""
        if self.closed or self.proto.gone:
            return
        self.closed = self.fin_sent = True
        quic = self.proto._quic
        with contextlib.suppress(Exception):  # a stream the peer already reset
            if self.control is not None:
                quic.send_stream_data(self.control, codec.encode_error_line(exception_body(exc)),
                                      end_stream=True)  # fmt: skip
            self.h3.send_data(self.id, codec.encode_close(code, exc.message), end_stream=True)
        self.proto.transmit()

    def _finish(self) -> None:
        """Our half of the CONNECT stream ends with the session (a close capsule already
        ended it after a failure)."""
        if not self.fin_sent and not self.proto.gone:
            self.fin_sent = True
            with contextlib.suppress(Exception):  # already ended
                self.h3.send_data(self.id, b"", end_stream=True)
                self.proto.transmit()

    # --- sending -------------------------------------------------------------------------

    async def _pump(self, stream: Stream, after: int, delivery: codec.Delivery) -> None:
        timeout_s = self.endpoint.config.write_timeout_s
        try:
            await self._send_all(stream, after, delivery, timeout_s)
        except WriteTimeout:
            self.counters["write_timeouts"] += 1
            # the reader stopped reading: drop its connection, as abort_stalled drops a socket
            self.proto.close(error_code=H3_NO_ERROR, reason_phrase="write timeout")

    async def _send_all(self, stream: Stream, after: int, delivery: codec.Delivery,
                        timeout_s: float) -> None:  # fmt: skip
        quic, h3, proto, counters = self.proto._quic, self.h3, self.proto, self.counters
        uni = h3.create_webtransport_stream(self.id, is_unidirectional=True)
        sender = quic._streams[uni].sender
        datagrams = delivery == "datagram"
        quic.send_stream_data(uni, codec.encode_started(stream.id, after, delivery))
        proto.transmit()

        async def drained(datagrams_queued: int = MAX_PENDING_DATAGRAMS) -> None:
            while len(sender._buffer) > WRITE_CHUNK_BYTES or (
                len(quic._datagrams_pending) > datagrams_queued
            ):
                if proto.gone:
                    raise ConnectionError("QUIC connection closed")
                waiter = asyncio.get_running_loop().create_future()
                proto.drain_waiters.append(waiter)
                await waiter

        async def nothing() -> None:
            return None

        def write(batch: list[Token]) -> Coroutine[Any, Any, None]:
            # often run by the hub's emitting callback itself (common.deliver): plain and quick
            if proto.gone:
                raise ConnectionError("QUIC connection closed")
            counters["tokens_sent"] += len(batch)
            lines = []
            for token in batch:
                if datagrams:
                    data = codec.encode_token_datagram(token.payload)
                    if len(data) <= MAX_DATAGRAM_PAYLOAD:
                        h3.send_datagram(self.id, data)
                        counters["bytes_sent"] += len(data)
                        continue
                lines.append(codec.encode_token_line(token.payload))
            if lines:
                data = b"".join(lines)
                counters["bytes_sent"] += len(data)
                quic.send_stream_data(uni, data)
            proto.transmit()
            if len(sender._buffer) > WRITE_CHUNK_BYTES or (
                len(quic._datagrams_pending) > MAX_PENDING_DATAGRAMS
            ):
                return drained()
            return nothing()

        await deliver(stream, after, write, write_timeout_s=timeout_s)
        # `done` after every datagram has left: aioquic fills a packet with queued datagrams
        # first but puts a small stream frame in the room a large datagram did not fit, so
        # `done` overtook up to MAX_PENDING_DATAGRAMS tokens, which the client (gone at
        # `done`) counted lost: 33 and 52 of 2000 at 2000 tokens/s on loopback (2026-11-30)
        await written(drained(0 if datagrams else MAX_PENDING_DATAGRAMS), timeout_s)
        if proto.gone:
            raise ConnectionError("QUIC connection closed")
        quic.send_stream_data(uni, codec.encode_done(stream.id, stream.last_seq, stream.reason),
                              end_stream=True)  # fmt: skip
        proto.transmit()


# --- the listener: admission of new connections ------------------------------------------------


def encode_refusal(version: int, client_dcid: bytes, client_scid: bytes, reason: str) -> bytes:
    """A server Initial packet that closes the connection at once: CONNECTION_CLOSE (type
    0x1c) with CONNECTION_REFUSED, "the server refused to accept a new connection" (RFC 9000
    section 20.1). Its keys are the Initial keys of the client's Destination Connection ID,
    which any observer can derive (RFC 9001 section 5.2): the refusal is as authentic as the
    client's Initial, no more. 48 bytes with 8-byte connection ids and no reason, at most 136
    (20-byte ids, the reason cut to 64; ours are under 70) answer at least 1200 (RFC 9000
    section 14.1): well under the 3x an unvalidated address may be sent (section 8.1). As
    aioquic's own INVALID_TOKEN close (`aioquic.asyncio.server._encode_invalid_token_close`)."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=client_dcid, is_client=False, version=version)
    builder = QuicPacketBuilder(host_cid=client_dcid, is_client=False, version=version,
                                max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
                                peer_cid=client_scid)  # fmt: skip
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    phrase = reason.encode()[:64]
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE,
                              capacity=TRANSPORT_CLOSE_FRAME_CAPACITY + len(phrase))  # fmt: skip
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)  # frame type 0: no frame caused it
    buf.push_uint_var(len(phrase))
    buf.push_bytes(phrase)
    datagrams, _ = builder.flush()
    return datagrams[0]


class _Server(QuicServer):
    """aioquic's QuicServer, with the endpoint's caps checked before a connection is made.

    A connection is made in `QuicServer.datagram_received` for an Initial of at least 1200
    bytes whose Destination Connection ID names no connection yet; that is the one datagram
    refused here (every other goes to aioquic untouched: the hot path gains a dict lookup).
    The refusal keeps no state: a client that retransmits its Initial is refused again."""

    def __init__(self, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        assert isinstance(data, bytes)
        ep = self.endpoint
        if len(data) >= SMALLEST_MAX_DATAGRAM_SIZE and (
            ep.connections >= ep.max_connections
            or ep.by_address.get(addr[0], 0) >= ep.max_per_address
        ):
            try:
                cid_length = self._configuration.connection_id_length
                header = pull_quic_header(Buffer(data=data), host_cid_length=cid_length)
            except ValueError:
                return
            if (
                header.packet_type == QuicPacketType.INITIAL
                and header.destination_cid not in self._protocols
                and header.version in self._configuration.supported_versions
            ):
                assert header.version is not None and self._transport is not None
                if ep.connections >= ep.max_connections:
                    ep.refused_global += 1
                    reason = f"the server holds its maximum of {ep.max_connections} connections"
                else:
                    ep.refused_client += 1
                    reason = f"this address holds its share of {ep.max_per_address} connections"
                self._transport.sendto(
                    encode_refusal(header.version, header.destination_cid, header.source_cid,
                                   reason), addr)  # fmt: skip
                return
        super().datagram_received(data, addr)


class _BoundedQuicConnection(QuicConnection):
    """aioquic's server connection with bounded receive buffers (see RECEIVE_WINDOW).

    aioquic raises a stream's flow-control window by doubling it whenever the highest offset
    received passes half of it (`QuicConnection._write_stream_limits`), whether or not the
    bytes before it arrived: a client that never sends a stream's first byte can make the
    receiver's reorder buffer (`QuicStreamReceiver._buffer`) grow by doubling. Here the
    window is credit beyond what was delivered in order (`receiver.starting_offset()`, bytes
    already handed to the application as events), so a stream holds at most RECEIVE_WINDOW
    bytes, and the client may open MAX_CLIENT_BIDI_STREAMS and MAX_CLIENT_UNI_STREAMS at
    once instead of aioquic's 128 each (RFC 9000 section 4.6: a closed stream gives its slot
    back, as aioquic does)."""

    @classmethod
    def bound(cls, quic: QuicConnection) -> QuicConnection:
        """`quic`, made one of these. QuicServer makes its QuicConnection itself, with no
        hook for the class; this runs in `create_protocol`, before the connection read its
        first datagram, so the transport parameters it sends already carry the limits."""
        quic.__class__ = cls
        quic._local_max_streams_bidi.value = MAX_CLIENT_BIDI_STREAMS
        quic._local_max_streams_uni.value = MAX_CLIENT_UNI_STREAMS
        return quic

    def _write_stream_limits(self, builder: Any, space: Any, stream: QuicStream) -> None:
        """aioquic's method (MAX_STREAM_DATA when the window moves; qlog left out: the
        server keeps none) with credit instead of doubling; raised once half the window was
        consumed, so one frame per half window, as aioquic batches."""
        if not stream.max_stream_data_local:  # a stream of ours that receives nothing
            return
        credit = stream.receiver.starting_offset() + RECEIVE_WINDOW
        if credit - stream.max_stream_data_local >= RECEIVE_WINDOW // 2:
            stream.max_stream_data_local = credit
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(QuicFrameType.MAX_STREAM_DATA,
                                      capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                                      handler=self._on_max_stream_data_delivery,
                                      handler_args=(stream,))  # fmt: skip
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


# --- the listener and the discovery route ---------------------------------------------------


def wt_port_for(config: ServerConfig) -> int:
    """The UDP port to bind: `wt_port`, else the HTTP port's number when fixed, else 0."""
    return config.wt_port if config.wt_port > 0 else config.port


async def _endpoint_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.wt_port < 0:
        yield
        return
    from netem.pki import make_webtransport_certificate

    cert = make_webtransport_certificate(valid_days=config.wt_cert_days)
    quic_config = QuicConfiguration(
        is_client=False,
        alpn_protocols=list(H3_ALPN),
        max_datagram_frame_size=65536,
        congestion_control_algorithm=config.quic_cc,
        max_stream_data=RECEIVE_WINDOW,  # each stream's first window; see _BoundedQuicConnection
    )
    quic_config.certificate = x509.load_pem_x509_certificate(cert.cert_pem)
    quic_config.private_key = load_pem_private_key(cert.key_pem, password=None)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if config.reuse_port:  # --workers: the kernel spreads flows (4-tuples) over them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, wt_port_for(config)))
    except OSError as exc:  # the CLI prints it in one line: say which port, and the way out
        sock.close()
        raise OSError(
            exc.errno,
            f"WebTransport's UDP port {wt_port_for(config)}: {exc.strerror or exc} "
            "(choose another with --wt-port, or -1 for none)",
        ) from None
    endpoint = Endpoint(
        config, app[HUB], app[COUNTERS], app[ALLOWED],
        app[AUTHORITY] if config.auth else None, sock.getsockname()[1],
        cert.sha256_hex, cert.sha256_b64, cert.not_after,
        rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sndbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )  # fmt: skip
    endpoint.max_connections = config.max_connections or DEFAULT_MAX_CONNECTIONS
    endpoint.max_per_address = math.ceil(endpoint.max_connections * config.client_share)
    if config.port:
        endpoint.http_ports.add(config.port)

    def create_protocol(quic: QuicConnection, **kwargs: Any) -> _Protocol:
        return _Protocol(_BoundedQuicConnection.bound(quic), endpoint=endpoint, **kwargs)

    loop = asyncio.get_running_loop()
    _, server = await loop.create_datagram_endpoint(
        lambda: _Server(endpoint, configuration=quic_config, create_protocol=create_protocol),
        sock=sock,
    )
    endpoint.server = server
    app[ENDPOINT] = endpoint
    try:
        yield
    finally:
        sessions = [s for p in list(endpoint.protocols) for s in p.sessions.values()]
        for session in sessions:
            session.task.cancel()
        for session in sessions:
            with contextlib.suppress(asyncio.CancelledError):
                await session.task
        server.close()  # CONNECTION_CLOSE to every connection, then the socket


async def discovery(request: web.Request) -> web.Response:
    """GET /webtransport: where the endpoint is and the hash a page pins its certificate by
    (`new WebTransport(url, {serverCertificateHashes: [...]})`)."""
    endpoint = request.app.get(ENDPOINT)
    if endpoint is None:
        raise web.HTTPNotFound(reason="this server runs without WebTransport (--wt-port -1)")
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if sockname:
        endpoint.http_ports.add(int(sockname[1]))
    # the port a front (nginx, Caddy) served the page on: the Host it passes on names it (the
    # guard has accepted that Host); the page's origin, and so its session's Origin, carry it
    _, colon, host_port = request.host.rpartition(":")
    if colon and host_port.isdigit() and 0 < int(host_port) < 65536:
        endpoint.http_ports.add(int(host_port))
    host = request.app[CONFIG].host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{host}]" if ":" in host else host
    return json_response(
        {
            "url": f"https://{shown}:{endpoint.port}{codec.PATH}",
            "port": endpoint.port,
            "draft": codec.DRAFT,
            "certificate_hashes": [{"algorithm": "sha-256", "value": endpoint.sha256_b64}],
            "sha256": endpoint.sha256_hex,
            "not_after": endpoint.not_after.isoformat(),
        }
    )


def statistics(app: web.Application) -> dict[str, object] | None:
    """The endpoint's numbers for /stats (None when it does not run)."""
    endpoint = app.get(ENDPOINT)
    return endpoint.statistics() if endpoint is not None else None


def add_routes(app: web.Application) -> None:
    app.router.add_get("/webtransport", discovery)
    app.cleanup_ctx.append(_endpoint_context)


__all__ = ["ENDPOINT", "Endpoint", "Session", "add_routes", "statistics"]
