"""TLS on the client side (clients/tls.py), against real TLS servers in the test's loop.

The servers are Python's own TLS (asyncio's SSL transport over OpenSSL) presenting the lab
certificate of netem/pki.py: a small stream server whose accepted socket we can read
TCP_INFO on, for the independent count, and the real pushlab app on an aiohttp TLS site for
the SSE and WebSocket clients. Nothing is mocked: the handshake, the records and the kernel
counts are real. Record counts are exact because the stream server's SSL transport turns
each write into one record, and the client reads to the end before counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from clients.base import ClientOptions
from clients.net import Connector, ConnStats, Target, TcpInfo, read_tcp_info
from clients.recorder import StreamRecord
from clients.sse import SSEClient
from clients.tls import TLSConn, take_record, tls_connector
from clients.websocket import WebSocketClient
from netem.pki import LabPKI, make_lab_pki
from server import make_app
from streams.errors import TransportError
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT, wait_until_async
from transports.web.common import ServerConfig

CHUNKS, CHUNK_BYTES = 20, 30  # the stream server's response: 20 writes of 30 bytes
AEAD_OVERHEAD = 22  # TLS 1.3 record: 5 header + 1 inner content type + 16 AEAD tag
CLOSE_NOTIFY_BYTES = 5 + 2 + AEAD_OVERHEAD - 5  # an encrypted 2-byte alert: 24 on the wire
PARAMS = GenParams(tokens=12, rate=400.0, ttft_ms=5.0, seed=7)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return make_lab_pki(tmp_path_factory.mktemp("pki"))


class StreamServer:
    """Answers a line "N SIZE" with N writes of SIZE bytes (one TLS record each), then
    counts its side of the connection with TCP_INFO before it closes (close_notify, FIN)."""

    def __init__(self, ragged: bool = False) -> None:
        self.ragged = ragged  # close TCP without close_notify, as some servers do
        self.port = 0
        self.server_counts: list[tuple[int, int]] = []  # (bytes_acked, bytes_received)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            count, size = map(int, (await reader.readline()).split())
            for i in range(count):
                writer.write(bytes([97 + i % 26]) * size)
                await writer.drain()
                await asyncio.sleep(0.001)  # separate writes, separate segments
            sock = writer.get_extra_info("socket")

            def all_acked() -> TcpInfo | None:
                info = read_tcp_info(sock)
                assert info is not None, "TCP_INFO is unavailable"
                return info if info.unacked == 0 else None

            info = await wait_until_async(all_acked, what="the client acked all the server sent")
            assert info is not None
            self.server_counts.append((info.bytes_acked, info.bytes_received))
        finally:
            if self.ragged:
                writer.transport.abort()  # no close_notify, straight to the socket's close
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def stream_server(pki: LabPKI, ragged: bool = False) -> AsyncIterator[StreamServer]:
    state = StreamServer(ragged)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0,
                                        ssl=pki.server_context())  # fmt: skip
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


async def fetch(conn: TLSConn, count: int = CHUNKS, size: int = CHUNK_BYTES) -> bytes:
    """Ask the stream server for `count` writes of `size` bytes; read to the end."""
    await conn.write(f"{count} {size}\n".encode())
    body = bytearray()
    while chunk := await conn.read():
        body += chunk
    return bytes(body)


async def one_exchange(connector: Connector, port: int) -> tuple[bytes, ConnStats]:
    async with asyncio.timeout(10 * UNIT):
        conn = await connector(Target("127.0.0.1", port, secure=True))
        assert isinstance(conn, TLSConn)
        body = await fetch(conn)
        return body, await conn.aclose()


def tls_down(stats: ConnStats) -> int:
    """Every received byte the TLS layer accounted for, by phase and kind."""
    return (stats.tls_handshake_bytes_down + stats.tls_record_bytes_down
            + stats.tls_control_bytes_down)  # fmt: skip


def tls_up(stats: ConnStats) -> int:
    return stats.tls_handshake_bytes_up + stats.tls_record_bytes_up + stats.tls_control_bytes_up


def test_take_record_splits_at_record_boundaries() -> None:
    """RFC 8446 5.1 framing: whole records come off the front; a partial one waits."""
    one = bytes([23, 3, 3, 0, 3]) + b"abc"
    two = bytes([21, 3, 3, 0, 2]) + b"\x01\x00"
    buf = bytearray(one + two[:4])
    assert take_record(buf) == one
    assert take_record(buf) is None and buf == bytearray(two[:4])  # the header is incomplete
    buf += two[4:6]
    assert take_record(buf) is None  # the body is incomplete
    buf += two[6:] + one[:1]
    assert (take_record(buf), buf) == (two, bytearray(one[:1]))
    stream, out = bytearray(), []
    for byte in one + two + one:  # one byte at a time
        stream.append(byte)
        while (record := take_record(stream)) is not None:
            out.append(record)
    assert out == [one, two, one] and not stream


async def test_every_byte_is_counted_at_every_layer(pki: LabPKI) -> None:
    async with stream_server(pki) as server:
        body, stats = await one_exchange(tls_connector(str(pki.ca_cert)), server.port)
    assert body == b"".join(bytes([97 + i % 26]) * CHUNK_BYTES for i in range(CHUNKS))
    assert (stats.stack, stats.source) == ("tls", "kernel")
    assert (stats.tls_version, stats.alpn) == ("TLSv1.3", "http/1.1")
    assert stats.tls_cipher.startswith("TLS_") and not stats.tls_resumed
    assert stats.connect_ns > 0 and stats.handshake_ns > 0
    # plaintext: what the layer above read and wrote
    assert (stats.app_bytes_down, stats.app_bytes_up) == (CHUNKS * CHUNK_BYTES, len("20 30\n"))
    # one record per server write, each 22 bytes over its plaintext
    assert stats.tls_records_down == CHUNKS
    assert stats.tls_record_bytes_down - stats.app_bytes_down == AEAD_OVERHEAD * CHUNKS
    assert (stats.tls_records_up, stats.tls_record_bytes_up) == (1, 6 + AEAD_OVERHEAD)
    # control down: the server's NewSessionTickets (two, OpenSSL's default) and close_notify;
    # up: our close_notify
    assert stats.tls_control_bytes_down > CLOSE_NOTIFY_BYTES
    assert stats.tls_control_bytes_up == CLOSE_NOTIFY_BYTES
    # the kernel's TCP payload is exactly handshake + data records + control records
    assert (stats.bytes_down, stats.bytes_up) == (tls_down(stats), tls_up(stats))
    # the server counted before its close_notify went out and before ours came in; its
    # passive-open socket has no SYN in bytes_acked (snd_una starts past it)
    [(server_acked, server_received)] = server.server_counts
    assert server_acked == stats.bytes_down - CLOSE_NOTIFY_BYTES
    assert server_received == stats.bytes_up - CLOSE_NOTIFY_BYTES
    assert abs(server_acked - stats.bytes_down) <= 0.01 * stats.bytes_down


async def test_a_ragged_eof_ends_the_stream_without_error(pki: LabPKI) -> None:
    """The peer closes TCP without close_notify (RFC 8446 6.1 says it MUST send one): the
    read ends as at EOF, and we send no close_notify to a socket that is gone."""
    async with stream_server(pki, ragged=True) as server:
        body, stats = await one_exchange(tls_connector(str(pki.ca_cert)), server.port)
    assert len(body) == CHUNKS * CHUNK_BYTES and stats.tls_records_down == CHUNKS
    assert stats.tls_control_bytes_up == 0
    [(server_acked, _)] = server.server_counts
    assert stats.bytes_down == server_acked == tls_down(stats)


async def test_a_second_connection_resumes_the_session(pki: LabPKI) -> None:
    cache: dict[Target, ssl.SSLSession] = {}
    connector = tls_connector(str(pki.ca_cert), session_cache=cache)
    async with stream_server(pki) as server:
        first_body, first = await one_exchange(connector, server.port)
        assert list(cache) == [Target("127.0.0.1", server.port, secure=True)]
        second_body, second = await one_exchange(connector, server.port)
    assert first_body == second_body
    assert (first.tls_resumed, second.tls_resumed) == (False, True)
    # a resumed TLS 1.3 handshake (PSK, RFC 8446 2.2) carries no certificate chain
    assert second.tls_handshake_bytes_down < first.tls_handshake_bytes_down - 300
    assert second.bytes_down == tls_down(second)


async def test_a_server_the_ca_does_not_vouch_for_is_not_retried(
    pki: LabPKI, tmp_path: Path
) -> None:
    other = make_lab_pki(tmp_path / "other")
    async with stream_server(pki) as server:
        with pytest.raises(TransportError) as caught:
            await one_exchange(tls_connector(str(other.ca_cert)), server.port)
    assert not caught.value.retryable
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message and str(other.ca_cert) in message
    assert "not trusted" in message and "\n" not in message


async def test_a_certificate_for_another_name_is_not_retried(pki: LabPKI) -> None:
    async with stream_server(pki) as server:
        with pytest.raises(TransportError) as caught:
            await one_exchange(tls_connector(str(pki.ca_cert), "example.org"), server.port)
    assert not caught.value.retryable
    assert "not valid for 'example.org'" in str(caught.value)


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "garbage"])
def test_an_unusable_ca_file_is_named(tmp_path: Path, content: bytes | None) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    with pytest.raises(TransportError) as caught:
        tls_connector(str(ca_file))
    assert not caught.value.retryable
    assert str(ca_file) in str(caught.value) and "\n" not in str(caught.value)


async def test_a_refused_connection_is_retryable(pki: LabPKI) -> None:
    async with stream_server(pki) as server:
        port = server.port
    with pytest.raises(TransportError) as caught:
        await tls_connector(str(pki.ca_cert))(Target("127.0.0.1", port, secure=True))
    assert caught.value.retryable


def test_target_parses_https_and_wss() -> None:
    assert Target.parse("https://example.org") == Target("example.org", 443, secure=True)
    assert Target.parse("wss://127.0.0.1:8443/ws") == Target("127.0.0.1", 8443, secure=True)
    assert Target.parse("http://h") == Target("h", 80) and Target.parse("ws://h:81").port == 81
    target = Target.parse("https://[::1]:8443")
    assert (target.url, target.authority) == ("https://[::1]:8443", "[::1]:8443")
    assert Target("127.0.0.1", 8000).url == "http://127.0.0.1:8000"
    with pytest.raises(ValueError):
        Target.parse("ftp://h")


@contextlib.asynccontextmanager
async def tls_app(pki: LabPKI) -> AsyncIterator[Target]:
    """The real pushlab app on an aiohttp TLS site (the server's own TLS flag is not used:
    this tests the client side)."""
    config = ServerConfig(host="127.0.0.1", port=0)
    runner = web.AppRunner(make_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context()).start()
        yield Target("127.0.0.1", runner.addresses[0][1], secure=True)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("client_class", [SSEClient, WebSocketClient], ids=["sse", "wss"])
async def test_clients_stream_over_tls(pki: LabPKI, client_class: type) -> None:
    client = client_class(ClientOptions(), connector=tls_connector(str(pki.ca_cert)))
    rec = StreamRecord(client.key, client.name, PARAMS.tokens)
    async with tls_app(pki) as target, asyncio.timeout(10 * UNIT):
        await client.run(target, PARAMS, rec)
    assert rec.error == "" and rec.end_reason == "done"
    assert rec.text() == "".join(texts(PARAMS))
    [conn] = rec.conns
    assert (conn.stack, conn.tls_version, conn.alpn) == ("tls", "TLSv1.3", "http/1.1")
    assert conn.tls_records_down >= PARAMS.tokens  # a record per token at least
    assert conn.tls_record_bytes_down - conn.app_bytes_down == AEAD_OVERHEAD * conn.tls_records_down
    assert conn.tls_record_bytes_up - conn.app_bytes_up == AEAD_OVERHEAD * conn.tls_records_up
    # what we read is all accounted for; the kernel may hold a little more that we never
    # read (the server's last chunk or close_notify, in flight when the client closed)
    assert tls_down(conn) <= conn.bytes_down and tls_up(conn) == conn.bytes_up


async def test_http2_refuses_a_tls_server_that_does_not_choose_h2(tmp_path: Path) -> None:
    """A server offering only http/1.1 by ALPN: the HTTP/2 layer fails at once, never
    retried, naming the ALPN it got, instead of speaking HTTP/2 to an HTTP/1.1 server."""
    from clients.h2 import HTTP2

    pki = make_lab_pki(tmp_path)
    server = await asyncio.start_server(
        lambda r, w: None, "127.0.0.1", 0, ssl=pki.server_context(alpn=("http/1.1",))
    )
    port = server.sockets[0].getsockname()[1]
    try:
        layer = HTTP2(Target("127.0.0.1", port, secure=True),
                      tls_connector(str(pki.ca_cert), alpn=("h2",)))  # fmt: skip
        with pytest.raises(TransportError, match="did not negotiate HTTP/2") as info:
            await layer.request("GET", "/")
        assert not info.value.retryable
        await layer.aclose()
    finally:
        server.close()
        await server.wait_closed()
