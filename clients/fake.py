"""In-memory connections for unit tests of our own client logic: no server, no sockets.

A `FakeConnector` hands out one scripted `FakeConnection` per connect, in order. A `Script`
says what the server sends on that connection: one reply per request the client writes
(released when the client's write arrives, as a server answers), and how the connection
ends: at EOF after the replies, or cut after `cut_after` bytes with an EOF or a reset.
Every byte the client wrote is kept, and `requests_written` reads it back as HTTP requests.
`http_response` builds a reply with h11 in the server role, so tests write bodies with the
real codecs and never hand-write wire bytes. `RecordingSleep` replaces the backoff's sleep:
it returns at once and keeps the delays asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import h11

from clients.net import READ_SIZE, ConnStats, Target
from streams.errors import TransportError

STACK = "fake"  # what `ConnStats.stack` says for these connections


@dataclasses.dataclass(frozen=True)
class Script:
    """One connection's server side: `replies[i]` is sent once the client's write i arrives.

    `cut_after` (bytes the server gets through before the cut; None: no cut) ends the
    connection early; `end` is how it ends: "eof" (the server closes) or "reset" (a read
    raises TransportError, as a reset socket does). `chunk` caps each read, so a token can
    straddle two reads as it does on a real network."""

    replies: Sequence[bytes] = ()
    cut_after: int | None = None
    end: str = "eof"
    chunk: int = READ_SIZE

    def __post_init__(self) -> None:
        if self.end not in ("eof", "reset"):
            raise ValueError(f"Script.end must be 'eof' or 'reset', got {self.end!r}")


class FakeConnection:
    """A `Connection` playing one `Script`; `sent` holds what the client wrote."""

    def __init__(self, script: Script, target: Target) -> None:
        self.script, self.target = script, target
        self.index = 0
        self.last_recv_ns = 0
        self.last_recv_perf_ns = 0
        self.sent = bytearray()
        self.writes = 0
        self.closed = False
        self._pending = b""  # released, not yet read
        self._released = 0  # replies released so far
        self._delivered = 0  # bytes the client has read
        self._wrote = asyncio.Event()

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise TransportError("connection broken while sending: closed")
        self.sent += data
        self.writes += 1
        replies = self.script.replies
        while self._released < min(self.writes, len(replies)):
            self._pending += replies[self._released]
            self._released += 1
        self._wrote.set()

    async def read(self, size: int = READ_SIZE) -> bytes:
        """The next released bytes (waiting for the client's write when the next reply
        answers it); at the cut or after the last reply, the script's end."""
        cut = self.script.cut_after
        while not self._pending and self._released < len(self.script.replies):
            if cut is not None and self._delivered >= cut:
                break
            self._wrote.clear()
            await self._wrote.wait()
        room = min(size, self.script.chunk, len(self._pending))
        if cut is not None:
            room = min(room, cut - self._delivered)
        if room <= 0:
            if self.script.end == "reset":
                raise TransportError("connection broken: reset (scripted)")
            data = b""
        else:
            data, self._pending = self._pending[:room], self._pending[room:]
        self._delivered += len(data)
        self.last_recv_ns, self.last_recv_perf_ns = time.time_ns(), time.perf_counter_ns()
        return data

    async def aclose(self) -> ConnStats:
        self.closed = True
        up, down = len(self.sent), self._delivered
        return ConnStats(self.index, up, down, up, down, -1, -1, -1, "app", STACK)


class FakeConnector:
    """A `Connector` handing out `scripts` in order; one more connect is refused."""

    def __init__(self, scripts: Sequence[Script]) -> None:
        self.scripts = list(scripts)
        self.connections: list[FakeConnection] = []

    async def __call__(self, target: Target) -> FakeConnection:
        if len(self.connections) >= len(self.scripts):
            raise TransportError(f"cannot connect to {target.authority}: refused (no script)")
        conn = FakeConnection(self.scripts[len(self.connections)], target)
        self.connections.append(conn)
        return conn


class RecordingSleep:
    """The backoff's sleep, instant: `delays` lists the seconds asked for, in order."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)  # still a suspension point, as the real sleep is


def http_response(
    status: int, headers: Sequence[tuple[str, str]], chunks: Sequence[bytes] = ()
) -> bytes:
    """One HTTP/1.1 response as h11 writes it: chunked unless a Content-Length is given."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: fake\r\n\r\n")
    server.next_event()  # the Request: h11 answers only a request it has read
    server.next_event()  # its EndOfMessage
    out = server.send(h11.Response(status_code=status, headers=list(headers))) or b""
    for chunk in chunks:
        out += server.send(h11.Data(data=chunk)) or b""
    return out + (server.send(h11.EndOfMessage()) or b"")


def requests_written(conn: FakeConnection) -> list[h11.Request]:
    """The HTTP requests the client wrote on `conn`, read back with h11."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(bytes(conn.sent))
    out: list[h11.Request] = []
    while True:
        event = server.next_event()
        if isinstance(event, h11.Request):
            out.append(event)
        elif event is h11.PAUSED and server.their_state is h11.DONE:
            server.send(h11.Response(status_code=204, headers=[]))
            server.send(h11.EndOfMessage())
            server.start_next_cycle()
        elif event is h11.NEED_DATA or event is h11.PAUSED:
            return out
