"""The HTTP/3 layer (clients/h3.py) over QUIC (clients/quic.py).

Against a real Caddy 2.6 with `protocols h1 h2 h3` in front of the real pushlab server (both
child processes, the lab PKI): every HTTP transport streams completely over HTTP/3, tokens
arrive token by token, N clients share one QUIC connection, a WebSocket keeps a TLS
connection of its own, and the SNI cases end in a clear TransportError or a handshake.
Against an in-process aioquic server (tests/h3server.py), whose routes reset a stream or
close the connection: what fails, and what does not. Skipped only where caddy is absent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from clients.base import ClientOptions
from clients.fleet import FleetSpec, run_fleet
from clients.h3 import HTTP3, H3Session
from clients.net import Target
from clients.quic import QuicConn, QuicSettings
from clients.recorder import StreamRecord, stream_row
from clients.stack import Stack
from harness.children import ServerProcess
from netem.caddy import NOT_INSTALLED, Caddy, CaddySpec, caddy_binary, render_caddyfile
from netem.pki import LabPKI, make_lab_pki
from streams.errors import TransportError
from streams.generator import texts
from streams.params import GenParams
from tests.h3server import H3Server
from tests.support import UNIT
from transports.registry import get, keys_where

pytestmark = pytest.mark.timeout(UNIT * 60)

HTTP_KEYS = keys_where(lambda t: t.connection == "http")
PARAMS = GenParams(tokens=6, rate=100.0, ttft_ms=0.0)
SLOW = GenParams(tokens=5, rate=10.0, ttft_ms=0.0)  # the last token 0.4 s after the first
STREAMING_SPREAD_S = 0.25  # first token at least this long before the last: streamed
needs_caddy = pytest.mark.skipif(caddy_binary() is None, reason=NOT_INSTALLED)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return make_lab_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def caddy(pki: LabPKI) -> Iterator[Caddy]:
    """Caddy with HTTP/3 on, in front of the real server (plain HTTP behind it)."""
    if caddy_binary() is None:
        pytest.skip(NOT_INSTALLED)
    server = ServerProcess()
    server.start()
    proxy = Caddy(CaddySpec(http3=True), server.target.host, server.target.port, pki=pki)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        server.stop()


def h3_stack(pki: LabPKI, **kw: object) -> Stack:
    return Stack(http="3", tls=True, ca_file=str(pki.ca_cert), **kw)  # type: ignore[arg-type]


async def run_one(key: str, stack: Stack, target: Target, params: GenParams) -> StreamRecord:
    cls = get(key).client_class()
    rec = StreamRecord(key, cls.name, params.tokens, params.envelope)
    client = cls(ClientOptions(), http=stack.http_factory(), connector=stack.connector())
    async with asyncio.timeout(10 * UNIT):
        await client.run(target, params, rec)
    return rec


def secure(caddy: Caddy) -> Target:
    return dataclasses.replace(caddy.target, secure=True)


# -- the stack and the Caddyfile -----------------------------------------------------------


def test_stack_for_http3(pki: LabPKI) -> None:
    stack = h3_stack(pki, multiplex=4, cc="cubic")
    assert stack.label == "HTTP/3 cubic x4" and h3_stack(pki).label == "HTTP/3"
    assert stack.quic_settings() == QuicSettings("localhost", str(pki.ca_cert), cc="cubic")
    with pytest.raises(ValueError, match=r"TLS 1\.3"):
        Stack(http="3")
    with pytest.raises(ValueError, match="cc must be"):
        h3_stack(pki, cc="bbr")
    with pytest.raises(ValueError, match="multiplex"):
        Stack(tls=True, ca_file="ca.pem", multiplex=2)
    # what HTTP/1.1 and HTTP/2 were is unchanged
    assert Stack(http="2", tls=True, ca_file="x", multiplex=8).label == "HTTP/2+TLS x8"
    assert Stack().label == "HTTP/1.1"


def test_caddyfile_with_http3(tmp_path: object, pki: LabPKI) -> None:
    from pathlib import Path

    work = Path(str(tmp_path))
    on = render_caddyfile(CaddySpec(http3=True), listen_port=8443, upstream=("127.0.0.1", 9),
                          pki=pki, workdir=work)  # fmt: skip
    off = render_caddyfile(CaddySpec(), listen_port=8443, upstream=("127.0.0.1", 9), pki=pki,
                           workdir=work)  # fmt: skip
    assert "protocols h1 h2 h3 #" in on and "protocols h1 h2 #" in off
    assert "encode" not in on.replace("no encode directive", "")  # still nothing compressed
    with pytest.raises(ValueError):
        CaddySpec(http2=False, http3=True)


# -- end to end through Caddy --------------------------------------------------------------


@needs_caddy
@pytest.mark.parametrize("key", HTTP_KEYS)
async def test_every_http_transport_streams_over_http3(caddy: Caddy, pki: LabPKI, key: str) -> None:
    rec = await run_one(key, h3_stack(pki), secure(caddy), PARAMS)
    row = stream_row(rec)
    assert rec.error == "" and rec.text() == "".join(texts(PARAMS))
    assert (row["tokens_received"], row["lost"], row["duplicated"]) == (PARAMS.tokens, 0, 0)
    assert (row["stack"], row["http_version"], row["bytes_source"]) == ("quic", "3", "udp")
    assert row["connections"] == 1  # polls too: many streams, one QUIC connection
    (conn,) = rec.conns
    assert conn.alpn == "h3" and conn.tls_version == "TLSv1.3" and conn.cc == "reno"
    assert conn.handshake_ns > 0 and conn.handshake_packets_up > 0
    assert conn.handshake_packets_down > 0 and conn.tls_handshake_bytes_down > 0
    assert conn.bytes_down > conn.tls_handshake_bytes_down and conn.packets_down > 0


@needs_caddy
@pytest.mark.parametrize("key", ["sse", "ndjson"])
async def test_caddy_flushes_each_token_over_http3(caddy: Caddy, pki: LabPKI, key: str) -> None:
    """Token by token, not at the end: the first token reached us well before the last."""
    rec = await run_one(key, h3_stack(pki), secure(caddy), SLOW)
    assert rec.error == "" and rec.text() == "".join(texts(SLOW))
    arrivals = [ns / 1e9 for ns in rec.t_recv_perf_ns]
    assert len(arrivals) == SLOW.tokens
    assert arrivals[-1] - arrivals[0] >= STREAMING_SPREAD_S, arrivals
    log = [r for r in caddy.access_records() if r["request"]["proto"] == "HTTP/3.0"]
    # MEASURED: Caddy 2.6.2 logs an HTTP/3 request's TLS block empty (version 0, proto "")
    assert log and log[-1]["request"]["tls"]["version"] == 0


@needs_caddy
async def test_n_clients_share_one_quic_connection(caddy: Caddy, pki: LabPKI) -> None:
    n = 6
    spec = FleetSpec("sse", clients=n, stack=h3_stack(pki, multiplex=n))
    async with asyncio.timeout(20 * UNIT):
        recs = await run_fleet(spec, secure(caddy), PARAMS)
    rows = [stream_row(r) for r in recs]
    assert all(r.error == "" and r.text() == "".join(texts(PARAMS)) for r in recs)
    assert sum(len(r.conns) for r in recs) == 1  # one QUIC connection for the group
    assert {row["streams_per_conn"] for row in rows} == {n}
    (conn,) = recs[0].conns
    assert (conn.stack, conn.http_version) == ("quic", "3") and 1 <= conn.streams <= n


@needs_caddy
async def test_a_shared_session_carries_concurrent_streams(caddy: Caddy, pki: LabPKI) -> None:
    session = H3Session(secure(caddy), h3_stack(pki).quic_settings())
    streams = [await session.open_stream("GET", "/sse?tokens=3&rate=50&ttft_ms=0", [])
               for _ in range(5)]  # fmt: skip
    async with asyncio.timeout(10 * UNIT):
        heads = [await s.response() for s in streams]
        bodies = [b"".join([c.data async for c in s.chunks()]) for s in streams]
    stats = await session.aclose()
    assert {h.response.status for h in heads} == {200}
    assert all(body.count(b"\ndata: {") == 3 for body in bodies), bodies[0]
    assert session.connections == len(stats) == 1 and stats[0].streams == 5


@needs_caddy
async def test_websocket_under_http3_keeps_its_own_tls_connection(
    caddy: Caddy, pki: LabPKI
) -> None:
    rec = await run_one("websocket", h3_stack(pki), secure(caddy), PARAMS)
    assert rec.error == "" and rec.text() == "".join(texts(PARAMS))
    (conn,) = rec.conns  # the QUIC connection was never opened
    assert (conn.stack, conn.http_version, conn.alpn) == ("tls", "1.1", "http/1.1")


@needs_caddy
async def test_an_empty_sni_is_refused_for_good_and_an_ip_literal_is_served(
    caddy: Caddy, pki: LabPKI
) -> None:
    """MEASURED (netem/caddy.py): Caddy answers an empty SNI extension with a TLS alert at
    once; an IP literal (aioquic then sends no SNI) completes the handshake."""
    target, ca = secure(caddy), str(pki.ca_cert)
    start = time.monotonic()
    with pytest.raises(TransportError) as failure:
        await QuicConn.open(target, QuicSettings(server_name="", ca_file=ca))
    assert failure.value.retryable is False
    assert "TLS alert" in failure.value.message and "empty SNI" in failure.value.message
    assert time.monotonic() - start < 5 * UNIT  # refused, not timed out (10 s)
    conn = await QuicConn.open(target, QuicSettings(server_name="127.0.0.1", ca_file=ca))
    assert conn.alpn == "h3"
    await conn.aclose()
    # through the layer, a client records the failure and does not retry it
    rec = await run_one("sse", h3_stack(pki, server_name=""), target, PARAMS)
    assert "TLS alert" in rec.error and rec.conns == []


# -- failures, against an aioquic server ---------------------------------------------------


@pytest.fixture
async def h3server(pki: LabPKI) -> AsyncIterator[Target]:
    server = H3Server(str(pki.cert), str(pki.key))
    port = await server.start()
    yield Target("127.0.0.1", port, secure=True)
    server.stop()


async def test_a_reset_fails_only_its_stream(h3server: Target, pki: LabPKI) -> None:
    session = H3Session(h3server, h3_stack(pki).quic_settings())
    held = await session.open_stream("GET", "/hold", [])
    reset = await session.open_stream("GET", "/reset", [])
    async with asyncio.timeout(5 * UNIT):
        assert (await held.response()).response.status == 200
        assert (await reset.response()).response.status == 200
        with pytest.raises(TransportError, match=r"reset the stream .*CANCELLED") as failure:
            _ = [c async for c in reset.chunks()]
        assert failure.value.retryable
        done = await session.open_stream("GET", "/bytes?n=40000", [])
        assert (await done.response()).response.status == 200
        assert sum([len(c.data) async for c in done.chunks()]) == 40000
    assert not held.finished and session.connections == 1
    await session.aclose()
    with pytest.raises(TransportError):  # closing woke the held stream
        _ = [c async for c in held.chunks()]


async def test_a_closed_connection_fails_every_stream_and_the_next_reconnects(
    h3server: Target, pki: LabPKI
) -> None:
    session = H3Session(h3server, h3_stack(pki).quic_settings())
    held = [await session.open_stream("GET", "/hold", []) for _ in range(3)]
    closer = await session.open_stream("GET", "/close", [])
    async with asyncio.timeout(5 * UNIT):
        for stream in [*held, closer]:
            try:
                await stream.response()
                _ = [c async for c in stream.chunks()]
            except TransportError as exc:
                assert exc.retryable and "told to" in exc.message
            else:
                raise AssertionError(f"stream {stream.id} did not fail")
        again = await session.open_stream("GET", "/bytes?n=10", [])
        assert (await again.response()).response.status == 200
    stats = await session.aclose()
    assert session.connections == len(stats) == 2 and [s.index for s in stats] == [0, 1]


async def test_http3_layer_counts_one_connection_and_gzip_is_off(
    h3server: Target, pki: LabPKI
) -> None:
    http = HTTP3(h3server, settings=h3_stack(pki).quic_settings())
    async with asyncio.timeout(5 * UNIT):
        for _ in range(2):  # two requests, one connection
            assert (await http.request("GET", "/bytes?n=30000")).status == 200
            assert len(await http.read_body()) == 30000
    assert http.conn is not None and http.conn.last_recv_perf_ns > 0
    stats = await http.aclose()
    assert http.requests == 2 and http.body_bytes_down == 60000 and http.connections == 1
    (conn,) = stats
    assert (conn.http_version, conn.stack, conn.streams) == ("3", "quic", 1)


async def test_a_server_that_is_not_there_is_a_bounded_retryable_failure(pki: LabPKI) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:  # bound, never answers
        hole.bind(("127.0.0.1", 0))
        target = Target("127.0.0.1", hole.getsockname()[1], secure=True)
        settings = QuicSettings(ca_file=str(pki.ca_cert))
        import clients.quic as quic_mod

        saved, quic_mod.HANDSHAKE_TIMEOUT_S = quic_mod.HANDSHAKE_TIMEOUT_S, 0.5 * UNIT
        try:
            with pytest.raises(TransportError, match="timed out") as failure:
                await QuicConn.open(target, settings)
        finally:
            quic_mod.HANDSHAKE_TIMEOUT_S = saved
    assert failure.value.retryable


async def test_a_port_nobody_listens_on_fails_at_once_not_after_the_handshake_timeout(
    pki: LabPKI,
) -> None:
    """The socket is connected, so the kernel's ICMP port unreachable reaches it: what a
    stale discovery (a restarted server's old port) meets; then the client asks again."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]  # closed below: nobody listens there any more
    target = Target("127.0.0.1", port, secure=True)
    async with asyncio.timeout(2 * UNIT):  # HANDSHAKE_TIMEOUT_S is 10 s
        with pytest.raises(TransportError, match="refused") as failure:
            await QuicConn.open(target, QuicSettings(ca_file=str(pki.ca_cert)))
    assert failure.value.retryable


# -- pushlab serve --front caddy --http3 ---------------------------------------------------


@pytest.mark.parametrize("argv", [["--front", "nginx", "--http3"], ["--http3"]])
def test_http3_is_caddys_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.cli import main as pushlab_main

    with pytest.raises(SystemExit) as info:
        pushlab_main(["serve", *argv])
    assert info.value.code == 2 and "--http3 needs --front caddy" in capsys.readouterr().err


@needs_caddy
@pytest.mark.slow  # a few seconds: the CLI, the server and Caddy start as processes
async def test_pushlab_serve_front_caddy_http3_end_to_end() -> None:
    from harness.children import READY_PREFIX, ChildProcess

    cli = ChildProcess(["-m", "experiments.cli", "serve", "--front", "caddy", "--http3"],
                       READY_PREFIX)  # fmt: skip
    await asyncio.to_thread(cli.start)
    try:
        assert cli.ready_fields["front"] == "caddy" and cli.ready_fields["h3"] == "udp"
        assert cli.ca_file is not None
        target = dataclasses.replace(cli.target, secure=True)
        stack = Stack(http="3", tls=True, ca_file=str(cli.ca_file))
        rec = await run_one("sse", stack, target, PARAMS)
    finally:
        await asyncio.to_thread(cli.stop)
    assert rec.error == "" and stream_row(rec)["http_version"] == "3"
    assert cli.proc is not None and cli.proc.returncode == 0, cli.log()
