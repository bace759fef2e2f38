"""The HTTP/2 layer (clients/h2.py) against real HTTP/2 servers.

Most tests run against `tests/h2server.py` (h2 in the server role, h2c on loopback), whose
handlers the tests script: every ordering checked is forced by events (a PING round trip, a
step the test releases), not by timing. The last tests run the pushlab clients end to end
against the real pushlab server behind a real nginx speaking cleartext HTTP/2.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from clients.base import Client, ClientOptions
from clients.fake import RecordingSleep
from clients.h2 import HTTP2, H2Session, shared_factory
from clients.ndjson import NDJSONClient
from clients.net import Connection, Connector, Target, tcp_connector
from clients.oneshot import OneShotClient
from clients.poll import LongPollClient
from clients.recorder import StreamRecord, stream_row
from clients.sse import SSEClient
from clients.websocket import WebSocketClient
from streams.errors import TransportError
from streams.generator import texts
from streams.params import GenParams
from tests.h2server import H2Server, Handler, ServerStream
from tests.support import UNIT, Served
from transports import sse
from transports.token import encode_token

TIMEOUT_S = 2 * UNIT


@pytest.fixture
async def h2server() -> AsyncIterator[Callable[..., Awaitable[tuple[H2Server, Target]]]]:
    servers: list[H2Server] = []

    async def start(routes: dict[str, Handler], **kw: int) -> tuple[H2Server, Target]:
        server = H2Server(routes, **kw)
        servers.append(server)
        return server, await server.start()

    yield start
    for server in servers:
        await server.stop()


Start = Callable[..., Awaitable[tuple[H2Server, Target]]]


async def hello(s: ServerStream) -> None:
    await s.respond(headers=[("content-type", "text/plain"), ("x-twice", "a"), ("x-twice", "b")])
    await s.send(b"hello", end=True)


async def echo(s: ServerStream) -> None:
    await s.respond(headers=[("content-type", "application/json")])
    await s.send(s.body, end=True)


def holding(release: asyncio.Event) -> Handler:
    """Headers and b"x" at once; b"y" and the end once `release` is set."""

    async def handler(s: ServerStream) -> None:
        await s.respond()
        await s.send(b"x")
        await release.wait()
        await s.send(b"y", end=True)

    return handler


async def test_request_response_and_headers(h2server: Start) -> None:
    server, target = await h2server({"/hello": hello, "/echo": echo})
    http = HTTP2(target)
    async with asyncio.timeout(TIMEOUT_S):
        resp = await http.request("GET", "/hello", [("Accept", "text/plain")])
        assert (resp.status, resp.headers["content-type"]) == (200, "text/plain")
        assert resp.headers["x-twice"] == "a, b"
        assert await http.read_body() == b"hello"
        resp = await http.request("POST", "/echo", [], b'{"tokens": 3}')
        assert await http.read_body() == b'{"tokens": 3}'
        stats = await http.aclose()
    assert (http.connections, http.requests, http.body_bytes_down) == (1, 2, 5 + 13)
    assert len(stats) == 1 and stats[0].stack == "tcp" and stats[0].bytes_down > 18
    assert (stats[0].http_version, stats[0].streams) == ("2", 1)
    request = server.conns[0]
    assert server.paths == ["/hello", "/echo"] and request.h2.state_machine.state.name == "CLOSED"


async def test_body_arrives_chunk_by_chunk_each_stamped_at_its_arrival(h2server: Start) -> None:
    steps: asyncio.Queue[None] = asyncio.Queue()

    async def stepped(s: ServerStream) -> None:
        await s.respond()
        for i in range(4):
            await steps.get()  # the next chunk only once the test has read the last one
            await s.send(f"chunk{i}".encode())
        await s.send(b"", end=True)

    _, target = await h2server({"/steps": stepped})
    http = HTTP2(target)
    async with asyncio.timeout(TIMEOUT_S):
        await http.request("GET", "/steps")
        clock = http.conn
        assert clock is not None
        body = http.body()
        got, stamps = [], []
        for _ in range(4):
            steps.put_nowait(None)
            got.append(await anext(body))
            stamps.append((clock.last_recv_ns, clock.last_recv_perf_ns))
        assert [c async for c in body] == []
        await http.aclose()
    assert got == [f"chunk{i}".encode() for i in range(4)]
    perf = [p for _, p in stamps]
    assert perf == sorted(perf) and len(set(perf)) == 4  # four reads, in order


async def test_a_chunk_keeps_its_own_arrival_when_read_after_a_later_one(h2server: Start) -> None:
    a_read = asyncio.Event()

    async def first(s: ServerStream) -> None:
        await s.respond()
        await s.send(b"A1")
        await s.ping()  # the client has read A1 before B1 is sent
        a_read.set()
        await s.send(b"", end=True)

    async def second(s: ServerStream) -> None:
        await s.respond()
        await a_read.wait()
        await s.send(b"B1", end=True)

    _, target = await h2server({"/a": first, "/b": second})
    session = H2Session(target)
    a, b = HTTP2(target, session=session), HTTP2(target, session=session)
    async with asyncio.timeout(TIMEOUT_S):
        await a.request("GET", "/a")
        await b.request("GET", "/b")
        assert await b.read_body() == b"B1"
        assert b.conn is not None
        b_perf = b.conn.last_recv_perf_ns
        assert await a.read_body() == b"A1"  # taken after B1, stamped before it
        assert a.conn is not None and a.conn.last_recv_perf_ns < b_perf
        assert await a.aclose() == [] and await b.aclose() == []
        stats = await session.aclose()
    assert len(stats) == 1


async def test_twenty_concurrent_streams_share_one_connection(h2server: Start) -> None:
    n = 20
    all_in = asyncio.Event()

    async def together(s: ServerStream) -> None:
        await s.respond()
        if s.conn.server.in_progress == n:
            all_in.set()
        await all_in.wait()  # every stream open at once before any ends
        await s.send(s.query["i"].encode(), end=True)

    server, target = await h2server({"/t": together})
    session = H2Session(target)
    make = shared_factory(session)

    async def one(i: int) -> bytes:
        http = make(target)
        await http.request("GET", f"/t?i={i}")
        body = await http.read_body()
        await http.aclose()
        return body

    async with asyncio.timeout(TIMEOUT_S):
        bodies = await asyncio.gather(*(one(i) for i in range(n)))
        stats = await session.aclose()
    assert bodies == [str(i).encode() for i in range(n)]
    assert (session.connections, len(server.conns), len(stats)) == (1, 1, 1)
    assert session.max_concurrent == server.peak == n


async def test_streams_beyond_max_concurrent_streams_wait_for_a_slot(h2server: Start) -> None:
    release = asyncio.Event()
    server, target = await h2server({"/hold": holding(release)}, max_streams=2)
    session = H2Session(target)
    make = shared_factory(session)

    async def one() -> bytes:
        http = make(target)
        await http.request("GET", "/hold")
        return await http.read_body()

    async with asyncio.timeout(TIMEOUT_S):
        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await server.wait_for(lambda: server.in_progress == 2)
        await asyncio.sleep(0.05 * UNIT)  # give a wrongly sent third stream time to arrive
        assert len(server.paths) == 2 and not any(t.done() for t in tasks)
        assert session.streams_opened == 2
        release.set()
        assert await asyncio.gather(*tasks) == [b"xy"] * 3
        await session.aclose()
    assert server.peak == 2 and session.max_concurrent == 2 and session.connections == 1
    assert session.slot_waits == 1 and session.slot_wait_ns > 0


async def test_flow_control_a_slow_stream_stalls_only_itself(h2server: Start) -> None:
    size = 1_000_000

    async def big(s: ServerStream) -> None:
        await s.respond(headers=[("content-type", "application/octet-stream")])
        await s.send(bytes(range(256)) * (size // 256) + bytes(size % 256), end=True)

    server, target = await h2server({"/big": big, "/hello": hello})
    # the RFC's default 64 KiB stream window: 1 MB needs many WINDOW_UPDATEs
    session = H2Session(target, stream_window=65535, connection_window=4 * 2**20)
    slow, quick = HTTP2(target, session=session), HTTP2(target, session=session)
    async with asyncio.timeout(TIMEOUT_S):
        await slow.request("GET", "/big")  # not read yet: its window fills and it stalls
        await quick.request("GET", "/hello")
        assert await quick.read_body() == b"hello"
        assert server.in_progress == 1  # /big: stalled on its window, nothing read yet
        before = server.window_updates  # our preface's connection WINDOW_UPDATE
        body = await slow.read_body()
        await session.aclose()
    assert len(body) == size and slow.body_bytes_down == size
    assert server.window_updates - before > size // 65535  # h2 hands back half a window


async def test_a_reset_fails_only_its_stream(h2server: Start) -> None:
    release = asyncio.Event()

    async def resets(s: ServerStream) -> None:
        await s.respond()
        await s.send(b"partial")
        s.reset()

    _, target = await h2server({"/reset": resets, "/hold": holding(release)})
    session = H2Session(target)
    doomed, other = HTTP2(target, session=session), HTTP2(target, session=session)
    async with asyncio.timeout(TIMEOUT_S):
        await other.request("GET", "/hold")
        await doomed.request("GET", "/reset")
        with pytest.raises(TransportError, match="INTERNAL_ERROR") as err:
            await doomed.read_body()
        assert err.value.retryable
        release.set()
        assert await other.read_body() == b"xy"
        await session.aclose()
    assert session.connections == 1


async def test_goaway_fails_only_unprocessed_streams_and_reconnects(h2server: Start) -> None:
    release = asyncio.Event()
    server, target = await h2server({"/hold": holding(release), "/hello": hello})
    session = H2Session(target)
    layers = [HTTP2(target, session=session) for _ in range(3)]
    async with asyncio.timeout(TIMEOUT_S):
        for http in layers:  # streams 1, 3, 5
            await http.request("GET", "/hold")
        server.goaway(last_stream_id=1)
        bodies = [http.body() for http in layers]
        assert [await anext(body) for body in bodies] == [b"x"] * 3
        for body in bodies[1:]:
            with pytest.raises(TransportError, match="GOAWAY") as err:
                await anext(body)
            assert err.value.retryable
        release.set()  # stream 1 was processed: it completes after the GOAWAY
        assert [c async for c in bodies[0]] == [b"y"]
        fresh = HTTP2(target, session=session)
        await fresh.request("GET", "/hello")
        assert await fresh.read_body() == b"hello"
        stats = await session.aclose()
    assert session.connections == len(server.conns) == len(stats) == 2


@pytest.mark.parametrize("breakage", ["garbage", "cut"])
async def test_a_broken_connection_fails_every_stream(h2server: Start, breakage: str) -> None:
    release = asyncio.Event()
    server, target = await h2server({"/hold": holding(release)})
    session = H2Session(target)
    layers = [HTTP2(target, session=session) for _ in range(3)]
    async with asyncio.timeout(TIMEOUT_S):
        for http in layers:
            await http.request("GET", "/hold")
        getattr(server, breakage)()
        for http in layers:
            with pytest.raises(TransportError) as err:
                await http.read_body()
            assert err.value.retryable
        stats = await session.aclose()
    assert len(stats) == 1 and stats[0].bytes_down > 0


STREAM = "s1"
PARAMS = GenParams(tokens=6, rate=1000.0, ttft_ms=0.0)
TEXTS = texts(PARAMS)


def sse_events(after: int) -> list[bytes]:
    events = [sse.encode_open(STREAM, after, 10)]
    for seq in range(after + 1, PARAMS.tokens + 1):
        payload = encode_token(STREAM, seq, 1_000_000 + seq, TEXTS[seq - 1], PARAMS)
        events.append(sse.encode_token(STREAM, seq, payload))
    return [*events, sse.DONE]


def sse_handler(cut_after: int | None = None) -> Handler:
    """`/sse` from Last-Event-ID on, one DATA frame per event; the first response is reset
    after `cut_after` tokens when given."""
    cuts = [cut_after] if cut_after is not None else []

    async def handler(s: ServerStream) -> None:
        last = s.headers.get("last-event-id", "")
        after = int(last.rsplit(":", 1)[1]) if last else 0
        await s.respond(headers=[("content-type", "text/event-stream")])
        events = sse_events(after)
        cut = cuts.pop() if cuts else None
        for i, event in enumerate(events):
            if cut is not None and i == cut + 1:  # the open event, then `cut` tokens
                s.reset()
                return
            await s.send(event)
        await s.send(b"", end=True)

    return handler


async def test_sse_client_over_http2(h2server: Start) -> None:
    _, target = await h2server({"/sse": sse_handler()})
    rec = StreamRecord("sse", "python", PARAMS.tokens)
    async with asyncio.timeout(TIMEOUT_S):
        await SSEClient(ClientOptions(), http=HTTP2).run(target, PARAMS, rec)
    row = stream_row(rec)
    assert rec.text() == "".join(TEXTS) and rec.error == ""
    assert (row["tokens_received"], row["connections"], rec.http_requests) == (6, 1, 1)


async def test_sse_client_resumes_over_http2_after_a_reset(h2server: Start) -> None:
    server, target = await h2server({"/sse": sse_handler(cut_after=3)})
    rec = StreamRecord("sse", "python", PARAMS.tokens)
    sleep = RecordingSleep()
    async with asyncio.timeout(TIMEOUT_S):
        await SSEClient(ClientOptions(), http=HTTP2, sleep=sleep).run(target, PARAMS, rec)
    row = stream_row(rec)
    assert rec.text() == "".join(TEXTS) and rec.reconnects == 1
    assert (row["lost"], row["duplicated"]) == (0, 0)
    # close_conn on its own session closes the connection, as over HTTP/1.1
    assert (row["connections"], len(server.conns), rec.http_requests) == (2, 2, 2)


async def test_a_fleet_of_sse_clients_on_one_session(h2server: Start) -> None:
    server, target = await h2server({"/sse": sse_handler()})
    session = H2Session(target)
    recs = [StreamRecord("sse", "python", PARAMS.tokens) for _ in range(5)]
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*(
            SSEClient(ClientOptions(), http=shared_factory(session)).run(target, PARAMS, rec)
            for rec in recs
        ))  # fmt: skip
        stats = await session.aclose()
    assert all(rec.text() == "".join(TEXTS) and rec.conns == [] for rec in recs)
    assert (session.connections, len(server.conns), len(stats)) == (1, 1, 1)


def test_windows_do_not_limit_a_token_stream() -> None:
    """The numbers of the module docstring: 6 MiB is 20 minutes of a 5 kB/s token stream."""
    from clients.h2 import CONNECTION_WINDOW, STREAM_WINDOW

    assert STREAM_WINDOW / 5_000 > 20 * 60 and CONNECTION_WINDOW >= STREAM_WINDOW


async def test_a_connection_that_did_not_negotiate_h2_fails_for_good(h2server: Start) -> None:
    _, target = await h2server({"/hello": hello})

    async def http11_alpn(t: Target) -> Connection:
        conn = await tcp_connector(t)
        setattr(conn, "alpn", "http/1.1")  # as a TLS front without h2 would answer  # noqa: B010
        return conn

    session = H2Session(target, http11_alpn)
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(TransportError, match="did not negotiate HTTP/2") as err:
            await session.open_stream("GET", "/hello", [])
        stats = await session.aclose()
    assert not err.value.retryable and session.connections == len(stats) == 1


async def test_gzip_bodies_are_decoded_and_counted_as_sent(h2server: Start) -> None:
    text = b"token " * 500
    packed = gzip.compress(text)

    async def gzipped(s: ServerStream) -> None:
        assert s.headers.get("accept-encoding") == "gzip"
        await s.respond(headers=[("content-type", "text/plain"), ("content-encoding", "gzip")])
        await s.send(packed[:100])
        await s.send(packed[100:], end=True)

    _, target = await h2server({"/gz": gzipped})
    http = HTTP2(target, accept_gzip=True)
    async with asyncio.timeout(TIMEOUT_S):
        await http.request("GET", "/gz")
        assert await http.read_body() == text
        await http.aclose()
    assert http.body_bytes_down == len(packed) < len(text)


# --- end to end: the real pushlab server behind a real nginx speaking HTTP/2 (h2c) ---------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = """daemon off; master_process off; worker_processes 1;
pid {dir}/nginx.pid; error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} http2;  # nginx 1.22: cleartext HTTP/2, prior knowledge only
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;  # each SSE event is its own DATA frame as it arrives
    }}
  }}
}}
"""


@pytest.fixture
async def nginx_h2c(served: Served, tmp_path: Path) -> AsyncIterator[Target]:
    """nginx on a free loopback port speaking h2c, proxying to the pushlab server."""
    assert Path(NGINX).exists(), "nginx is not installed: run `make system`"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port, upstream=served.target.port))
    proc = subprocess.Popen(
        [NGINX, "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # -e: everything goes to error.log
    )
    try:
        async with asyncio.timeout(5 * UNIT):
            while True:
                assert proc.poll() is None, (tmp_path / "error.log").read_text()
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                writer.close()
                break
        yield Target("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=5 * UNIT)


E2E_PARAMS = GenParams(tokens=8, rate=200.0, ttft_ms=0.0)


@pytest.mark.parametrize("cls", [SSEClient, NDJSONClient, LongPollClient, OneShotClient])
async def test_pushlab_clients_over_nginx_http2(nginx_h2c: Target, cls: type[Client]) -> None:
    rec = StreamRecord(cls.key, cls.name, E2E_PARAMS.tokens)
    async with asyncio.timeout(5 * UNIT):
        await cls(ClientOptions(), http=HTTP2).run(nginx_h2c, E2E_PARAMS, rec)
    row = stream_row(rec)
    assert rec.error == "" and rec.text() == "".join(texts(E2E_PARAMS))
    assert (row["tokens_received"], row["lost"], row["duplicated"]) == (8, 0, 0)
    assert row["connections"] == 1 and rec.http_requests >= 1  # polls: many streams, one conn


async def test_a_fleet_shares_one_nginx_http2_connection(nginx_h2c: Target) -> None:
    session = H2Session(nginx_h2c)
    recs = [StreamRecord("sse", "python", E2E_PARAMS.tokens) for _ in range(10)]
    async with asyncio.timeout(5 * UNIT):
        await asyncio.gather(*(
            SSEClient(ClientOptions(), http=shared_factory(session)).run(nginx_h2c, E2E_PARAMS, r)
            for r in recs
        ))  # fmt: skip
        stats = await session.aclose()
    assert all(r.error == "" and r.text() == "".join(texts(E2E_PARAMS)) for r in recs)
    assert session.connections == len(stats) == 1 and session.max_concurrent > 1
    assert stats[0].streams == session.max_concurrent and stats[0].http_version == "2"


async def test_websocket_keeps_its_own_connection_beside_http2(
    nginx_h2c: Target, served: Served
) -> None:
    """open_raw goes through `raw_connector` (here straight to the server: the h2c port
    takes no HTTP/1.1 upgrade), counted by the layer as its own connection."""

    async def direct(_: Target) -> Connection:
        return await tcp_connector(served.target)

    def factory(target: Target, connector: Connector = tcp_connector, *,
                accept_gzip: bool = False) -> HTTP2:  # fmt: skip
        return HTTP2(target, connector, accept_gzip=accept_gzip, raw_connector=direct)

    rec = StreamRecord("websocket", "python", E2E_PARAMS.tokens)
    async with asyncio.timeout(5 * UNIT):
        await WebSocketClient(ClientOptions(), http=factory).run(nginx_h2c, E2E_PARAMS, rec)
    assert rec.error == "" and rec.text() == "".join(texts(E2E_PARAMS))
    assert len(rec.conns) == 1 and rec.http_requests == 1
    assert rec.conns[0].http_version == "1.1"  # the HTTP/2 session was never opened


async def test_a_request_body_waits_for_the_servers_window(h2server: Start) -> None:
    body = b'{"pad": "' + b"x" * 300_000 + b'"}'  # over the server's 64 KiB windows
    server, target = await h2server({"/echo": echo})
    http = HTTP2(target)
    async with asyncio.timeout(TIMEOUT_S):
        await http.request("POST", "/echo", [], body)
        assert await http.read_body() == body
        await http.aclose()
    assert server.paths == ["/echo"]
