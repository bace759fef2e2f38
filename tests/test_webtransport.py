"""WebTransport: the sans-I/O codec, the certificate, and the real endpoint (aioquic on
loopback UDP) end to end with the lab's client and with raw sessions for the refusals."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from aioquic.buffer import Buffer
from aioquic.h3.events import (
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from clients.base import ClientOptions, ResumePoint
from clients.net import Target
from clients.quic import QuicConn, QuicSettings
from clients.recorder import StreamRecord, stream_row
from clients.webtransport import WebTransportClient
from netem.pki import make_webtransport_certificate
from streams.errors import ParamError, ProtocolError, TransportError
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT, Served, ServeFactory, wait_until_async
from transports import webtransport as codec
from transports.token import TokenRecord
from transports.web.common import COUNTERS, WRITE_CHUNK_BYTES
from transports.web.guard import AUTHORITY
from transports.web.webtransport import (
    ENDPOINT,
    MAX_H3_BUFFER,
    MAX_INBOX_MESSAGES,
    MAX_SESSIONS_PER_CONNECTION,
    RECEIVE_WINDOW,
)

FAST = GenParams(tokens=12, rate=400.0, ttft_ms=5.0, seed=7)

# --- codec vectors -----------------------------------------------------------------------

CLOSE_1008_BAD = b"\x68\x43\x07\x00\x00\x03\xf0bad"  # type 0x2843 (2-byte varint), len 7


def test_close_capsule_encodes_to_the_rfc_9297_bytes_and_back() -> None:
    assert codec.encode_close(1008, "bad") == CLOSE_1008_BAD
    [closed] = codec.CapsuleParser().feed(CLOSE_1008_BAD)
    assert closed == codec.SessionClosed(1008, "bad")
    assert codec.encode_close(0, "") == b"\x68\x43\x04\x00\x00\x00\x00"


def test_close_message_is_cut_to_1024_bytes_on_a_character_boundary() -> None:
    capsule = codec.encode_close(1011, "é" * 600)  # 1200 bytes of UTF-8
    [closed] = codec.CapsuleParser().feed(capsule)
    assert isinstance(closed, codec.SessionClosed)
    assert closed.message == "é" * 512 and len(closed.message.encode()) == 1024


def test_capsules_parse_whole_byte_by_byte_and_split_anywhere() -> None:
    unknown = codec.encode_capsule(0x29, b"ignored")  # an unknown type: dropped (RFC 9297)
    drain = codec.encode_capsule(codec.DRAIN_WEBTRANSPORT_SESSION, b"")
    data = unknown + drain + CLOSE_1008_BAD
    expected = [codec.Capsule(codec.DRAIN_WEBTRANSPORT_SESSION, b""),
                codec.SessionClosed(1008, "bad")]  # fmt: skip
    assert codec.CapsuleParser().feed(data) == expected
    parser = codec.CapsuleParser()
    assert [c for i in range(len(data)) for c in parser.feed(data[i : i + 1])] == expected
    parser.end()  # nothing left over
    for cut in range(len(data) + 1):
        parser = codec.CapsuleParser()
        assert parser.feed(data[:cut]) + parser.feed(data[cut:]) == expected


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (codec.encode_capsule(codec.CLOSE_WEBTRANSPORT_SESSION, b"\x00\x01"), "shorter"),
        (codec.encode_capsule(codec.CLOSE_WEBTRANSPORT_SESSION, b"\0\0\0\0\xff\xfe"), "UTF-8"),
        (codec.encode_capsule(codec.CLOSE_WEBTRANSPORT_SESSION, b"\0" * 4 + b"x" * 1025), "1024"),
        (b"\x68\x43\x80\x10\x00\x01", "announced"),  # 1 MiB announced
    ],
)
def test_malformed_capsules_are_protocol_errors_saying_why(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        codec.CapsuleParser().feed(data)


def test_a_capsule_cut_short_by_fin_is_a_protocol_error() -> None:
    parser = codec.CapsuleParser()
    assert parser.feed(CLOSE_1008_BAD[:-1]) == []
    with pytest.raises(ProtocolError, match="cut short"):
        parser.end()


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({}, True),  # aioquic's own client names no draft
        ({"sec-webtransport-http3-draft02": "1"}, True),  # Chromium
        ({"sec-webtransport-http3-draft": "draft02"}, True),
        ({"sec-webtransport-http3-draft": "draft07, draft02"}, True),
        ({"sec-webtransport-http3-draft05": "1"}, False),
        ({"sec-webtransport-http3-draft": "draft13"}, False),
    ],
)
def test_check_draft_accepts_draft02_or_none_and_names_what_it_refuses(
    headers: dict[str, str], ok: bool
) -> None:
    if ok:
        assert codec.check_draft(headers) == codec.DRAFT
    else:
        with pytest.raises(ParamError, match="unsupported WebTransport draft draft"):
            codec.check_draft(headers)


def test_line_buffer_splits_lines_and_bounds_a_line_without_its_end() -> None:
    lines = codec.LineBuffer(max_bytes=8)
    assert lines.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert lines.feed(b":2}\n\n") == [b'{"b":2}']
    with pytest.raises(ProtocolError, match="over 8 bytes"):
        lines.feed(b"x" * 9)
    with pytest.raises(ProtocolError, match="over 8 bytes"):
        codec.LineBuffer(max_bytes=8).feed(b"y" * 9 + b"\n")


def test_client_messages_round_trip_and_bad_ones_name_the_parameter() -> None:
    start = codec.parse_client_message(codec.encode_start(FAST, "datagram").rstrip(b"\n"))
    assert start == codec.Start(FAST, "datagram")
    resume = codec.parse_client_message(codec.encode_resume("s1", 4).rstrip(b"\n"))
    assert resume == codec.Resume("s1", 4, "stream")
    assert isinstance(codec.parse_client_message(codec.encode_cancel()), codec.Cancel)
    with pytest.raises(ParamError) as bad:
        codec.parse_client_message(b'{"type":"start","delivery":"pigeon"}')
    assert bad.value.param == "delivery"


def test_the_codec_is_pure() -> None:
    code = "import sys, transports.webtransport; sys.exit('aiohttp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the certificate -----------------------------------------------------------------------


def check_pinnable(cert: x509.Certificate, sha256_hex: str, sha256_b64: str) -> None:
    """What Chromium's serverCertificateHashes requires, and the hashes that pin it."""
    assert cert.version is x509.Version.v3
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=14)
    assert (
        cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC) < cert.not_valid_after_utc
    )
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    assert digest.hex() == sha256_hex and base64.b64encode(digest).decode() == sha256_b64


def test_webtransport_certificate_is_what_a_browser_pins() -> None:
    made = make_webtransport_certificate(valid_days=10)
    check_pinnable(x509.load_pem_x509_certificate(made.cert_pem), made.sha256_hex, made.sha256_b64)
    with pytest.raises(ValueError, match="14 days"):
        make_webtransport_certificate(valid_days=15)


# --- end to end ------------------------------------------------------------------------------


async def run(served: Served, params: GenParams = FAST, client: WebTransportClient | None = None,
              target: Target | None = None) -> tuple[StreamRecord, WebTransportClient]:  # fmt: skip
    client = client or WebTransportClient()
    rec = StreamRecord("webtransport", "python", params.tokens)
    async with asyncio.timeout(10 * UNIT):
        await client.run(target or served.target, params, rec)
    return rec, client


async def discovery(served: Served, headers: dict[str, str] | None = None) -> dict[str, object]:
    url = f"{served.url}/webtransport"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200
        return dict(await resp.json())


@dataclasses.dataclass
class Raw:
    """A session opened by hand, its H3 events queued."""

    conn: QuicConn
    id: int
    events: asyncio.Queue[H3Event]

    async def response(self) -> tuple[int, bytes]:
        """(status, body) of a refused or accepted request (the body up to FIN, if any)."""
        status, body = 0, b""
        async with asyncio.timeout(5 * UNIT):
            while True:
                event = await self.events.get()
                if isinstance(event, HeadersReceived) and event.stream_id == self.id:
                    status = int(dict(event.headers)[b":status"])
                    if status == 200 or event.stream_ended:
                        return status, body
                elif isinstance(event, DataReceived) and event.stream_id == self.id:
                    body += event.data
                    if event.stream_ended:
                        return status, body

    async def capsules(self) -> list[codec.SessionClosed | codec.Capsule]:
        """The capsules the server sends on the session stream until its FIN."""
        parser, out = codec.CapsuleParser(), []
        async with asyncio.timeout(5 * UNIT):
            while True:
                event = await self.events.get()
                if isinstance(event, DataReceived) and event.stream_id == self.id:
                    out += parser.feed(event.data)
                    if event.stream_ended:
                        return out


@pytest.fixture
async def raw_sessions() -> AsyncIterator[list[QuicConn]]:
    conns: list[QuicConn] = []
    yield conns
    for conn in conns:
        await conn.aclose()


async def connect(info: dict[str, object], conns: list[QuicConn], source: str = "") -> QuicConn:
    """A QUIC connection to the endpoint `info` (discovery's answer) describes, from
    `source` (a local address; "" for any)."""
    settings = QuicSettings(server_name="localhost", cert_sha256=str(info["sha256"]),
                            webtransport=True, source_host=source)  # fmt: skip
    conn = await QuicConn.open(Target("127.0.0.1", int(str(info["port"]))), settings)
    conns.append(conn)
    return conn


async def open_raw(served: Served, conns: list[QuicConn], headers: list[tuple[bytes, bytes]],
                   path: bytes = b"/wt", method: bytes = b"CONNECT") -> Raw:  # fmt: skip
    """A request on a new connection."""
    info = await discovery(served, dict(served.target.authorization()))
    return request(await connect(info, conns), headers, path, method)


def request(conn: QuicConn, headers: Sequence[tuple[bytes, bytes]] = (),
            path: bytes = b"/wt", method: bytes = b"CONNECT") -> Raw:  # fmt: skip
    """A request on `conn`: its events are this Raw's from now on (an earlier Raw on the
    same connection hears nothing more)."""
    events: asyncio.Queue[H3Event] = asyncio.Queue()
    conn.on_event = events.put_nowait
    sid = conn.quic.get_next_available_stream_id()
    authority = f"127.0.0.1:{conn.target.port}".encode()
    pseudo = [(b":method", method), (b":scheme", b"https"), (b":authority", authority),
              (b":path", path)]  # fmt: skip
    if method == b"CONNECT":
        pseudo.insert(1, (b":protocol", b"webtransport"))
    conn.h3.send_headers(sid, pseudo + list(headers), end_stream=method != b"CONNECT")
    conn.transmit()
    return Raw(conn, sid, events)


async def test_stream_delivery_is_complete_and_counted_on_udp(served: Served) -> None:
    rec, _ = await run(served)
    row = stream_row(rec)
    assert rec.error == "" and rec.end_reason == "done"
    assert list(rec.seq) == list(range(1, 13)) and rec.text() == "".join(texts(FAST))
    assert (row["stack"], row["bytes_source"], row["http_version"]) == ("quic", "udp", "3")
    assert row["http_requests"] == 1 and row["connections"] == 1
    assert rec.conns[0].alpn == "h3" and rec.conns[0].cc == "reno"


async def test_datagram_delivery_on_loopback_loses_nothing_and_says_so(served: Served) -> None:
    client = WebTransportClient(ClientOptions(wt_delivery="datagram"))
    rec, _ = await run(served, client=client)
    row = stream_row(rec)
    assert rec.error == "" and rec.end_reason == "done"
    assert sorted(rec.seq) == list(range(1, 13)) and rec.text() == "".join(texts(FAST))
    assert row["lost"] == 0 and client.datagrams_missing == 0


async def test_datagrams_in_bursts_all_arrive_before_done(served: Served) -> None:
    """Hundreds of datagrams queued at once: `done` must not overtake them (it did)."""
    params = GenParams(tokens=1500, rate=20_000.0, ttft_ms=0.0, seed=3)
    client = WebTransportClient(ClientOptions(wt_delivery="datagram"))
    rec, _ = await run(served, params, client)
    assert rec.end_reason == "done" and client.datagrams_missing == 0
    assert stream_row(rec)["lost"] == 0


async def test_a_never_arriving_datagram_shows_as_lost(served: Served) -> None:
    class Dropping(WebTransportClient):
        def deliver(self, rec: StreamRecord, tok: TokenRecord, t_ns: int, t_perf: int,
                    request: int) -> None:  # fmt: skip
            if tok.seq != 5:  # as if datagram 5 had been lost on the way
                super().deliver(rec, tok, t_ns, t_perf, request)

    client = Dropping(ClientOptions(wt_delivery="datagram"))
    rec, _ = await run(served, client=client)
    assert rec.end_reason == "done" and stream_row(rec)["lost"] == 1


async def test_cancel_message_stops_generation(served: Served) -> None:
    params = GenParams(tokens=1000, rate=200.0, ttft_ms=0.0, seed=1)
    client = WebTransportClient(ClientOptions(abandon_after=3, abandon="cancel"))
    rec, _ = await run(served, params, client)
    assert rec.end_reason == "abandoned" and len(rec.texts) == 3
    url = f"{served.url}/streams/{rec.stream_id}"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert (await resp.json())["state"] == "cancelled"


async def test_a_killed_connection_resumes_on_a_new_session_without_loss_or_dup(
    served: Served,
) -> None:
    class Killing(WebTransportClient):
        def deliver(self, rec: StreamRecord, tok: TokenRecord, t_ns: int, t_perf: int,
                    request: int) -> None:  # fmt: skip
            super().deliver(rec, tok, t_ns, t_perf, request)
            if len(rec.texts) == 8 and self.current is not None and not rec.reconnects:
                transport = self.current._transport
                assert transport is not None
                transport.abort()  # the UDP socket gone at once: no CONNECTION_CLOSE sent

    params = GenParams(tokens=30, rate=200.0, ttft_ms=0.0, seed=4)
    rec, _ = await run(served, params, Killing(ClientOptions(backoff_ms=1.0)))
    row = stream_row(rec)
    assert rec.error == "" and rec.end_reason == "done" and rec.reconnects == 1
    assert list(rec.seq) == list(range(1, 31)) and rec.text() == "".join(texts(params))
    assert (row["lost"], row["duplicated"], row["connections"], row["http_requests"]) == (
        0,
        0,
        2,
        2,
    )


async def test_unknown_draft_gets_400_json_and_the_server_serves_others(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    raw = await open_raw(served, raw_sessions, [(b"sec-webtransport-http3-draft05", b"1")])
    status, body = await raw.response()
    assert status == 400
    error = codec.parse_server_line(b'{"type":"error",' + body[1:])
    assert isinstance(error, codec.Error) and "draft05" in error.message
    assert error.type == "invalid_request_error"
    other = await open_raw(served, raw_sessions, [(b"sec-webtransport-http3-draft02", b"1")])
    assert (await other.response())[0] == 200
    rec, _ = await run(served)
    assert rec.error == "" and len(rec.texts) == 12


async def test_origin_must_be_the_page_this_server_served(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    page = f"http://127.0.0.1:{served.target.port}".encode()  # the HTTP port, not the UDP one
    raw = await open_raw(served, raw_sessions, [(b"origin", page)])
    assert (await raw.response())[0] == 200
    raw = await open_raw(served, raw_sessions, [(b"origin", b"https://evil.example")])
    status, body = await raw.response()
    assert status == 403 and b'"param": "Origin"' in body


async def test_other_requests_on_the_endpoint_get_404(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    for method, path in ((b"GET", b"/wt"), (b"CONNECT", b"/elsewhere")):
        raw = await open_raw(served, raw_sessions, [], path=path, method=method)
        status, body = await raw.response()
        assert status == 404 and b"not_found_error" in body


async def test_malformed_capsule_closes_the_session_1008_with_the_reason(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    raw = await open_raw(served, raw_sessions, [])
    assert (await raw.response())[0] == 200
    bad = codec.encode_capsule(codec.CLOSE_WEBTRANSPORT_SESSION, b"\x00\x01")
    raw.conn.h3.send_data(raw.id, bad, end_stream=False)
    raw.conn.transmit()
    [closed] = await raw.capsules()
    assert isinstance(closed, codec.SessionClosed) and closed.code == 1008
    assert "shorter than its 4-byte code" in closed.message
    rec, _ = await run(served)
    assert rec.error == "" and len(rec.texts) == 12


async def test_bad_control_line_gets_an_error_line_then_close_1008(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    raw = await open_raw(served, raw_sessions, [])
    assert (await raw.response())[0] == 200
    control = raw.conn.h3.create_webtransport_stream(raw.id, is_unidirectional=False)
    raw.conn.quic.send_stream_data(control, b'{"type":"start","rate":-5}\n')
    raw.conn.transmit()
    [closed] = await raw.capsules()
    assert isinstance(closed, codec.SessionClosed) and closed.code == 1008
    assert "rate" in closed.message
    assert served.app[COUNTERS].by_transport["webtransport"]["errors"] == 1


async def test_a_wrongly_pinned_certificate_is_not_retried(served: Served) -> None:
    client = WebTransportClient()
    client.cert_sha256 = "00" * 32
    rec, _ = await run(served, client=client)
    assert "pinned" in rec.error and rec.reconnects == 0 and not rec.texts


async def test_discovery_describes_the_served_certificate(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    info = await discovery(served)
    assert info["url"] == f"https://127.0.0.1:{info['port']}/wt" and info["draft"] == "draft02"
    hashes = info["certificate_hashes"]
    assert isinstance(hashes, list) and len(hashes) == 1
    pin: dict[str, str] = hashes[0]
    assert pin["algorithm"] == "sha-256"
    raw = await open_raw(served, raw_sessions, [])  # pinned by info["sha256"]: it matched
    served_cert = raw.conn.quic.tls._peer_certificate
    assert served_cert is not None
    check_pinnable(served_cert, str(info["sha256"]), pin["value"])
    not_after = datetime.datetime.fromisoformat(str(info["not_after"]))
    assert not_after == served_cert.not_valid_after_utc


async def test_stats_and_counters_describe_the_endpoint(served: Served) -> None:
    await run(served)
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/stats") as resp:
        stats = await resp.json()
    wt = stats["webtransport"]
    assert wt["cc"] == "reno" and wt["sessions_total"] == 1 and wt["rcvbuf"] > 0
    # --max-connections 0: the fixed QUIC default, not the descriptor-derived TCP cap
    assert (wt["max_connections"], wt["max_per_address"]) == (4096, 2048)
    assert wt["refused_global"] == wt["refused_client"] == wt["sessions_refused"] == 0
    counters = stats["transports"]["webtransport"]
    assert counters["requests"] == 1 and counters["tokens_sent"] == 12
    assert counters["bytes_sent"] > 0


async def test_wt_port_minus_one_runs_no_endpoint(serve: ServeFactory) -> None:
    served = await serve(wt_port=-1)
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/webtransport") as resp:
        assert resp.status == 404


# --- --auth ------------------------------------------------------------------------------------


async def test_auth_refuses_no_credential_accepts_bearer_and_guards_streams(
    serve: ServeFactory, raw_sessions: list[QuicConn]
) -> None:
    served = await serve(auth=True)
    authority = served.app[AUTHORITY]
    alice = dataclasses.replace(served.target, token=authority.mint("alice"))
    bob = dataclasses.replace(served.target, token=authority.mint("bob"))
    as_alice = Served(alice, served.app)
    raw = await open_raw(as_alice, raw_sessions, [])  # discovery as alice, the session as nobody
    status, body = await raw.response()
    assert status == 401 and b"authentication_error" in body
    rec, _ = await run(served, target=alice)
    assert rec.error == "" and len(rec.texts) == 12
    thief = WebTransportClient()
    thief.resume = ResumePoint(rec.stream_id, 0)
    stolen, _ = await run(served, client=thief, target=bob)
    assert "1008" in stolen.error and not stolen.texts and stolen.reconnects == 0


async def test_a_reader_that_stops_acknowledging_is_bounded_then_dropped(
    serve: ServeFactory, raw_sessions: list[QuicConn]
) -> None:
    """The client's socket vanishes mid-stream (no ACK comes back): the server holds at most
    about one chunk unacknowledged, and the write timeout closes the QUIC connection."""
    served = await serve(write_timeout_s=0.3 * UNIT)
    endpoint = served.app[ENDPOINT]
    raw = await open_raw(served, raw_sessions, [])
    assert (await raw.response())[0] == 200
    control = raw.conn.h3.create_webtransport_stream(raw.id, is_unidirectional=False)
    start = GenParams(tokens=100_000, rate=20_000.0, ttft_ms=0.0, text="mixed", seed=2)
    raw.conn.quic.send_stream_data(control, codec.encode_start(start))
    raw.conn.transmit()
    await wait_until_async(lambda: raw.events.qsize() > 3, what="tokens arriving")
    [protocol] = endpoint.protocols
    transport = raw.conn._transport
    assert transport is not None
    transport.abort()
    held: list[int] = []

    def unsent() -> bool:
        streams = protocol._quic._streams.values()
        held.append(sum(len(s.sender._buffer) for s in streams))
        return endpoint.connections == 0 and endpoint.sessions == 0

    await wait_until_async(unsent, what="the stalled connection dropped")
    counters = served.app[COUNTERS].by_transport["webtransport"]
    assert counters["write_timeouts"] == 1 and counters["open"] == 0
    # one chunk (64 KiB) plus at most one batch beyond it, whatever the backlog
    assert 0 < max(held) < 2 * WRITE_CHUNK_BYTES, max(held)


# --- what one client may hold ----------------------------------------------------------------


async def stream_tokens(raw: Raw, params: GenParams) -> int:
    """Start `params` on `raw`'s accepted session; the tokens read until `done`."""
    control = raw.conn.h3.create_webtransport_stream(raw.id, is_unidirectional=False)
    raw.conn.quic.send_stream_data(control, codec.encode_start(params))
    raw.conn.transmit()
    lines, tokens = codec.LineBuffer(), 0
    async with asyncio.timeout(10 * UNIT):
        while True:
            event = await raw.events.get()
            if isinstance(event, WebTransportStreamDataReceived) and event.stream_id != control:
                for line in lines.feed(event.data):
                    msg = codec.parse_server_line(line)
                    tokens += isinstance(msg, TokenRecord)
                    if isinstance(msg, codec.Done):
                        return tokens


async def test_beyond_the_connection_cap_a_new_connection_is_refused_and_others_stream_on(
    serve: ServeFactory, raw_sessions: list[QuicConn]
) -> None:
    served = await serve(max_connections=1, client_share=1.0)
    endpoint = served.app[ENDPOINT]
    info = await discovery(served)
    first = request(await connect(info, raw_sessions))
    assert (await first.response())[0] == 200
    # refused at its first Initial with CONNECTION_CLOSE(CONNECTION_REFUSED): no connection
    # is made, so none is counted
    with pytest.raises(TransportError, match="maximum of 1 connections"):
        await connect(info, raw_sessions)
    stats = endpoint.statistics()
    assert (stats["refused_global"], stats["refused_client"], stats["connections"]) == (1, 0, 1)
    params = GenParams(tokens=30, rate=1000.0, ttft_ms=0.0, seed=5)
    assert await stream_tokens(first, params) == 30  # the admitted session is served whole


async def test_one_address_takes_only_its_share_while_another_connects(
    serve: ServeFactory, raw_sessions: list[QuicConn]
) -> None:
    try:  # the kernel routes all of 127.0.0.0/8 to lo; a sandbox may still refuse the bind
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.2", 0))
    except OSError as exc:
        pytest.skip(f"cannot bind 127.0.0.2 as a second client address: {exc}")
    served = await serve(max_connections=4, client_share=0.5)  # 2 connections an address
    endpoint = served.app[ENDPOINT]
    info = await discovery(served)
    held = [await connect(info, raw_sessions, "127.0.0.1") for _ in range(2)]
    with pytest.raises(TransportError, match="share of 2 connections"):
        await connect(info, raw_sessions, "127.0.0.1")
    other = request(await connect(info, raw_sessions, "127.0.0.2"))
    assert (await other.response())[0] == 200
    assert endpoint.by_address == {"127.0.0.1": 2, "127.0.0.2": 1}
    assert endpoint.refused_client == 1 and endpoint.refused_global == 0
    await held[0].aclose()  # a connection that leaves gives its address's slot back
    await wait_until_async(lambda: endpoint.by_address.get("127.0.0.1") == 1,
                           what="the closed connection released")  # fmt: skip
    again = request(await connect(info, raw_sessions, "127.0.0.1"))
    assert (await again.response())[0] == 200


async def test_sessions_beyond_the_per_connection_cap_get_429_saying_why(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    conn = await connect(await discovery(served), raw_sessions)
    for _ in range(MAX_SESSIONS_PER_CONNECTION):
        assert (await request(conn).response())[0] == 200
    status, body = await request(conn).response()
    assert status == 429 and b"rate_limit_error" in body
    assert f"maximum of {MAX_SESSIONS_PER_CONNECTION} sessions".encode() in body
    assert served.app[ENDPOINT].sessions_refused == 1
    rec, _ = await run(served)  # a new connection is served
    assert rec.error == "" and len(rec.texts) == 12


async def test_a_second_client_stream_in_a_session_closes_it_1008(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    raw = await open_raw(served, raw_sessions, [])
    assert (await raw.response())[0] == 200
    control = raw.conn.h3.create_webtransport_stream(raw.id, is_unidirectional=False)
    raw.conn.quic.send_stream_data(control, b"")
    extra = raw.conn.h3.create_webtransport_stream(raw.id, is_unidirectional=True)
    raw.conn.quic.send_stream_data(extra, b"x" * 100)
    raw.conn.transmit()
    [closed] = await raw.capsules()
    assert isinstance(closed, codec.SessionClosed) and closed.code == 1008
    assert "besides the control stream" in closed.message


async def test_control_messages_beyond_the_inbox_bound_close_the_session_1008(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    raw = await open_raw(served, raw_sessions, [])
    assert (await raw.response())[0] == 200
    control = raw.conn.h3.create_webtransport_stream(raw.id, is_unidirectional=False)
    start = GenParams(tokens=10_000, rate=100.0, ttft_ms=0.0, seed=6)
    raw.conn.quic.send_stream_data(control, codec.encode_start(start))
    raw.conn.transmit()
    await wait_until_async(lambda: raw.events.qsize() > 1, what="the stream started")
    # one write, so every line is queued before the session's task reads one
    flood = codec.encode_cancel() * (MAX_INBOX_MESSAGES + 4)
    raw.conn.quic.send_stream_data(control, flood)
    raw.conn.transmit()
    closed = [c for c in await raw.capsules() if isinstance(c, codec.SessionClosed)]
    assert [c.code for c in closed] == [1008]
    assert f"over {MAX_INBOX_MESSAGES} control messages" in closed[0].message


async def test_a_stream_with_a_gap_holds_at_most_the_receive_window(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    """A stream whose first bytes never come: what follows waits in the server's reorder
    buffer. aioquic alone doubles the stream's window whenever the highest offset passes half
    of it, delivered or not, so that buffer could grow without bound."""
    raw = await open_raw(served, raw_sessions, [])
    assert (await raw.response())[0] == 200
    [protocol] = served.app[ENDPOINT].protocols
    control = raw.conn.h3.create_webtransport_stream(raw.id, is_unidirectional=False)
    sender = raw.conn.quic._streams[control].sender
    sender.write(b"\n" * 200)
    sender._pending.subtract(0, sender._buffer_stop)  # never sent: a loss never repaired
    server_streams = protocol._quic._streams
    for _ in range(8):  # 8 windows offered; flow control lets one through
        sender.write(b"z" * RECEIVE_WINDOW)
        raw.conn.transmit()
        await asyncio.sleep(0.02 * UNIT)
    await wait_until_async(
        lambda: (
            control in server_streams
            and server_streams[control].receiver.highest_offset > RECEIVE_WINDOW // 2
        ),
        what="bytes past half the window held behind the gap",
    )
    for _ in range(4):  # more sending rounds: the window must not move
        raw.conn.transmit()
        await asyncio.sleep(0.02 * UNIT)
    stream = server_streams[control]
    assert stream.max_stream_data_local == RECEIVE_WINDOW
    assert stream.receiver.starting_offset() == 0
    assert 0 < len(stream.receiver._buffer) <= RECEIVE_WINDOW


async def test_an_endless_http3_frame_closes_its_connection_only(
    served: Served, raw_sessions: list[QuicConn]
) -> None:
    """aioquic buffers a HEADERS frame whole, however long it says it is."""
    conn = await connect(await discovery(served), raw_sessions)
    sid = conn.quic.get_next_available_stream_id()
    head = Buffer(capacity=16)
    head.push_uint_var(0x1)  # HEADERS
    head.push_uint_var(1 << 30)  # announced: 1 GiB
    conn.quic.send_stream_data(sid, head.data + b"\0" * (2 * MAX_H3_BUFFER))
    conn.transmit()
    await wait_until_async(lambda: conn.terminated, what="the connection closed")
    assert f"HTTP/3 frame of over {MAX_H3_BUFFER} bytes" in conn.terminated
    rec, _ = await run(served)
    assert rec.error == "" and len(rec.texts) == 12
