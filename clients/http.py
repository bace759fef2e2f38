"""The HTTP layer the clients speak through, and its HTTP/1.1 implementation on h11.

`HTTPLayer` is what a client calls (request, body iteration, read_body, open_raw for a
WebSocket upgrade, close_conn, aclose, and the request and connection counts); an
`HTTPLayerFactory` builds one for a target over a `Connector`. `HTTP11` is the first layer:
h11 (sans-I/O) over whatever `Connection` the connector hands out, so we see and count
every byte. One layer follows one stream: it opens connections as needed, keeps them alive
between requests (polling), and reopens when the server or the network closes one.
h11's errors are translated here into TransportError.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import AsyncIterator
from typing import Protocol

import h11

from clients.net import Connection, Connector, ConnStats, Target, tcp_connector
from streams.errors import TransportError


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "


class HTTPLayer(Protocol):
    """Requests to one target, as the clients use them, whatever the HTTP version."""

    target: Target
    requests: int  # requests sent, WebSocket upgrades included
    body_bytes_down: int  # response body payload (no chunk or DATA framing), before gzip decoding

    @property
    def conn(self) -> Connection | None:
        """The connection the current response arrives on (its clocks stamp each chunk)."""

    @property
    def connections(self) -> int:
        """How many connections this layer has opened."""

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send one request and read its status and headers."""

    def body(self) -> AsyncIterator[bytes]:
        """The response body as it arrives (framing and content coding removed)."""

    async def read_body(self) -> bytes:
        """The whole response body."""

    async def open_raw(self) -> Connection:
        """A fresh connection for a protocol of its own (WebSocket), counted here."""

    async def close_conn(self) -> None:
        """Close the current connection (counting its bytes first)."""

    async def aclose(self) -> list[ConnStats]:
        """Close everything; the counts of every connection this layer used."""


HTTPClient = HTTPLayer  # the name clients annotated with before the layer was pluggable


class HTTPLayerFactory(Protocol):
    """Builds the HTTP layer a client runs one stream over (`HTTP11` is one)."""

    def __call__(
        self, target: Target, connector: Connector = ..., *, accept_gzip: bool = ...
    ) -> HTTPLayer: ...


class HTTP11:
    """HTTP/1.1 to one target, over as few connections as the server allows."""

    def __init__(
        self, target: Target, connector: Connector = tcp_connector, *, accept_gzip: bool = False
    ) -> None:
        self.target = target
        self.connector = connector
        self.accept_gzip = accept_gzip
        self._gunzip: zlib._Decompress | None = None  # set per response with gzip encoding
        self.requests = 0
        self.body_bytes_down = 0  # h11.Data payload bytes, before gzip decoding
        self.closed_stats: list[ConnStats] = []
        self._conn: Connection | None = None
        self._h11: h11.Connection | None = None
        self._connections = 0

    @property
    def conn(self) -> Connection | None:
        return self._conn

    @property
    def connections(self) -> int:
        return self._connections

    async def _ensure_conn(self) -> tuple[Connection, h11.Connection]:
        h = self._h11
        if self._conn is not None and h is not None and h.our_state is h.their_state is h11.DONE:
            h.start_next_cycle()  # keep-alive: the next request on this connection
            return self._conn, h
        conn = await self._connect()
        self._h11 = h11.Connection(h11.CLIENT)
        return conn, self._h11

    async def open_raw(self) -> Connection:
        """A fresh connection for a protocol of its own (WebSocket), still counted here."""
        conn = await self._connect()
        self.requests += 1  # the upgrade request
        return conn

    async def _connect(self) -> Connection:
        """Close the current connection (counting it) and open the next one."""
        await self.close_conn()
        conn = await self.connector(self.target)
        conn.index = self._connections
        self._conn = conn
        self._connections += 1
        return conn

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send one request and read its status line and headers."""
        conn, h = await self._ensure_conn()
        hdrs = [("Host", self.target.authority), *self.target.authorization(), *(headers or [])]
        if self.accept_gzip:
            hdrs.append(("Accept-Encoding", "gzip"))
        if body:
            hdrs += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        try:
            data = h.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                data += h.send(h11.Data(data=body))
            data += h.send(h11.EndOfMessage())
            await conn.write(data)
            self.requests += 1
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Response):
                    resp = Response(
                        event.status_code,
                        {k.decode().lower(): v.decode("latin-1") for k, v in event.headers},
                    )
                    gzipped = resp.headers.get("content-encoding", "").lower() == "gzip"
                    # wbits 16 + MAX_WBITS: a gzip wrapper (RFC 1952), decoded incrementally
                    self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
                    return resp
                if not isinstance(event, h11.InformationalResponse):
                    raise TransportError(f"unexpected {type(event).__name__} before the response")
        except h11.ProtocolError as exc:
            raise TransportError(f"HTTP protocol error: {exc}") from exc
        except OSError as exc:
            raise TransportError(f"connection failed: {exc.strerror or exc}") from exc

    async def body(self) -> AsyncIterator[bytes]:
        """The response body as it arrives (chunk framing removed); stops at its end."""
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    data = bytes(event.data)
                    self.body_bytes_down += len(data)
                    yield self._gunzip.decompress(data) if self._gunzip else data
                elif isinstance(event, h11.EndOfMessage):
                    return
        except h11.ProtocolError as exc:
            raise TransportError(f"HTTP protocol error: {exc}") from exc
        except zlib.error as exc:
            raise TransportError(f"bad gzip body: {exc}", retryable=False) from exc
        except OSError as exc:
            raise TransportError(f"connection failed: {exc.strerror or exc}") from exc

    async def read_body(self) -> bytes:
        return b"".join([chunk async for chunk in self.body()])

    async def _next_event(self) -> h11.Event:
        assert self._conn is not None and self._h11 is not None
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                # b"" (EOF) becomes ConnectionClosed, or a protocol error mid-body
                self._h11.receive_data(await self._conn.read())
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise TransportError("server closed the connection")
            return event  # type: ignore[return-value]

    async def close_conn(self) -> None:
        """Close the current connection (counting its bytes first)."""
        if self._conn is not None:
            # a WebSocket's connection began as HTTP/1.1 too (its upgrade request)
            stats = await self._conn.aclose()
            self.closed_stats.append(dataclasses.replace(stats, http_version="1.1"))
        self._conn, self._h11 = None, None

    async def aclose(self) -> list[ConnStats]:
        """Close everything; the byte counts of every connection this client used."""
        await self.close_conn()
        return self.closed_stats
