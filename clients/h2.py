"""HTTP/2 for the clients: the h2 sans-I/O library over one counted `Connection`.

Theory of operation. An `H2Session` is what a browser keeps per origin: ONE HTTP/2
connection (reopened only when the server sends GOAWAY or the connection breaks) carrying
any number of concurrent streams. Per connection (`_H2Conn`) two tasks do all the I/O:
the reader reads the connection, feeds h2 and dispatches h2's events to per-stream queues;
the writer sends whatever h2 has queued (`data_to_send`) whenever anything changed h2's
state (`_kick`), so the reader never waits on a write (a peer that stops reading cannot
stall our reads). Each queued DATA item carries the clocks of the read that brought it, so
a stream's chunk is stamped by its own arrival even when the consumer takes it after
another stream's later data. A reader or writer that stops, for whatever reason, fails
every open stream with a TransportError and wakes every waiter (`_fail`): nothing hangs.

Flow control (RFC 9113 5.2): the data a stream's consumer takes is acknowledged then
(`acknowledge_received_data`), so a slow consumer stalls only its own stream. The windows
are Chrome's: 6 MiB per stream and 15 MiB for the connection, against a token stream of
~5 kB/s (50 tokens/s of ~100-byte SSE events): a consumer would have to stall for 20 minutes
before its window stopped the server, and 100 streams sharing the connection window for 30 s
(100 x 5 kB/s against 15 MiB), so the window never limits a token stream. (The test
`tests/test_h2.py` shrinks them to the RFC's 64 KiB to see WINDOW_UPDATEs flow.)

Streams beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS wait for a slot (the wait is
kept per stream and summed per session); until the server's first SETTINGS frame has
arrived only one stream is opened (RFC 9113 6.5.2: the limit is unknown until then), which
costs a second stream at most the time to the server's preface.

GOAWAY (RFC 9113 6.8): streams above its last_stream_id were not processed and fail with a
retryable TransportError; the connection drains (the streams up to it may finish; h2 closes
its own state machine on any GOAWAY, so `_goaway` reopens it to receive them) and the next
stream opens a new connection. RST_STREAM fails its stream only; a protocol error, EOF or a
broken connection fails every stream on the connection. One liveness limit is h2's, not
ours: it checks a frame's length against SETTINGS_MAX_FRAME_SIZE only once the whole frame
has arrived, so a peer announcing a huge frame is waited for until it closes.

`HTTP2` is the `HTTPLayer` of one client (one stream at a time, as `HTTP11`), over a session
of its own or a shared one (`shared_factory`). h2's errors are translated here into
TransportError: retryable for every failure of a stream or a connection; not for a TLS
connection that did not negotiate "h2", nor for a bad gzip body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from clients.http import HTTPLayerFactory, Response
from clients.net import Connection, Connector, ConnStats, Target, tcp_connector
from streams.errors import TransportError

STREAM_WINDOW = 6 * 2**20  # Chrome's SETTINGS_INITIAL_WINDOW_SIZE
CONNECTION_WINDOW = 15 * 2**20  # Chrome's connection window (WINDOW_UPDATE on stream 0)
_DEFAULT_WINDOW = 65535  # RFC 9113 6.9.2: every window starts here
PRE_SETTINGS_STREAMS = 1  # streams opened before the server's SETTINGS arrive

# RFC 9113 8.2.2: connection-specific header fields MUST NOT appear in HTTP/2
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}
)


@dataclasses.dataclass(frozen=True, slots=True)
class _Headers:
    response: Response
    t_ns: int
    t_perf_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """One DATA frame's payload, stamped by the read that brought it."""

    data: bytes
    flow_len: int  # flow-controlled length (padding included), what we acknowledge
    t_ns: int
    t_perf_ns: int


_Item = _Headers | Chunk | TransportError | None  # None: END_STREAM


class _Unavailable(Exception):
    """The connection went away (GOAWAY, broken) before this stream was sent: use another."""


def _copy(exc: TransportError) -> TransportError:
    """One error instance per waiter, each chained to the cause (tracebacks stay apart)."""
    err = TransportError(exc.message, retryable=exc.retryable)
    err.__cause__ = exc
    return err


def _code(code: object) -> str:
    return code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)


class H2Stream:
    """One request's stream: its response head, then its DATA, as the reader queued them."""

    def __init__(self, conn: _H2Conn, stream_id: int, slot_wait_ns: int) -> None:
        self.conn, self.id = conn, stream_id
        self.slot_wait_ns = slot_wait_ns  # how long it waited to be opened
        self.waited_at_limit = False  # ... for SETTINGS_MAX_CONCURRENT_STREAMS, not SETTINGS
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.finished = False  # ended, reset, failed or cancelled: nothing more to read

    @property
    def conn_index(self) -> int:
        return self.conn.conn.index

    async def response(self) -> _Headers:
        """The response head (1xx skipped by h2); a reset or broken connection raises."""
        item = await self.queue.get()
        if isinstance(item, _Headers):
            return item
        self.finished = True
        if isinstance(item, TransportError):
            raise item
        raise TransportError(f"stream {self.id} ended without a response")

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The body's DATA as it arrives, each acknowledged as it is taken; stops at its end."""
        while not self.finished:
            item = await self.queue.get()
            if isinstance(item, Chunk):
                self.conn.ack(self.id, item.flow_len)
                yield item
            elif item is None:
                self.finished = True
            elif isinstance(item, TransportError):
                self.finished = True
                raise item

    def cancel(self) -> None:
        """RST_STREAM CANCEL (RFC 9113 8.7) if still open; hand back unread data's window."""
        if not self.finished:
            self.finished = True
            self.conn.cancel(self)


class _H2Conn:
    """One HTTP/2 connection: h2's state, the reader and writer tasks, the open streams."""

    def __init__(
        self, conn: Connection, scheme: str, authority: str, windows: tuple[int, int]
    ) -> None:
        self.conn, self.scheme, self.authority = conn, scheme, authority
        self.stream_window, self.connection_window = windows
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.streams: dict[int, H2Stream] = {}
        self.error: TransportError | None = None  # set once: the connection is done
        self.draining = False  # GOAWAY received: no new streams (RFC 9113 6.8)
        self.settings_seen = False
        self.max_concurrent = 0  # most streams open at once
        self.stats: ConnStats | None = None
        self._changed = asyncio.Event()  # replaced on every change: waiters re-check
        self._want_write = asyncio.Event()
        self._closing: asyncio.Future[ConnStats] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._polite = False  # we close a healthy connection: say GOAWAY first

    def start(self) -> None:
        """Queue the preface and our settings, and start the reader and writer."""
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window,
            },
        )
        # RFC 8441 3: SETTINGS_ENABLE_CONNECT_PROTOCOL is the server's to send
        del self.h2.local_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]
        self.h2.initiate_connection()
        if self.connection_window > _DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(self.connection_window - _DEFAULT_WINDOW)
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"h2-reader-{self.conn.index}"),
            asyncio.create_task(self._write_loop(), name=f"h2-writer-{self.conn.index}"),
        ]
        self._kick()

    @property
    def usable(self) -> bool:
        return self.error is None and not self.draining

    def _kick(self) -> None:
        self._want_write.set()

    def _poke(self) -> None:
        """Wake everyone waiting for a slot or for send window."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _room(self) -> bool:
        limit = (
            self.h2.remote_settings.max_concurrent_streams
            if self.settings_seen
            else PRE_SETTINGS_STREAMS
        )
        return self.h2.open_outbound_streams < limit

    async def open_stream(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> H2Stream:
        """Wait for a slot, send the request; `_Unavailable` if the connection went away
        before the stream was sent."""
        start, at_limit = time.perf_counter_ns(), False
        while True:
            changed = self._changed
            if not self.usable:
                raise _Unavailable
            if self._room():
                break
            at_limit = at_limit or self.settings_seen  # not only waiting for SETTINGS
            await changed.wait()
        waited_ns = time.perf_counter_ns() - start
        hdrs = [
            (b":method", method.encode()),
            (b":scheme", self.scheme.encode()),
            (b":authority", self.authority.encode()),
            (b":path", path.encode()),
            *(
                (name.lower().encode(), value.encode("latin-1"))
                for name, value in headers
                if name.lower() not in _CONNECTION_SPECIFIC
            ),
        ]
        stream_id = self.h2.get_next_available_stream_id()
        try:
            self.h2.send_headers(stream_id, hdrs, end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            raise TransportError(f"HTTP/2 cannot send the request: {exc}") from exc
        stream = H2Stream(self, stream_id, waited_ns)
        stream.waited_at_limit = at_limit
        self.streams[stream_id] = stream
        self.max_concurrent = max(self.max_concurrent, self.h2.open_outbound_streams)
        self._kick()
        if body:
            await self._send_body(stream, body)
        return stream

    async def _send_body(self, stream: H2Stream, body: bytes) -> None:
        """DATA frames within the stream's and the connection's send windows (RFC 9113 6.9)."""
        view, pos = memoryview(body), 0
        while pos < len(body):
            changed = self._changed
            if self.error is not None:
                raise _copy(self.error)
            if stream.finished:
                return  # the consumer cancelled the stream
            try:
                room = min(
                    self.h2.local_flow_control_window(stream.id),
                    self.h2.max_outbound_frame_size,
                    len(body) - pos,
                )
                if room > 0:
                    end = pos + room == len(body)
                    self.h2.send_data(stream.id, bytes(view[pos : pos + room]), end_stream=end)
                    pos += room
                    self._kick()
                    continue
            except h2.exceptions.StreamClosedError:
                # reset: RFC 9113 8.1 lets a server that has answered stop the rest of the
                # request with RST_STREAM NO_ERROR; its answer (or error) is in the queue
                return
            except h2.exceptions.ProtocolError as exc:
                raise TransportError(f"HTTP/2 cannot send the body: {exc}") from exc
            await changed.wait()  # a WINDOW_UPDATE, a reset or the end

    def ack(self, stream_id: int, flow_len: int) -> None:
        """The consumer took `flow_len` bytes: h2 sends WINDOW_UPDATE once half a window
        has been taken (its WindowManager)."""
        if self.error is not None or not flow_len:
            return
        try:
            self.h2.acknowledge_received_data(flow_len, stream_id)
        except h2.exceptions.ProtocolError:
            return  # the connection is closing: no window to hand back
        self._kick()

    def cancel(self, stream: H2Stream) -> None:
        self.streams.pop(stream.id, None)
        unread = 0
        while not stream.queue.empty():
            item = stream.queue.get_nowait()
            unread += item.flow_len if isinstance(item, Chunk) else 0
        if self.error is not None:
            return
        # a stream closed by both ends already (StreamClosedError) has nothing to reset
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
        self.ack(stream.id, unread)  # connection window only: the stream is closed
        self._kick()
        self._poke()
        self._close_if_drained()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.conn.read()
                t_ns, t_perf = self.conn.last_recv_ns, self.conn.last_recv_perf_ns
                if not data:
                    raise TransportError("server closed the connection")
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._kick()  # h2 queued a GOAWAY naming the error (RFC 9113 5.4.1)
                    raise TransportError(f"HTTP/2 protocol error: {exc}") from exc
                for event in events:
                    self._dispatch(event, t_ns, t_perf)
                self._kick()
        except TransportError as exc:
            self._fail(exc)
        except BaseException as exc:  # cancelled, or a bug: wake every waiter, then surface
            self._fail(TransportError(f"HTTP/2 reader stopped: {exc!r}"))
            raise

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._want_write.wait()
                self._want_write.clear()
                data = self.h2.data_to_send()
                if data:
                    await self.conn.write(data)
        except TransportError as exc:
            self._fail(exc)
        except BaseException as exc:
            self._fail(TransportError(f"HTTP/2 writer stopped: {exc!r}"))
            raise

    def _dispatch(self, event: h2.events.Event, t_ns: int, t_perf: int) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            if (stream := self.streams.get(event.stream_id or 0)) is not None:
                stream.queue.put_nowait(_Headers(_response(event.headers or []), t_ns, t_perf))
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id or 0)
            flow_len = event.flow_controlled_length or 0
            if stream is None or not event.data:  # a stream we dropped, or only padding or
                self.ack(event.stream_id or 0, flow_len)  # END_STREAM: hand the window back
            else:
                stream.queue.put_nowait(Chunk(bytes(event.data or b""), flow_len, t_ns, t_perf))
        elif isinstance(event, h2.events.StreamEnded):
            self._end(event.stream_id or 0, None)
        elif isinstance(event, h2.events.StreamReset):
            code = _code(event.error_code)
            self._end(event.stream_id or 0, TransportError(f"server reset the stream ({code})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
            self._poke()
        elif isinstance(event, h2.events.WindowUpdated):
            self._poke()

    def _end(self, stream_id: int, item: TransportError | None) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.queue.put_nowait(item)
        self._poke()
        self._close_if_drained()

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """RFC 9113 6.8: streams above last_stream_id were not processed (retry them on a new
        connection); those up to it may still complete."""
        self.draining = True
        last = event.last_stream_id or 0
        code = _code(event.error_code)
        for stream_id in [s for s in self.streams if s > last]:
            self._end(stream_id, TransportError(f"GOAWAY ({code}): stream not processed"))
        if self.streams:
            # h2 closes its state machine on any GOAWAY and would reject the remaining
            # streams' frames as a protocol error; reopen it to receive them (we open no
            # new stream on a draining connection: `usable` is False).
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        self._poke()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.draining and not self.streams:
            self._schedule_close()

    def _fail(self, exc: TransportError) -> None:
        """The connection is done: fail every open stream and wake every waiter."""
        if self.error is not None:
            return
        self.error = exc
        for stream in self.streams.values():
            stream.queue.put_nowait(_copy(exc))
        self.streams.clear()
        self._poke()
        self._schedule_close()

    def _schedule_close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def close(self) -> ConnStats:
        """Fail what is open, say GOAWAY if the connection is healthy, count, close."""
        if self._closing is None:
            self._polite = self.error is None and not self.draining
            self._fail(TransportError("connection closed by the client"))
        assert self._closing is not None
        return await asyncio.shield(self._closing)

    async def _close(self) -> ConnStats:
        self.error = self.error or TransportError("connection closed")
        if self._polite:
            self.h2.close_connection()  # GOAWAY NO_ERROR (RFC 9113 6.8)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
        data = self.h2.data_to_send()
        if data:
            # broken already: the bytes it carried are counted below all the same
            with contextlib.suppress(TransportError):
                await self.conn.write(data)
        self.stats = await self.conn.aclose()
        for outcome in outcomes:  # a bug in the reader or writer surfaces here, once counted
            if isinstance(outcome, Exception):
                raise outcome
        return self.stats


def _response(headers: list[tuple[bytes, bytes]]) -> Response:
    status, fields = 0, dict[str, str]()
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return Response(status, fields)


def with_h2_fields(stats: ConnStats, streams: int) -> ConnStats:
    """`stats` marked as an HTTP/2 connection that carried at most `streams` at once."""
    return dataclasses.replace(stats, http_version="2", streams=streams)


class H2Session:
    """One HTTP/2 connection to `target` at a time, shared by any number of streams.

    `scheme` is ":scheme": by default "http" over a plain TCP connection (`stack` "tcp",
    h2c with prior knowledge, RFC 9113 3.3) and "https" over anything else. The windows
    are what we grant the server (see the module docstring); tests shrink them."""

    def __init__(
        self,
        target: Target,
        connector: Connector = tcp_connector,
        *,
        scheme: str | None = None,
        indices: Iterator[int] | None = None,
        stream_window: int = STREAM_WINDOW,
        connection_window: int = CONNECTION_WINDOW,
    ) -> None:
        self.target, self.connector, self.scheme = target, connector, scheme
        self.windows = (stream_window, connection_window)
        self._indices = indices if indices is not None else itertools.count()
        self._conns: list[_H2Conn] = []
        self._rejected: list[ConnStats] = []  # connections that did not negotiate h2
        self._current: _H2Conn | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.streams_opened = 0
        self.slot_waits = 0  # streams that waited for SETTINGS_MAX_CONCURRENT_STREAMS
        self.slot_wait_ns = 0  # their waits, summed

    @property
    def connections(self) -> int:
        return len(self._conns) + len(self._rejected)

    @property
    def max_concurrent(self) -> int:
        return max((c.max_concurrent for c in self._conns), default=0)

    async def _usable(self) -> _H2Conn:
        async with self._lock:
            current = self._current
            if current is None or not current.usable:
                conn = await self.connector(self.target)
                conn.index = next(self._indices)
                # RFC 9113 3.2: over TLS the server must have chosen "h2" (TLSConn.alpn); a
                # connection that does not say (plain TCP: h2c with prior knowledge) is h2.
                alpn = getattr(conn, "alpn", None)
                if isinstance(alpn, str) and alpn != "h2":
                    self._rejected.append(await conn.aclose())
                    raise TransportError(
                        f"{self.target.authority} did not negotiate HTTP/2 (ALPN {alpn!r})",
                        retryable=False,
                    )
                scheme = self.scheme or ("http" if getattr(conn, "stack", "") == "tcp" else "https")
                current = _H2Conn(conn, scheme, self.target.authority, self.windows)
                current.start()
                self._conns.append(current)
                self._current = current
            return current

    async def open_stream(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> H2Stream:
        """Send a request on the current connection (opening one if there is none usable)."""
        if self._closed:
            raise TransportError("HTTP/2 session closed", retryable=False)
        for _ in range(3):  # a connection that goes away while the stream waits: the next one
            conn = await self._usable()
            try:
                stream = await conn.open_stream(method, path, headers, body)
            except _Unavailable:
                continue
            self.streams_opened += 1
            if stream.waited_at_limit:
                self.slot_waits += 1
                self.slot_wait_ns += stream.slot_wait_ns
            return stream
        raise TransportError(f"no usable HTTP/2 connection to {self.target.authority}")

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
        h2_stats = [with_h2_fields(c.stats, c.max_concurrent) for c in self._conns if c.stats]
        return sorted([*h2_stats, *self._rejected], key=lambda s: s.index)


class StreamClock:
    """What `HTTP2.conn` returns: the clocks of the read that brought the chunk the body
    iterator last yielded (or the response head). Not a byte stream: read and write raise."""

    def __init__(self) -> None:
        self.index = 0  # the connection the stream rides
        self.last_recv_ns = 0
        self.last_recv_perf_ns = 0

    def stamp(self, index: int, t_ns: int, t_perf_ns: int) -> None:
        self.index, self.last_recv_ns, self.last_recv_perf_ns = index, t_ns, t_perf_ns

    async def read(self, size: int = 0) -> bytes:
        raise TransportError("an HTTP/2 stream is read through the HTTP layer", retryable=False)

    async def write(self, data: bytes) -> None:
        raise TransportError("an HTTP/2 stream is written through the HTTP layer", retryable=False)

    async def aclose(self) -> ConnStats:
        raise TransportError("an HTTP/2 stream is closed through the HTTP layer", retryable=False)


class SessionLayer:
    """The `HTTPLayer` of one client over a multiplexed session (`H2Session`, or
    `clients/h3.py`'s `H3Session`): one stream at a time, as `HTTP11`. What differs between
    HTTP/2 and HTTP/3 is the session; this class only needs its `target`, `connections`,
    `open_stream(method, target, headers, body)`, `close_conn()` and `aclose()`, and of a
    stream its `conn_index`, `response()`, `chunks()` and `cancel()`.

    Over a session of its own (`close_conn` resets the stream and closes the connection, so a
    client's reconnect logic works as over HTTP/1.1; `aclose` returns its counts) or a shared
    one (`close_conn` and `aclose` reset only this layer's stream; the session's owner closes
    the connection and gets its counts from the session's `aclose`). `open_raw` (WebSocket)
    opens a separate connection through `raw_connector`, counted here."""

    session: Any  # H2Session | H3Session: the same methods, see the docstring

    def __init__(
        self,
        target: Target,
        session: Any,
        *,
        own: bool,
        accept_gzip: bool,
        raw_connector: Connector,
        indices: Iterator[int],
    ) -> None:
        self.target, self.accept_gzip, self.raw_connector = target, accept_gzip, raw_connector
        self.session, self._own, self._indices = session, own, indices
        self.requests = 0  # streams sent, WebSocket upgrades included
        self.body_bytes_down = 0  # DATA payload of response bodies, before gzip decoding
        self._stream: Any = None  # the stream being read (H2Stream or H3Stream)
        self._gunzip: zlib._Decompress | None = None
        self._clock = StreamClock()
        self._used: set[int] = set()  # session connections this layer's streams rode
        self._raw: Connection | None = None
        self._raw_opened = 0
        self.closed_stats: list[ConnStats] = []  # the raw connections'

    @property
    def conn(self) -> StreamClock | None:
        return self._clock if self._used else None

    @property
    def connections(self) -> int:
        session_conns: int = self.session.connections if self._own else len(self._used)
        return session_conns + self._raw_opened

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Open a stream with this request and read its response head."""
        self._end_stream()
        hdrs = [*self.target.authorization(), *(headers or [])]
        if self.accept_gzip:
            hdrs.append(("accept-encoding", "gzip"))
        if body:
            hdrs += [("content-type", "application/json"), ("content-length", str(len(body)))]
        stream = await self.session.open_stream(method, target, hdrs, body)
        self._stream = stream
        self._used.add(stream.conn_index)
        self.requests += 1
        head = await stream.response()
        self._clock.stamp(stream.conn_index, head.t_ns, head.t_perf_ns)
        gzipped = head.response.headers.get("content-encoding", "").lower() == "gzip"
        # wbits 16 + MAX_WBITS: a gzip wrapper (RFC 1952), decoded incrementally
        self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        response: Response = head.response
        return response

    async def body(self) -> AsyncIterator[bytes]:
        """The response body as its DATA arrives (gzip removed); stops at its end."""
        stream = self._stream
        if stream is None:
            raise TransportError("no response to read", retryable=False)
        try:
            async for chunk in stream.chunks():
                self.body_bytes_down += len(chunk.data)
                self._clock.stamp(stream.conn_index, chunk.t_ns, chunk.t_perf_ns)
                yield self._gunzip.decompress(chunk.data) if self._gunzip else chunk.data
        except zlib.error as exc:
            raise TransportError(f"bad gzip body: {exc}", retryable=False) from exc

    async def read_body(self) -> bytes:
        return b"".join([chunk async for chunk in self.body()])

    async def open_raw(self) -> Connection:
        """A connection of its own for a WebSocket (see the subclasses), counted here."""
        await self._close_raw()
        conn = await self.raw_connector(self.target)
        conn.index = next(self._indices)
        self._raw = conn
        self._raw_opened += 1
        self.requests += 1  # the upgrade request
        return conn

    def _end_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    async def _close_raw(self) -> None:
        if self._raw is not None:
            stats = await self._raw.aclose()  # it began with an HTTP/1.1 upgrade request
            self.closed_stats.append(dataclasses.replace(stats, http_version="1.1"))
            self._raw = None

    async def close_conn(self) -> None:
        """Reset the current stream and close the raw connection, and the session's
        connection when the session is this layer's own."""
        self._end_stream()
        await self._close_raw()
        if self._own:
            await self.session.close_conn()

    async def aclose(self) -> list[ConnStats]:
        """Close everything this layer owns; the counts of those connections."""
        self._end_stream()
        await self._close_raw()
        session_stats: list[ConnStats] = await self.session.aclose() if self._own else []
        return sorted([*session_stats, *self.closed_stats], key=lambda s: s.index)


class HTTP2(SessionLayer):
    """HTTP/2 to one target for one client (`SessionLayer` over an `H2Session`).

    `open_raw` (WebSocket) opens a separate connection through `raw_connector` (by default
    the same connector): a WebSocket over HTTP/2 needs RFC 8441's extended CONNECT, which the
    fronts here do not offer, so, as a browser does then, the WebSocket keeps an HTTP/1.1
    connection of its own."""

    session: H2Session

    def __init__(
        self,
        target: Target,
        connector: Connector = tcp_connector,
        *,
        accept_gzip: bool = False,
        session: H2Session | None = None,
        raw_connector: Connector | None = None,
    ) -> None:
        self.connector = connector
        indices = itertools.count()
        super().__init__(
            target,
            session or H2Session(target, connector, indices=indices),
            own=session is None,
            accept_gzip=accept_gzip,
            raw_connector=raw_connector or connector,
            indices=indices,
        )


def shared_factory(
    session: H2Session, *, raw_connector: Connector | None = None
) -> HTTPLayerFactory:
    """An `HTTPLayerFactory` whose layers all ride `session`; their WebSocket connections go
    through `raw_connector` (default: the connector the client passes)."""

    def factory(
        target: Target, connector: Connector = tcp_connector, *, accept_gzip: bool = False
    ) -> HTTP2:
        if target != session.target:
            raise ValueError(f"session is for {session.target.authority}, not {target.authority}")
        return HTTP2(
            target,
            connector,
            accept_gzip=accept_gzip,
            session=session,
            raw_connector=raw_connector or connector,
        )

    return factory
