"""Browser clients: the demo page's own JavaScript clients, run in Chromium, recorded as
`StreamRecord`s like the Python clients (transport `browser-<key>`, client `chromium`).

`run_browser_fleet` opens Debian's Chromium through Playwright (never a downloaded browser),
loads the demo page from the target server (transports/web/page.py must be mounted there),
and calls `pushlab.runFleet` (static/fleet.js): `clients` copies of one client run at once
in that one page, each reporting every token it saw.

Timing. The page stamps times as `performance.timeOrigin + performance.now()` in ms, turned
into ns here: the same host's wall clock as the server's `time.time_ns()`, so `latency_ms`
is one clock, but Chrome coarsens `performance.now()` to 100 µs (with jitter) outside
cross-origin isolation, so latencies are good to about 0.1 ms, and a token's receive time
is when its JavaScript callback ran (message event, or a body read resolving), after the
browser's network process handed the bytes to the page. TTFT and e2e count from the
client's first request being issued (`Tally.sent()`), on the same clock; the perf columns
of the record hold these wall-clock ns too.

Bytes (`bytes_source` "browser-cdp"): counted from the DevTools protocol's Network domain,
per request, and checked against a counting TCP proxy (equal to the byte for HTTP):
- HTTP down: `loadingFinished.encodedDataLength`, the response as read from the socket:
  status line, headers, and the body with its chunked framing. For a request that did not
  finish (reset, aborted), the headers (`responseReceivedExtraInfo.headersText`) plus the
  sum of `dataReceived.encodedDataLength`.
- HTTP up: CDP gives no count for requests; the head is rebuilt from the headers Chrome
  actually sent (`requestWillBeSentExtraInfo`): request line, `Name: value` CRLF each, CRLF,
  plus the body's length.
- WebSocket: the handshake (request rebuilt, response `headersText`) plus every frame CDP
  reports, each with its RFC 6455 section 5.2 header (2 bytes, +2 or +8 for long payloads,
  +4 for the client's mask). CDP reports no control frames: the close handshake (8 bytes
  up, 4 down) and pings are missing, so WebSocket counts run a few bytes short.
- Never counted: TCP/IP headers, TLS records (none over http://), retransmissions; packets
  and retransmits are -1. A request that got no response (a refused reconnect) has no stream
  id and is not attributed to any stream.
- `connections`: distinct Chrome socket ids (`response.connectionId`) among a stream's
  HTTP requests, plus one per WebSocket; a keep-alive socket that served several streams'
  polls counts once for each. `connection_keys(requests)` are those ids (a WebSocket's is
  `ws:<requestId>`: CDP names no socket for it, and Chrome never pools WebSockets), so an
  experiment can count the distinct connections n streams used (`BrowserSession.requests`).
- `app_bytes_*`: the bodies (`dataReceived.dataLength`, request bodies) and WebSocket message
  payloads, without headers or framing: what the page's JavaScript could see.

HTTPS and HTTP/2. `BrowserSession(target, spki=...)` loads an https:// target whose
certificate is the lab's (netem/pki.py): Chromium trusts a leaf whose public key hash is in
`--ignore-certificate-errors-spki-list`, a switch it honours only with a user-data-dir of its
own. Playwright's `launch` always passes one (a fresh temporary profile): MEASURED with
Debian's Chromium and Playwright's launch, the flag alone loads the page through nginx's TLS
(without it: net::ERR_CERT_AUTHORITY_INVALID), no persistent context or NSS database needed.
ALPN then picks the protocol: `h2` through nginx and Caddy, `http/1.1` from aiohttp. CDP's
`response.protocol` ("h2", "http/1.1") is kept per request (`RequestBytes.protocol`) and
becomes `ConnStats.http_version` ("2", "1.1"); over h2 every request of the origin shares one
`connectionId`. A WebSocket has no `responseReceived`: its handshake answer says the
protocol (101 Switching Protocols is HTTP/1.1, RFC 6455 section 4.2.2; over HTTP/2 it would
be 200 to an extended CONNECT, RFC 8441 section 5), and neither nginx 1.22 nor Caddy 2.6
offers RFC 8441, so it gets an HTTP/1.1 connection of its own. Over h2 the byte counts change
meaning (Chromium's `SpdyStream::raw_received_bytes`): down is the stream's frames, 9-byte
frame headers and the HPACK-compressed HEADERS included, without the connection's own frames
(SETTINGS, WINDOW_UPDATE, PING). MEASURED through nginx, one SSE stream of 10 tokens: head
131 bytes (`responseReceived.encodedDataLength`: no headersText over h2), body 1213 wire vs
1105 app bytes, 108 = 12 DATA frames x 9 (RFC 9113 section 4.1), total 1344 = 131 + 1213.
Up is still rebuilt as text from the header list Chrome reports (over h2 the pseudo-headers
`:method`, `:path`, ... replace the request line), which HPACK would have compressed: an
overestimate. TLS records are never counted (`stack` "tls").

QUIC. Chromium runs with QUIC on (`BrowserSession(quic=False)` adds `--disable-quic`): the
page's WebTransport client needs it, and without an Alt-Svc or `--origin-to-force-quic-on`
no HTTP request goes over QUIC, so the TCP measurements are unchanged (tests/test_browser.py).
- HTTP/3 (`force_quic=["127.0.0.1:PORT"]`, Caddy with `CaddySpec(http3=True)`): CDP says
  `response.protocol` "h3"; the record's connection is `stack` "quic", `http_version` "3",
  and every request of the origin shares one `connectionId`. The lab leaf is trusted over
  QUIC by the same `--ignore-certificate-errors-spki-list` (MEASURED, Chromium 156, Caddy
  2.6.2: with it, every HTTP pane completes over h3; the origin may be the IP literal).
  Byte counts keep CDP's meaning: MEASURED through Caddy, one fetch-SSE stream of 10 tokens:
  head 163 bytes (the QPACK-compressed HEADERS frame), body 1564 wire vs 1532 app bytes (32:
  the DATA frames' type and length varints, RFC 9114 section 7.2.1), total 1727 = 163 +
  1564; no QUIC packet headers, no AEAD tags, no ACKs. Up is rebuilt as for HTTP/2.
- WebTransport: Chromium 156's Network domain reports `webTransportCreated`,
  `webTransportConnectionEstablished` and `webTransportClosed` (read from its
  /json/protocol): a URL and times, NO byte counts and no stream id. So a WebTransport
  record's connections are the page's own report, one per session (`session_stats`):
  `bytes_*` -1 and `source` "none" (unknown, never estimated), `app_bytes_*` what its
  JavaScript wrote and read (control lines up; token stream and datagram payloads down),
  `stack` "quic", `http_version` "3". `CdpLedger.webtransports()` lists the sessions CDP saw
  (established or not), e.g. to count the QUIC connections a tab opened: with
  `serverCertificateHashes` Chromium pools no session, so each is its own connection.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from clients.base import Target
from clients.net import ConnStats
from clients.recorder import StreamRecord, to_tables
from records.schema import Tables
from streams.errors import EnvironmentUnavailable
from streams.params import GenParams
from transports import registry
from transports.token import TokenRecord, loads

if TYPE_CHECKING:
    from playwright.async_api import Browser, CDPSession, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium phones home, which a closed network refuses.
# QUIC is not off: WebTransport needs it (with `--disable-quic` Chromium cannot open a session
# at all), and without an Alt-Svc or `--origin-to-force-quic-on` Chromium sends no HTTP request
# over QUIC, so the TCP transports are untouched. `BrowserSession(quic=False)` adds NO_QUIC.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
NO_QUIC = "--disable-quic"  # QUIC off: no WebTransport, no HTTP/3 (a TCP-only browser)
CLIENT_NAME = "chromium"
BYTES_SOURCE = "browser-cdp"
NO_BYTES_SOURCE = "none"  # WebTransport: CDP reports no byte counts (see the docstring)
SETTLE_S = 2.0  # at most this long for the last CDP events after the page's clients ended
HTTP_CONNECTIONS_PER_ORIGIN = 6  # Chrome's HTTP/1.1 socket limit per origin


def browser_keys() -> tuple[str, ...]:
    """The page's clients (static/clients.js) that are transports, in display order: each
    registry entry's `browser_clients` ("fake", the fake typewriter, is none of them)."""
    return tuple(name for t in registry.ordered() for name in t.browser_clients)


def first_streaming_clients() -> tuple[str, ...]:
    """The page's first client of an HTTP streaming transport and of an upgraded one: the
    first counts against Chrome's HTTP/1.1 connections per origin, the second does not."""
    picks: list[str] = []
    for connection in ("http", "upgraded"):
        picks += [
            t.browser_clients[0]
            for t in registry.ordered()
            if t.connection == connection
            and t.browser_clients
            and t.incremental
            and t.requests_per_answer == "one"
        ][:1]
    return tuple(picks)


def chromium_args(quic: bool = True, spki: str = "", force_quic: Sequence[str] = ()) -> list[str]:
    """Chromium's switches: CHROMIUM_ARGS, QUIC off unless `quic`, the lab certificate trusted
    by its key hash `spki`, and HTTP/3 from the first request to each `force_quic` origin.

    `--ignore-certificate-errors-spki-list` is honoured only with a user-data-dir of its own,
    which Playwright's launch always passes (a fresh temporary profile); it covers QUIC too:
    MEASURED (Chromium 156, Caddy 2.6 with h3), the page over HTTP/3 with the lab PKI's leaf
    trusted by this hash alone (tests/test_browser_h3.py)."""
    args = list(CHROMIUM_ARGS)
    if not quic:
        args.append(NO_QUIC)
    if spki:
        args.append(f"--ignore-certificate-errors-spki-list={spki}")
    if force_quic:
        args.append(f"--origin-to-force-quic-on={','.join(force_quic)}")
    return args


def _header_bytes(headers: Mapping[str, str]) -> int:
    return sum(len(f"{name}: {value}\r\n".encode()) for name, value in headers.items())


def ws_frame_bytes(payload_bytes: int, masked: bool) -> int:
    """A frame's size on the wire: RFC 6455 section 5.2 header, mask key, payload."""
    length_bytes = 0 if payload_bytes < 126 else 2 if payload_bytes < 65536 else 8
    return 2 + length_bytes + (4 if masked else 0) + payload_bytes


@dataclasses.dataclass
class RequestBytes:
    """What CDP told us about one request (an HTTP exchange or a WebSocket)."""

    request_id: str
    websocket: bool = False
    webtransport: bool = False  # a WebTransport session (CDP's transportId): no bytes, no stream
    established: bool = False  # a WebTransport session CDP saw established
    method: str = "GET"
    path: str = "/"
    stream: str = ""  # from X-Pushlab-Stream, the poll URL, or the WebSocket's started message
    connection: int = -1  # Chrome's socket id (HTTP only)
    protocol: str = ""  # CDP's response.protocol: "http/1.1", "h2"; a WebSocket's from its 101
    status: int = 0  # the response's HTTP status (a WebSocket's handshake answer); 0: none
    secure: bool = False  # https:// or wss://
    sent_headers: dict[str, str] | None = None
    body_up: int = 0
    head_down: int = 0
    wire_down: int = 0  # body bytes as read, chunk framing included (dataReceived.encoded...)
    app_down: int = 0  # decoded body bytes delivered to the page
    total_down: int | None = None  # loadingFinished.encodedDataLength
    frames_up: int = 0
    frames_down: int = 0
    payload_up: int = 0
    payload_down: int = 0
    finished: bool = False

    @property
    def http_version(self) -> str:
        """ConnStats' spelling of the protocol ("1.1", "2"); "" when no response said."""
        return _HTTP_VERSIONS.get(self.protocol, self.protocol)

    @property
    def connection_key(self) -> str:
        """The connection this request went over: Chrome's socket id, `ws:<id>` for a
        WebSocket (its own connection), `wt:<id>` for a WebTransport session (its own QUIC
        connection), `req:<id>` when CDP named none (no response)."""
        if self.websocket:
            return f"ws:{self.request_id}"
        if self.webtransport:  # with serverCertificateHashes Chromium never pools a session
            return f"wt:{self.request_id}"
        return str(self.connection) if self.connection >= 0 else f"req:{self.request_id}"

    @property
    def bytes_up(self) -> int:
        # HTTP/2 and HTTP/3 have no request line: the pseudo-headers (:method, :path) are in
        # the list (RFC 9113 section 8.3, RFC 9114 section 4.3)
        h2 = self.protocol in ("h2", "h3")
        line = 0 if h2 else len(f"{self.method} {self.path} HTTP/1.1\r\n".encode())
        head = line + _header_bytes(self.sent_headers) + 2 if self.sent_headers is not None else 0
        return head + self.body_up + self.frames_up

    @property
    def bytes_down(self) -> int:
        if self.total_down is not None:
            return self.total_down
        return self.head_down + self.wire_down + self.frames_down

    @property
    def app_bytes_up(self) -> int:
        return self.body_up + self.payload_up

    @property
    def app_bytes_down(self) -> int:
        return self.app_down + self.payload_down


_HTTP_VERSIONS = {"http/1.0": "1.0", "http/1.1": "1.1", "h2": "2", "h3": "3"}


def _polls(key: str) -> bool:
    """A polling transport's polls are `GET /{key}/{stream}` (docs/PROTOCOL.md)."""
    return registry.get(key).requests_per_answer == "many"


class CdpLedger:
    """Sans-I/O: CDP Network events in (`feed`), per-request byte counts out (`by_stream`)."""

    def __init__(self) -> None:
        self.requests: dict[str, RequestBytes] = {}

    def _get(self, request_id: str) -> RequestBytes:
        req = self.requests.get(request_id)
        if req is None:
            req = self.requests[request_id] = RequestBytes(request_id)
        return req

    def feed(self, method: str, params: Mapping[str, Any]) -> None:
        """One event, e.g. `("Network.dataReceived", {...})`; others are ignored."""
        handler = getattr(self, "_on_" + method.removeprefix("Network."), None)
        key = params.get("requestId", params.get("transportId"))  # WebTransport: transportId
        if handler is not None and key is not None:
            handler(self._get(str(key)), params)

    def webtransports(self) -> list[RequestBytes]:
        """The WebTransport sessions CDP reported, in order of creation."""
        return [req for req in self.requests.values() if req.webtransport]

    def _on_requestWillBeSent(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        request = p["request"]
        url = urlsplit(request["url"])
        req.method = request["method"]
        req.secure = url.scheme == "https"
        req.path = url.path + (f"?{url.query}" if url.query else "")
        req.body_up = len(request.get("postData", "").encode())
        parts = url.path.strip("/").split("/")
        polled = parts[0] in registry.TRANSPORTS and _polls(parts[0])
        if len(parts) == 2 and polled:
            req.stream = req.stream or parts[1]  # a poll names its stream in the path

    def _on_requestWillBeSentExtraInfo(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.sent_headers = dict(p["headers"])  # what went on the wire, Host and Cookie included

    def _on_responseReceivedExtraInfo(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        if "headersText" in p:
            req.head_down = len(p["headersText"].encode())

    def _on_responseReceived(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        response = p["response"]
        headers = {k.lower(): v for k, v in response.get("headers", {}).items()}
        req.stream = req.stream or headers.get("x-pushlab-stream", "")
        req.connection = int(response.get("connectionId", -1))
        req.protocol = str(response.get("protocol", ""))  # "h2", "http/1.1" (ALPN's answer)
        req.status = int(response.get("status", 0))
        req.head_down = req.head_down or int(response.get("encodedDataLength", 0))

    def _on_dataReceived(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.wire_down += int(p.get("encodedDataLength", 0))
        req.app_down += int(p.get("dataLength", 0))

    def _on_loadingFinished(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.total_down = int(p["encodedDataLength"])
        req.finished = True

    def _on_loadingFailed(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.finished = True

    def _on_webSocketCreated(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.websocket = True
        url = urlsplit(p["url"])
        req.secure = url.scheme == "wss"
        req.path = url.path + (f"?{url.query}" if url.query else "")

    def _on_webSocketWillSendHandshakeRequest(
        self, req: RequestBytes, p: Mapping[str, Any]
    ) -> None:
        req.sent_headers = dict(p["request"]["headers"])

    def _on_webSocketHandshakeResponseReceived(
        self, req: RequestBytes, p: Mapping[str, Any]
    ) -> None:
        response = p["response"]
        text = response.get("headersText")
        # RFC 6455 4.2.2: 101 Switching Protocols is HTTP/1.1's upgrade; RFC 8441 section 5:
        # over HTTP/2 the extended CONNECT is answered 200
        req.status = int(response.get("status", 0))
        req.protocol = {101: "http/1.1", 200: "h2"}.get(req.status, "")
        if text is None:  # rebuild: status line, headers, blank line
            status = f"HTTP/1.1 {response['status']} {response.get('statusText', '')}\r\n"
            req.head_down = len(status.encode()) + _header_bytes(response["headers"]) + 2
        else:
            req.head_down = len(text.encode())

    def _frame(self, p: Mapping[str, Any]) -> tuple[int, str]:
        frame = p["response"]
        data = frame.get("payloadData", "")
        if frame.get("opcode") == 2:  # binary payloads come base64-encoded
            return len(base64.b64decode(data)), ""
        return len(data.encode()), data

    def _on_webSocketFrameSent(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        size, _ = self._frame(p)
        req.payload_up += size
        req.frames_up += ws_frame_bytes(size, masked=True)  # RFC 6455 5.3: clients always mask

    def _on_webSocketFrameReceived(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        size, text = self._frame(p)
        req.payload_down += size
        req.frames_down += ws_frame_bytes(size, masked=False)
        if not req.stream and '"started"' in text:
            req.stream = str(loads(text).get("stream", ""))

    def _on_webSocketClosed(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.finished = True

    # WebTransport: Chromium 156's Network domain has three events, `webTransportCreated`
    # (transportId, url, timestamp, initiator), `webTransportConnectionEstablished` and
    # `webTransportClosed` (transportId, timestamp): no headers, no byte counts, no stream
    # data (read from its /json/protocol). A session is kept here so that a test can see
    # how many Chromium opened and whether each was established; its bytes stay unknown.
    def _on_webTransportCreated(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.webtransport = True
        url = urlsplit(p["url"])
        req.method, req.secure, req.protocol = "CONNECT", True, "h3"
        req.path = url.path  # without `?ticket=`: a credential is not a path

    def _on_webTransportConnectionEstablished(
        self, req: RequestBytes, p: Mapping[str, Any]
    ) -> None:
        req.established = True

    def _on_webTransportClosed(self, req: RequestBytes, p: Mapping[str, Any]) -> None:
        req.finished = True

    def by_stream(self) -> dict[str, list[RequestBytes]]:
        """Requests grouped by the stream they served; those without a stream are left out."""
        out: dict[str, list[RequestBytes]] = {}
        for req in self.requests.values():
            if req.stream:
                out.setdefault(req.stream, []).append(req)
        return out


def conn_stats(requests: Sequence[RequestBytes]) -> list[ConnStats]:
    """One `ConnStats` per connection a stream used, in order of first use."""
    groups: dict[str, list[RequestBytes]] = {}
    for req in requests:
        groups.setdefault(req.connection_key, []).append(req)
    return [
        ConnStats(
            index=i,
            bytes_up=sum(r.bytes_up for r in group),
            bytes_down=sum(r.bytes_down for r in group),
            app_bytes_up=sum(r.app_bytes_up for r in group),
            app_bytes_down=sum(r.app_bytes_down for r in group),
            packets_up=-1,
            packets_down=-1,
            retransmits=-1,
            source=BYTES_SOURCE,
            stack=_stack(group[0]),
            http_version=group[0].http_version,
        )
        for i, group in enumerate(groups.values())
    ]


def _stack(req: RequestBytes) -> str:
    """What carried a request: QUIC for HTTP/3 (TLS 1.3 inside QUIC), else TLS or TCP."""
    if req.protocol == "h3":
        return "quic"
    return "tls" if req.secure else "tcp"


def session_stats(sessions: Sequence[Mapping[str, Any]], first_index: int = 0) -> list[ConnStats]:
    """One `ConnStats` per WebTransport session a page client opened (its report's
    `sessions`: the bytes its JavaScript wrote and read in each). The wire bytes are unknown
    (-1, source "none"): CDP counts none for WebTransport, and nothing here invents them."""
    return [
        ConnStats(
            index=first_index + i,
            bytes_up=-1,
            bytes_down=-1,
            app_bytes_up=int(s["up"]),
            app_bytes_down=int(s["down"]),
            packets_up=-1,
            packets_down=-1,
            retransmits=-1,
            source=NO_BYTES_SOURCE,
            stack="quic",
            http_version="3",
        )
        for i, s in enumerate(sessions)
    ]


def connection_keys(requests: Sequence[RequestBytes]) -> list[str]:
    """The distinct connections `requests` went over (`RequestBytes.connection_key`), in
    order of first use."""
    return list(dict.fromkeys(req.connection_key for req in requests))


def _ns(ms: float) -> int:
    return round(ms * 1e6)


def to_record(
    key: str, params: GenParams, data: Mapping[str, Any], requests: Sequence[RequestBytes]
) -> StreamRecord:
    """A `StreamRecord` from one page client's report (`Tally.toJSON()`) and its CDP requests."""
    rec = StreamRecord(f"browser-{key}", CLIENT_NAME, params.tokens, params.envelope)
    stream = str(data["stream"])
    rec.stream_id = stream
    rec.t_start_perf_ns = _ns(data["sentMs"])
    for seq, emit, recv_ms, request_index, text in data["tokens"]:
        emit_ns = int(emit) if str(emit).isdigit() else round(float(emit))  # lossy without BigInt
        t_ns = _ns(recv_ms)
        rec.token(TokenRecord(stream, int(seq), emit_ns, str(text)), t_ns, t_ns, int(request_index))
    rec.t_end_perf_ns = _ns(data["endMs"]) if data["endMs"] else 0
    rec.end_reason = str(data["endReason"]) if not data["error"] else ""
    rec.error = str(data["error"])[:300]
    rec.reconnects = int(data["reconnects"])
    rec.http_requests = int(data["requests"])
    rec.recoveries_ms = [float(ms) for ms in data["recoveries"]]
    rec.conns = conn_stats(requests)
    # WebTransport sessions, which CDP attributes to no stream: from the page's own report
    rec.conns += session_stats(data.get("sessions", ()), len(rec.conns))
    return rec


def bytes_source(rec: StreamRecord) -> str:
    """The `bytes_source` of a record: its connections' common source ("browser-cdp";
    "none" for WebTransport, whose bytes CDP does not count), else "app"."""
    sources = {c.source for c in rec.conns}
    return sources.pop() if len(sources) == 1 else "app"


def browser_tables(records: Sequence[StreamRecord], keys: dict[str, object]) -> Tables:
    """`to_tables`, with `bytes_source` taken from the records' connections ("browser-cdp")."""
    tables = to_tables(records, keys)
    if records:
        tables.streams["bytes_source"] = [bytes_source(r) for r in records]
        tables.streams["bytes_source"] = tables.streams["bytes_source"].astype("string")
    return tables


def expected_s(params: GenParams, clients: int = 1) -> float:
    """How long the streams should take, counting queued waves of EventSource-like clients."""
    one = params.duration_s()
    return one * math.ceil(clients / HTTP_CONNECTIONS_PER_ORIGIN)


class BrowserSession:
    """One Chromium, one context, one page: the target's demo page, with CDP byte counting.

    `async with BrowserSession(target) as session: await session.run("sse", params, 3)`.
    For an https:// target with the lab's certificate, pass `spki=pki.spki_sha256()`.
    `quic=False`: Chromium with QUIC off (no WebTransport, no HTTP/3). `force_quic`: origins
    ("localhost:8443") whose HTTP requests go over HTTP/3 from the first one, without waiting
    for an Alt-Svc (`--origin-to-force-quic-on`).
    After `run`, `requests` holds the CDP requests of each stream it ran (by stream id).
    """

    def __init__(
        self,
        target: Target | str,
        *,
        headless: bool = True,
        spki: str = "",
        quic: bool = True,
        force_quic: Sequence[str] = (),
    ) -> None:
        self.target = target if isinstance(target, Target) else Target.parse(target)
        self.headless = headless
        self.spki = spki  # base64 SHA-256 of the lab certificate's key (LabPKI.spki_sha256())
        if force_quic and not quic:
            raise ValueError("force_quic needs quic=True")
        self.quic = quic
        self.force_quic = tuple(force_quic)
        self.ledger = CdpLedger()
        self.requests: dict[str, list[RequestBytes]] = {}  # the last run's, by stream id
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self.page: Page | None = None
        self._cdp: CDPSession | None = None
        self.console_errors: list[str] = []
        self.last_cut: dict[str, Any] | None = None  # the server's answer to the last cut
        self.reports: list[dict[str, Any]] = []  # the last run's page reports (Tally.toJSON())

    async def __aenter__(self) -> BrowserSession:
        from playwright.async_api import async_playwright

        if not os.access(CHROMIUM, os.X_OK):
            raise EnvironmentUnavailable(
                f"Chromium is not installed at {CHROMIUM}: run `make system` (Debian's chromium)"
            )
        self._pw = await async_playwright().start()
        try:
            args = chromium_args(self.quic, self.spki, self.force_quic)
            self._browser = await self._pw.chromium.launch(
                executable_path=CHROMIUM, args=args, headless=self.headless
            )
            context = await self._browser.new_context()
            self.page = page = await context.new_page()
            page.on("console", self._on_console)
            self._cdp = await context.new_cdp_session(page)
            await self._cdp.send("Network.enable")
            for name in _CDP_EVENTS:
                self._cdp.on(name, lambda params, name=name: self.ledger.feed(name, params))
            response = await page.goto(f"{self.target.url}/", timeout=15_000)
            if response is None or response.status != 200:
                status = response.status if response is not None else "no response"
                raise RuntimeError(
                    f"{self.target.url}/ does not serve the demo page ({status}): mount "
                    "transports.web.page.add_routes(app) in server.make_app"
                )
            await page.wait_for_function("window.pushlab !== undefined", timeout=10_000)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the browser and stop Playwright's driver (idempotent)."""
        browser, pw = self._browser, self._pw
        self._browser = self._pw = None
        try:
            if browser is not None:
                await browser.close()
        finally:
            if pw is not None:
                await pw.stop()

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    async def run(
        self,
        key: str,
        params: GenParams,
        clients: int = 1,
        *,
        timeout_s: float | None = None,
        cut_after_tokens: int = 0,
        client_options: Mapping[str, object] | None = None,
    ) -> list[StreamRecord]:
        """Run the page's `key` client `clients` times at once; one record per client.

        `cut_after_tokens` > 0: once a client holds that many tokens, the page asks the
        server to reset its connections (`POST /debug/cut`); `self.last_cut` is the answer.
        `client_options`: the page client's own options (webtransport: `{"delivery":
        "datagram"}`). `self.reports` keeps the clients' own reports (`Tally.toJSON()`), e.g.
        `lost`: the tokens a WebTransport datagram client counted missing from `done`'s seq."""
        if key not in browser_keys():
            raise ValueError(f"unknown browser client {key!r}; choose from {browser_keys()}")
        assert self.page is not None, "use the session in `async with`"
        timeout_s = timeout_s or expected_s(params, clients) + 10.0
        self.ledger = ledger = CdpLedger()
        # the page aborts its own clients after timeout_s; the outer timeout is a backstop
        async with asyncio.timeout(timeout_s + 10.0):
            result = await self.page.evaluate(
                "([key, params, n, ms, cut]) => pushlab.runFleet(key, params, n, ms, cut)",
                [
                    key,
                    params.as_dict(),
                    clients,
                    int(timeout_s * 1e3),
                    {"cutAfterTokens": cut_after_tokens, "options": client_options},
                ],
            )
        reports, self.last_cut = result["records"], result["cut"]
        self.reports = reports
        streams = {str(r["stream"]) for r in reports if r["stream"]}
        await self._settle(ledger, streams)
        self.requests = by_stream = ledger.by_stream()
        records = [to_record(key, params, r, by_stream.get(str(r["stream"]), [])) for r in reports]
        # streams sharing an HTTP/2 or HTTP/3 connection (all of a tab's, on one): the record's
        # `streams_per_conn` says, as the Python fleet records it for a shared session. An
        # HTTP/1.1 connection reused by a later stream carried them one after the other
        sharing: dict[str, set[str]] = {}
        for stream, requests in by_stream.items():
            for conn in connection_keys([r for r in requests if r.protocol in ("h2", "h3")]):
                sharing.setdefault(conn, set()).add(stream)
        for rec in records:
            conns = connection_keys(by_stream.get(rec.stream_id, []))
            rec.streams_per_conn = max([1, *(len(sharing.get(c, ())) for c in conns)])
        return records

    async def _settle(self, ledger: CdpLedger, streams: set[str]) -> None:
        """Wait (up to SETTLE_S) until CDP has reported the end of every request of `streams`."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            pending = [r for s, reqs in ledger.by_stream().items() if s in streams for r in reqs]
            if all(r.finished for r in pending):
                return
            await asyncio.sleep(0.02)


_CDP_EVENTS = tuple(
    "Network." + name
    for name in (
        "requestWillBeSent",
        "requestWillBeSentExtraInfo",
        "responseReceived",
        "responseReceivedExtraInfo",
        "dataReceived",
        "loadingFinished",
        "loadingFailed",
        "webSocketCreated",
        "webSocketWillSendHandshakeRequest",
        "webSocketHandshakeResponseReceived",
        "webSocketFrameSent",
        "webSocketFrameReceived",
        "webSocketClosed",
        "webTransportCreated",
        "webTransportConnectionEstablished",
        "webTransportClosed",
    )
)


async def run_browser_fleet(
    transport: str,
    target: Target | str,
    params: GenParams,
    clients: int = 1,
    *,
    headless: bool = True,
) -> list[StreamRecord]:
    """Open Chromium on the target's demo page and run `clients` copies of the page's
    `transport` client at once in it (keys: `browser_keys()`); one record each."""
    async with BrowserSession(target, headless=headless) as session:
        return await session.run(transport, params, clients)
