"""HTTP/3 for the clients: aioquic's H3Connection over one counted QUIC connection (QuicConn).

Theory of operation. An `H3Session` is HTTP/3's counterpart of `clients/h2.H2Session`: ONE
QUIC connection to the origin at a time (reopened only once it has ended) carrying any
number of concurrent request streams (RFC 9114 4.1: one client-initiated bidirectional
stream per request). There are no reader and writer tasks: `QuicConn` is driven by its
datagram endpoint and timer, and hands each HTTP/3 event to `_H3Conn._on_event`
synchronously, inside the `datagram_received` that brought it, so the connection's clocks
(`last_recv_ns`, `last_recv_perf_ns`) at that moment are the arrival of that datagram: each
DATA payload is queued with them (`Chunk`, as HTTP/2's), and a stream's chunk is stamped by
its own arrival even when its consumer takes it after another stream's later data. Sending
never waits: aioquic buffers a stream's data and paces it by congestion and flow control
itself, and `QuicConn.transmit()` after each change sends what may go now.

Flow control and stream limits are QUIC's (RFC 9000 4): aioquic grants the server credit
as data arrives (not as the consumer takes it, unlike our HTTP/2 layer), and a stream
beyond the server's MAX_STREAMS waits inside aioquic until a MAX_STREAMS frame (quic-go,
Caddy's QUIC, allows 100 concurrent request streams by default). A token stream at ~5 kB/s
never meets either limit.

Failures, translated here into TransportError (retryable unless said otherwise):
- the connection ends (the server's CONNECTION_CLOSE, the idle timeout, a QUIC or HTTP/3
  protocol error aioquic detects and closes with): every open stream fails at once, and
  the next request opens a new connection;
- RESET_STREAM on a request stream (RFC 9114 4.1.1; aioquic's H3Connection reports none,
  so `QuicConn.on_quic_event` watches for it): that stream only;
- a handshake the server refuses with a TLS alert (QuicConn: not retryable), a connection
  that did not negotiate "h3" (not retryable), a bad gzip body (not retryable).
GOAWAY (RFC 9114 5.2) is read and dropped by aioquic (no event): a server that shuts down
closes the connection after it, which fails what is still open. Nothing waits without an
end: a stream's reader is woken by its data, its end, its reset or the connection's end,
and a silent server is ended by QUIC's idle timeout (QuicSettings.idle_timeout_s).

A client cancels a stream with STOP_SENDING and RESET_STREAM, both H3_REQUEST_CANCELLED
(RFC 9114 4.1.1: "the client can cancel requests by resetting and aborting the receiving
side of a stream").

`HTTP3` is the `HTTPLayer` of one client (one stream at a time, as `HTTP11`), over a
session of its own or a shared one (`shared_factory`). A WebSocket (`open_raw`) keeps a TCP
connection of its own through `raw_connector`, TLS with ALPN http/1.1: WebSocket over
HTTP/3 needs RFC 9220's extended CONNECT, which Caddy 2.6 does not offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Iterator

from aioquic.h3.connection import ErrorCode
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import QuicEvent, StreamReset

from clients.h2 import Chunk, SessionLayer, _copy, _Headers, _response
from clients.http import HTTPLayerFactory
from clients.net import Connector, ConnStats, Target, tcp_connector
from clients.quic import QuicConn, QuicSettings
from streams.errors import TransportError

# RFC 9114 4.2: connection-specific header fields MUST NOT appear in HTTP/3
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}
)

_Item = _Headers | Chunk | TransportError | None  # None: the stream's end (FIN)


def _error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:x}"


class H3Stream:
    """One request's stream: its response head, then its DATA, as they arrived."""

    def __init__(self, conn: _H3Conn, stream_id: int) -> None:
        self.conn, self.id = conn, stream_id
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.finished = False  # ended, reset, failed or cancelled: nothing more to read
        self.head_seen = False

    @property
    def conn_index(self) -> int:
        return self.conn.quic.index

    async def response(self) -> _Headers:
        """The response head (1xx skipped); a reset or a lost connection raises."""
        item = await self.queue.get()
        if isinstance(item, _Headers):
            return item
        self.finished = True
        if isinstance(item, TransportError):
            raise item
        raise TransportError(f"HTTP/3 stream {self.id} ended without a response")

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The body's DATA as it arrived; stops at the stream's end."""
        while not self.finished:
            item = await self.queue.get()
            if isinstance(item, Chunk):
                yield item
            elif item is None:
                self.finished = True
            elif isinstance(item, TransportError):
                self.finished = True
                raise item

    def cancel(self) -> None:
        """STOP_SENDING + RESET_STREAM H3_REQUEST_CANCELLED if still open."""
        if not self.finished:
            self.finished = True
            self.conn.cancel(self)


class _H3Conn:
    """One QUIC connection speaking HTTP/3: the open request streams and their queues."""

    def __init__(self, quic: QuicConn, authority: str) -> None:
        self.quic, self.authority = quic, authority
        self.streams: dict[int, H3Stream] = {}
        self.error: TransportError | None = None  # set once: the connection is done
        self.max_concurrent = 0  # most streams open at once
        self.stats: ConnStats | None = None
        quic.on_event = self._on_event
        quic.on_quic_event = self._on_quic_event
        quic.on_terminated = self._on_terminated

    @property
    def usable(self) -> bool:
        return self.error is None and not self.quic.terminated

    def open_stream(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> H3Stream:
        """Send the request (HEADERS, then DATA if there is a body) on a new stream."""
        if not self.usable:
            raise TransportError(self.quic.terminated or "HTTP/3 connection closed")
        hdrs = [
            (b":method", method.encode()),
            (b":scheme", b"https"),  # RFC 9114 3.1: HTTP/3 is https only
            (b":authority", self.authority.encode()),
            (b":path", path.encode()),
            *(
                (name.lower().encode(), value.encode("latin-1"))
                for name, value in headers
                if name.lower() not in _CONNECTION_SPECIFIC
            ),
        ]
        stream_id = self.quic.quic.get_next_available_stream_id()
        try:
            self.quic.h3.send_headers(stream_id, hdrs, end_stream=not body)
            if body:
                self.quic.h3.send_data(stream_id, body, end_stream=True)
        except Exception as exc:  # aioquic's h3 ProtocolError or QUIC's ValueError
            raise TransportError(f"HTTP/3 cannot send the request: {exc}") from exc
        stream = H3Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.max_concurrent = max(self.max_concurrent, len(self.streams))
        self.quic.transmit()
        return stream

    def _on_event(self, event: H3Event) -> None:
        t_ns, t_perf = self.quic.last_recv_ns, self.quic.last_recv_perf_ns
        if isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                return
            response = _response(event.headers)
            if not stream.head_seen:
                if 100 <= response.status < 200:  # interim (RFC 9114 4.1): the final follows
                    return
                stream.head_seen = True
                stream.queue.put_nowait(_Headers(response, t_ns, t_perf))
            # else: trailers, which no pushlab response carries: dropped
            if event.stream_ended:
                self._end(event.stream_id, None)
        elif isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                return  # a stream we cancelled
            if event.data:
                stream.queue.put_nowait(Chunk(event.data, len(event.data), t_ns, t_perf))
            if event.stream_ended:
                self._end(event.stream_id, None)

    def _on_quic_event(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.streams:
            code = _error_name(event.error_code)
            self._end(event.stream_id, TransportError(f"server reset the stream ({code})"))

    def _on_terminated(self, reason: str) -> None:
        self._fail(TransportError(reason))

    def _end(self, stream_id: int, item: TransportError | None) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.queue.put_nowait(item)

    def _fail(self, exc: TransportError) -> None:
        """The connection is done: fail every open stream."""
        if self.error is not None:
            return
        self.error = exc
        for stream in self.streams.values():
            stream.queue.put_nowait(_copy(exc))
        self.streams.clear()

    def cancel(self, stream: H3Stream) -> None:
        self.streams.pop(stream.id, None)
        if not self.usable:
            return
        cancelled = ErrorCode.H3_REQUEST_CANCELLED
        # either half may be over already (aioquic: ValueError for a discarded stream)
        with contextlib.suppress(ValueError):
            self.quic.quic.stop_stream(stream.id, cancelled)
        with contextlib.suppress(ValueError):
            self.quic.quic.reset_stream(stream.id, cancelled)
        self.quic.transmit()

    async def close(self) -> ConnStats:
        """Fail what is open, CONNECTION_CLOSE H3_NO_ERROR if healthy, count, close."""
        if self.stats is None:
            self._fail(TransportError("connection closed by the client"))
            self.stats = await self.quic.aclose(code=ErrorCode.H3_NO_ERROR)
        return self.stats


def with_h3_fields(stats: ConnStats, streams: int) -> ConnStats:
    """`stats` marked as an HTTP/3 connection that carried at most `streams` at once."""
    return dataclasses.replace(stats, http_version="3", streams=max(1, streams))


class H3Session:
    """One HTTP/3 connection to `target` at a time, shared by any number of streams."""

    def __init__(
        self,
        target: Target,
        settings: QuicSettings,
        *,
        indices: Iterator[int] | None = None,
    ) -> None:
        self.target, self.settings = target, settings
        self._indices = indices if indices is not None else itertools.count()
        self._conns: list[_H3Conn] = []
        self._rejected: list[ConnStats] = []  # connections that did not negotiate h3
        self._current: _H3Conn | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.streams_opened = 0

    @property
    def connections(self) -> int:
        return len(self._conns) + len(self._rejected)

    @property
    def max_concurrent(self) -> int:
        return max((c.max_concurrent for c in self._conns), default=0)

    async def _usable(self) -> _H3Conn:
        async with self._lock:
            current = self._current
            if current is None or not current.usable:
                if current is not None:
                    await current.close()  # ended: count it now, its socket closed
                quic = await QuicConn.open(self.target, self.settings, next(self._indices))
                if quic.alpn != "h3":  # RFC 9114 3.1: ALPN "h3" identifies HTTP/3
                    self._rejected.append(await quic.aclose())
                    raise TransportError(
                        f"{self.target.authority} did not negotiate HTTP/3 (ALPN {quic.alpn!r})",
                        retryable=False,
                    )
                current = _H3Conn(quic, self.target.authority)
                self._conns.append(current)
                self._current = current
            return current

    async def open_stream(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> H3Stream:
        """Send a request on the current connection (opening one if none is usable)."""
        if self._closed:
            raise TransportError("HTTP/3 session closed", retryable=False)
        conn = await self._usable()
        stream = conn.open_stream(method, path, headers, body)
        self.streams_opened += 1
        return stream

    async def close_conn(self) -> None:
        """Close every connection (counting it); the next stream opens a new one."""
        async with self._lock:
            self._current = None
        for conn in self._conns:
            await conn.close()

    async def aclose(self) -> list[ConnStats]:
        """Close for good; the counts of every connection the session opened."""
        self._closed = True
        await self.close_conn()
        h3_stats = [with_h3_fields(c.stats, c.max_concurrent) for c in self._conns if c.stats]
        return sorted([*h3_stats, *self._rejected], key=lambda s: s.index)


class HTTP3(SessionLayer):
    """HTTP/3 to one target for one client (`SessionLayer` over an `H3Session` of its own,
    opened lazily with `settings`, or a shared one). `connector` is the client's TCP-side
    connector: HTTP/3 does not use it; a WebSocket's connection goes through `raw_connector`
    (by default that connector), since Caddy 2.6 has no RFC 9220."""

    session: H3Session

    def __init__(
        self,
        target: Target,
        connector: Connector = tcp_connector,
        *,
        accept_gzip: bool = False,
        settings: QuicSettings | None = None,
        session: H3Session | None = None,
        raw_connector: Connector | None = None,
    ) -> None:
        if session is None and settings is None:
            raise ValueError("HTTP3 needs QuicSettings (or a shared H3Session)")
        indices = itertools.count()
        if session is None:
            assert settings is not None
            own, session = True, H3Session(target, settings, indices=indices)
        else:
            own = False
        super().__init__(
            target,
            session,
            own=own,
            accept_gzip=accept_gzip,
            raw_connector=raw_connector or connector,
            indices=indices,
        )


def shared_factory(
    session: H3Session, *, raw_connector: Connector | None = None
) -> HTTPLayerFactory:
    """An `HTTPLayerFactory` whose layers all ride `session`; their WebSocket connections go
    through `raw_connector` (default: the connector the client passes)."""

    def factory(
        target: Target, connector: Connector = tcp_connector, *, accept_gzip: bool = False
    ) -> HTTP3:
        if target != session.target:
            raise ValueError(f"session is for {session.target.authority}, not {target.authority}")
        return HTTP3(
            target,
            connector,
            accept_gzip=accept_gzip,
            session=session,
            raw_connector=raw_connector or connector,
        )

    return factory
