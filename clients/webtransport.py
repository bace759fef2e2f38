"""WebTransport client: a session on the lab's HTTP/3 endpoint, on a counted `QuicConn`.

Theory of operation. The endpoint is found as a page finds it: `GET /webtransport` on the
server's HTTP port once per (host, port) per process (a page fetches it once at load, then
opens every session with the hash it got), over an HTTP/1.1 layer of its own that no record
counts: it is not part of any answer. Each attempt is then one QUIC connection and one
session on it: the extended CONNECT (`:protocol webtransport`, the draft02 header, the
target's `Authorization`), the control stream with `start` or `resume` (the client's
`ResumePoint`), and tokens from the server's unidirectional stream or its datagrams, each
recorded with the receive stamps of the UDP datagram that carried it. `done` ends the
answer: the session is closed (capsule code 0) and the connection with it.

Datagram delivery (`ClientOptions.wt_delivery = "datagram"`) is unreliable: a token whose
datagram was lost never comes, and nothing resends it. The record's `lost` column
(`stream_row`: tokens expected minus distinct seqs received) shows every such token;
`datagrams_missing` here is the same count from `done`'s LAST, per session.

A connection lost mid-stream (QUIC closed, idle timeout, the session stream cut) is a
retryable TransportError: `Client.run` opens a new connection and resumes after the last
seq. A refused session (4xx), a session closed with 1008, a certificate that does not match
the pinned hash: not retryable. Every connection's `ConnStats` (stack "quic", source "udp")
lands in `rec.conns`, and each session counts as one HTTP request.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)

from clients.base import Abandoned, Client, expect
from clients.http import HTTP11, HTTPLayer
from clients.net import ConnStats, Target
from clients.quic import QuicConn, QuicSettings
from clients.recorder import StreamRecord
from streams.errors import ProtocolError, PushlabError, TransportError
from streams.params import GenParams
from transports import webtransport as codec
from transports.token import TokenRecord, loads

CANCEL_WAIT_S = 2.0  # after `cancel`: how long to wait for the server's `done` before leaving


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What GET /webtransport said."""

    port: int
    sha256: str
    draft: str


# (host, port) of a server's HTTP listener -> its endpoint; see the module docstring
_DISCOVERED: dict[tuple[str, int], Discovery] = {}


async def discover(target: Target, http: HTTPLayer) -> Discovery:
    resp = await http.request("GET", "/webtransport")
    await expect(http, resp, 200, "application/json")
    info = loads(await http.read_body())
    try:
        return Discovery(int(info["port"]), str(info["sha256"]), str(info["draft"]))
    except (KeyError, TypeError, ValueError):
        raise TransportError("GET /webtransport: not the expected JSON", retryable=False) from None


class WebTransportClient(Client):
    key = "webtransport"
    cert_sha256 = ""  # pin this hash instead of the discovered one (tests: a wrong pin)

    _stats: list[ConnStats]
    _sessions = 0
    _body_bytes = 0
    datagrams_missing = 0
    current: QuicConn | None = None  # the connection of the running attempt

    async def run(self, target: Target, params: GenParams, rec: StreamRecord) -> None:
        self._stats, self._sessions, self._body_bytes = [], 0, 0
        await super().run(target, params, rec)
        # the HTTP layer of Client.run carried nothing: the QUIC connections are the record's
        rec.conns = list(self._stats)
        rec.http_requests = self._sessions
        rec.body_bytes_down = self._body_bytes

    async def abandon(self, http: HTTPLayer, rec: StreamRecord) -> None:
        """The cancel message (if asked for) went on the open session in `attempt`."""
        rec.abandoned()

    async def _discovery(self, target: Target, fresh: bool = False) -> Discovery:
        where = (target.host, target.port)
        if fresh or where not in _DISCOVERED:
            layer = HTTP11(target, self._connector)
            try:
                _DISCOVERED[where] = await discover(target, layer)
            finally:
                await layer.aclose()
        return _DISCOVERED[where]

    async def _connect(self, target: Target) -> QuicConn:
        found = await self._discovery(target)
        for fresh in (False, True):
            settings = QuicSettings(
                server_name="localhost",
                cert_sha256=self.cert_sha256 or found.sha256,
                webtransport=True,
                cc=self.options.quic_cc,
            )
            try:
                where = Target(target.host, found.port)
                return await QuicConn.open(where, settings, len(self._stats))
            except TransportError:
                if fresh or self.cert_sha256:
                    raise
                # the server may have restarted since the discovery (a new port, a new
                # certificate): ask once more before giving up
                again = await self._discovery(target, fresh=True)
                if again == found:
                    raise
                found = again
        raise AssertionError("unreachable")

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        rec.request_sent()  # TTFT includes discovery (cached), the QUIC handshake and CONNECT
        conn = self.current = await self._connect(http.target)
        try:
            return await _Session(self, conn, http.target, params, rec).run()
        finally:
            self._stats.append(await conn.aclose())


class _Session:
    """One session on one connection: the H3 events in order, acted on."""

    def __init__(self, client: WebTransportClient, conn: QuicConn, target: Target,
                 params: GenParams, rec: StreamRecord) -> None:  # fmt: skip
        self.client, self.conn, self.target = client, conn, target
        self.params, self.rec = params, rec
        self.events: asyncio.Queue[tuple[H3Event | str, int, int]] = asyncio.Queue()
        self.id = -1
        self.control = -1
        self.status = 0
        self.refusal = b""
        self.capsules = codec.CapsuleParser()
        self.control_lines = codec.LineBuffer()
        self.token_lines: dict[int, codec.LineBuffer] = {}
        datagrams = client.options.wt_delivery == "datagram"
        self.delivery: codec.Delivery = "datagram" if datagrams else "stream"
        self.received: set[int] = set()  # seqs of this session
        self.after = 0  # the session's stream starts after this seq (`started`)

    def _queue(self, event: H3Event | str) -> None:
        self.events.put_nowait((event, self.conn.last_recv_ns, self.conn.last_recv_perf_ns))

    async def run(self) -> str:
        conn, client = self.conn, self.client
        conn.on_event = self._queue
        conn.on_terminated = self._queue
        self.id = conn.quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", f"{self.target.host}:{conn.target.port}".encode()),
            (b":path", codec.PATH.encode()),
            (codec.DRAFT_REQUEST_HEADER.encode(), b"1"),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.target.authorization()]
        conn.h3.send_headers(self.id, headers)
        conn.transmit()
        client._sessions += 1
        try:
            while True:
                event, t_ns, t_perf = await self.events.get()
                reason = self._on(event, t_ns, t_perf)
                conn.transmit()
                if reason is not None:
                    self._close(codec.CLOSE_OK, "done")
                    return reason
        except Abandoned:
            if client.options.abandon == "cancel" and self.control >= 0:
                conn.quic.send_stream_data(self.control, codec.encode_cancel())
                conn.transmit()
                await self._until_done()
            self._close(codec.CLOSE_OK, "abandoned")
            raise

    async def _until_done(self) -> None:
        """After `cancel`: read on (recording nothing) until `done`, briefly."""
        try:
            async with asyncio.timeout(CANCEL_WAIT_S):
                while True:
                    event, _, _ = await self.events.get()
                    if isinstance(event, str):
                        return
                    if (
                        isinstance(event, WebTransportStreamDataReceived)
                        and event.stream_ended
                        and event.stream_id != self.control
                    ):
                        return
        except TimeoutError:
            return

    def _close(self, code: int, message: str) -> None:
        if self.conn.terminated:
            return
        try:
            self.conn.h3.send_data(self.id, codec.encode_close(code, message), end_stream=True)
        except Exception:  # the session stream already ended: nothing to close
            return
        self.conn.transmit()

    def _on(self, event: H3Event | str, t_ns: int, t_perf: int) -> str | None:
        if isinstance(event, str):  # the connection ended
            raise TransportError(event)
        if isinstance(event, HeadersReceived) and event.stream_id == self.id:
            return self._on_headers(event)
        if isinstance(event, DataReceived) and event.stream_id == self.id:
            return self._on_session_data(event)
        if isinstance(event, WebTransportStreamDataReceived) and event.session_id == self.id:
            self.client._body_bytes += len(event.data)
            if event.stream_id == self.control:
                for line in self.control_lines.feed(event.data):
                    self._on_line(line, t_ns, t_perf)
                return None
            lines = self.token_lines.setdefault(event.stream_id, codec.LineBuffer())
            for line in lines.feed(event.data):
                reason = self._on_line(line, t_ns, t_perf)
                if reason is not None:
                    return reason
            if event.stream_ended and lines.pending:
                raise ProtocolError("the token stream ended inside a line")
            return None
        if isinstance(event, DatagramReceived) and event.stream_id == self.id:
            self.client._body_bytes += len(event.data)
            self._on_line(event.data, t_ns, t_perf)
        return None

    def _on_headers(self, event: HeadersReceived) -> str | None:
        headers = dict(event.headers)
        self.status = int(headers.get(b":status", b"0"))
        if self.status != 200:
            if event.stream_ended:
                self._refused()
            return None
        conn = self.conn
        self.control = conn.h3.create_webtransport_stream(self.id, is_unidirectional=False)
        resume = self.client.resume
        first = (
            codec.encode_resume(resume.stream_id, resume.after, self.delivery)
            if resume.stream_id
            else codec.encode_start(self.params, self.delivery)
        )
        conn.quic.send_stream_data(self.control, first)
        return None

    def _on_session_data(self, event: DataReceived) -> str | None:
        if self.status != 200:  # the refusal's JSON body
            self.refusal += event.data[: 64 * 1024 - len(self.refusal)]
            if event.stream_ended:
                self._refused()
            return None
        for capsule in self.capsules.feed(event.data):
            if isinstance(capsule, codec.SessionClosed):
                if capsule.code == codec.CLOSE_OK:
                    raise TransportError("the server closed the session before done")
                raise TransportError(
                    f"session closed ({capsule.code}): {capsule.message}", retryable=False
                )
        if event.stream_ended:
            raise TransportError("the server ended the session before done")
        return None

    def _refused(self) -> None:
        try:
            message = str(loads(self.refusal)["error"]["message"])
        except (PushlabError, KeyError, TypeError):
            message = self.refusal[:120].decode("utf-8", "replace")
        raise TransportError(f"HTTP {self.status}: {message}", retryable=self.status >= 500)

    def _on_line(self, line: bytes, t_ns: int, t_perf: int) -> str | None:
        msg = codec.parse_server_line(line)
        if isinstance(msg, TokenRecord):
            self.received.add(msg.seq)
            self.client.deliver(self.rec, msg, t_ns, t_perf, self.client._sessions - 1)
        elif isinstance(msg, codec.Started):
            self.after = msg.after
            self.client.stream_known(self.rec, msg.stream)
        elif isinstance(msg, codec.Done):
            if self.delivery == "datagram":  # what never came: counted here, never resent
                missing = set(range(self.after + 1, msg.seq + 1)) - self.received
                self.client.datagrams_missing += len(missing)
            return msg.reason
        elif isinstance(msg, codec.Error):
            raise TransportError(f"server error: {msg.message}", retryable=False)
        return None


__all__ = ["Discovery", "WebTransportClient", "discover"]
