"""A small HTTP/2 server for tests: h2 in the server role, h2c (prior knowledge, RFC 9113
3.3) on loopback, in the test's event loop.

Each request runs a handler the test writes (`routes`, keyed by path), which answers through
`ServerStream`: headers, DATA within the flow-control windows the client grants, PING round
trips, RST_STREAM. The server can also write a raw GOAWAY frame past its own h2 state (so it
keeps serving the streams the GOAWAY lets finish), write garbage, or cut the connection, and
it counts what it saw: streams in progress and their peak, the paths asked for,
WINDOW_UPDATEs and RST_STREAMs received. Handlers that must wait for the test wait on events
the test sets, never on sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from clients.net import Target


class ServerStream:
    """One request as a handler sees it, and the means to answer it."""

    def __init__(self, conn: _ServerConn, stream_id: int, headers: dict[str, str], body: bytes):
        self.conn, self.id, self.headers, self.body = conn, stream_id, headers, body
        parts = urlsplit(headers[":path"])
        self.path = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    async def respond(self, status: int = 200, headers: list[tuple[str, str]] | None = None,
                      end: bool = False) -> None:  # fmt: skip
        hdrs = [(":status", str(status)), *(headers or [("content-type", "text/plain")])]
        self.conn.h2.send_headers(self.id, hdrs, end_stream=end)
        self.conn.flush()

    async def send(self, data: bytes, end: bool = False) -> None:
        """`data` in DATA frames, waiting for window as the client grants it."""
        h = self.conn.h2
        while data:
            changed = self.conn.changed
            room = min(len(data), h.local_flow_control_window(self.id), h.max_outbound_frame_size)
            if room <= 0:
                await changed.wait()
                continue
            h.send_data(self.id, data[:room])
            data = data[room:]
            self.conn.flush()
        if end:
            h.end_stream(self.id)
            self.conn.flush()

    async def ping(self) -> None:
        """A PING round trip: everything sent before it has been read by the client."""
        ack = self.conn.ping_acked = asyncio.Event()
        self.conn.h2.ping(b"pushlab!")
        self.conn.flush()
        await ack.wait()

    def reset(self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        self.conn.h2.reset_stream(self.id, code)
        self.conn.flush()


Handler = Callable[[ServerStream], Awaitable[None]]


class _ServerConn:
    def __init__(self, server: H2Server, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.server, self.reader, self.writer = server, reader, writer
        config = h2.config.H2Configuration(client_side=False, header_encoding="latin-1")
        self.h2 = h2.connection.H2Connection(config)
        self.changed = asyncio.Event()
        self.ping_acked = asyncio.Event()
        self.requests: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def flush(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(self.h2.data_to_send())

    def _poke(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        if self.server.max_streams is not None:
            limit = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams}
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values=limit)
        self.h2.initiate_connection()
        self.flush()
        try:
            while data := await self.reader.read(65536):
                for event in self.h2.receive_data(data):
                    self._on(event)
                self.flush()
        except (h2.exceptions.ProtocolError, ConnectionError):
            self.flush()
        finally:
            for task in self.tasks.values():
                task.cancel()
            self.writer.close()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.requests[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
            if event.stream_ended is not None:
                self._start(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            self.requests[event.stream_id][1].extend(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id not in self.tasks:
            self._start(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.server.resets_received += 1
            if (task := self.tasks.get(event.stream_id)) is not None:
                task.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            self.server.window_updates += 1
            self._poke()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._poke()
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_acked.set()

    def _start(self, stream_id: int) -> None:
        headers, body = self.requests.pop(stream_id)
        stream = ServerStream(self, stream_id, headers, bytes(body))
        self.tasks[stream_id] = asyncio.create_task(self._serve(stream))

    async def _serve(self, stream: ServerStream) -> None:
        server = self.server
        server.in_progress += 1
        server.peak = max(server.peak, server.in_progress)
        server.paths.append(stream.path)
        server.poke()
        try:
            handler = server.routes.get(stream.path)
            if handler is None:
                await stream.respond(404, end=True)
            else:
                await handler(stream)
        except h2.exceptions.StreamClosedError:
            pass  # the client reset it
        finally:
            server.in_progress -= 1
            server.poke()


class H2Server:
    """h2c on 127.0.0.1: `routes` maps a path to its handler."""

    def __init__(self, routes: dict[str, Handler], max_streams: int | None = None) -> None:
        self.routes, self.max_streams = routes, max_streams
        self.conns: list[_ServerConn] = []
        self.in_progress = self.peak = self.window_updates = self.resets_received = 0
        self.paths: list[str] = []
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._conn_tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Target:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return Target("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _ServerConn(self, reader, writer)
        self.conns.append(conn)
        self._conn_tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        self.poke()
        await conn.run()

    def poke(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()

    def goaway(self, last_stream_id: int) -> None:
        """A raw GOAWAY NO_ERROR on the latest connection; the server's h2 keeps serving."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0)
        self.conns[-1].writer.write(frame.serialize())

    def garbage(self) -> None:
        """A PING of 4 bytes: a connection error of type FRAME_SIZE_ERROR (RFC 9113 6.7).

        (A frame header announcing more than SETTINGS_MAX_FRAME_SIZE is not used: h2 checks
        the length only once the whole frame has arrived, so it waits for those bytes.)"""
        self.conns[-1].writer.write(b"\x00\x00\x04\x06\x00\x00\x00\x00\x00junk")

    def cut(self) -> None:
        self.conns[-1].writer.transport.abort()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            conn.writer.transport.abort()
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        await self._server.wait_closed()
