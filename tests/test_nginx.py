"""A real nginx (netem.nginx) between a real server child process and an aiohttp client.

What these tests pin down are measurements, not wishes: each timing assertion states the
mechanism in nginx that produces it. Every timeout is a multiple of UNIT; the timing slack of
the assertions (not the asked-for schedule) scales with UNIT too. nginx missing is a failure
with a clear message, never a skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import netem.nginx as nginx_mod
from harness.children import ServerProcess
from netem.nginx import (
    MODES,
    NOT_INSTALLED,
    SHUTDOWN_TIMEOUT_S,
    Nginx,
    NginxSpec,
    directives,
    nginx_binary,
    pid_alive,
    render_config,
    server_args_for,
)
from streams.errors import EnvironmentUnavailable
from tests.support import UNIT, wait_until_async

pytestmark = pytest.mark.timeout(UNIT * 30)

# tokens=10 at rate=20 with no prefill: tokens due at 0, 50, ..., 450 ms after the request
STREAM_QUERY = "tokens=10&rate=20&ttft_ms=0"
STREAMING_SPREAD_S = 0.25  # first token at least this long before the last: it streamed
BURST_SPREAD_S = 0.05 * UNIT  # every token within this of the others: one burst


@dataclasses.dataclass(frozen=True)
class Arrivals:
    status: int
    headers: dict[str, str]
    lines: list[tuple[float, bytes]]  # (seconds since the request, non-empty line)

    def token_times_s(self) -> list[float]:
        """Arrival times of the token lines: SSE `data: {...}` or NDJSON lines with a seq."""
        return [t for t, line in self.lines if b'"seq"' in line and b'"type"' not in line]

    def spread_s(self) -> float:
        times = self.token_times_s()
        return times[-1] - times[0]


async def read_lines(url: str, headers: dict[str, str] | None = None) -> Arrivals:
    """GET `url` and time each line of the (decoded) body as it arrives."""
    t0 = time.monotonic()
    lines: list[tuple[float, bytes]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers or {}) as resp,
    ):
        async for line in resp.content:
            if line.strip():
                lines.append((time.monotonic() - t0, line.rstrip(b"\n")))
        return Arrivals(resp.status, dict(resp.headers), lines)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ServerProcess]]:
    """One server child process per flag set these tests need, shared by the module."""
    flag_sets = {
        "no-accel": ["--no-accel-header"],
        "accel": [],
        "heartbeat-0": ["--heartbeat-s", "0"],
        "heartbeat-0.3": ["--heartbeat-s", "0.3"],
    }
    started: dict[str, ServerProcess] = {}
    try:
        for name, args in flag_sets.items():
            started[name] = ServerProcess(args)
            started[name].start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def server_for(servers: dict[str, ServerProcess], mode: str) -> ServerProcess:
    return servers["no-accel" if "--no-accel-header" in server_args_for(mode) else "accel"]


def nginx_for(spec: NginxSpec, server: ServerProcess) -> Nginx:
    return Nginx(spec, server.target.host, server.target.port)


# -- the config ------------------------------------------------------------------------------


def test_config_has_the_spec_directives(tmp_path: Path) -> None:
    spec = NginxSpec(buffering=False, gzip=True, read_timeout_s=1.5, buffer_size_kb=1)
    conf = render_config(spec, listen_port=8080, upstream=("127.0.0.1", 9000), prefix=tmp_path)
    for line in (
        "daemon off;",
        "worker_processes 1;",
        f"pid {tmp_path}/nginx.pid;",
        f"access_log {tmp_path}/access.log pushlab;",
        f"proxy_temp_path {tmp_path}/proxy_temp;",
        "listen 127.0.0.1:8080;",
        "server 127.0.0.1:9000;",
        "proxy_buffering off;",
        "proxy_read_timeout 1500ms;",
        "proxy_send_timeout 1500ms;",
        'proxy_set_header Connection "";',
        'proxy_set_header Connection "upgrade";',
        "proxy_buffer_size 1k;",
        "proxy_buffers 8 1k;",
        "gzip_types text/event-stream application/x-ndjson application/json;",
        "gzip_proxied any;",
        "gzip_min_length 1;",
        "add_header X-Pushlab-Proxy nginx always;",
    ):
        assert line in conf, line
    http10 = render_config(
        NginxSpec(upstream_http="1.0"), listen_port=1, upstream=("::1", 2), prefix=tmp_path
    )
    assert "proxy_http_version 1.0;" in http10
    assert 'proxy_set_header Connection "";' not in http10
    assert "server [::1]:2;" in http10
    assert "proxy_read_timeout 60s;" in http10
    assert "gzip on;" not in http10
    with pytest.raises(ValueError, match="upstream_http"):
        NginxSpec(upstream_http="2")
    with pytest.raises(ValueError, match="unknown nginx mode"):
        server_args_for("cached")


def test_directives_name_what_each_mode_sets_and_the_apps_header() -> None:
    assert directives("buffered-http1.0") == (
        "proxy_http_version 1.0; proxy_buffering on; app sends no X-Accel-Buffering"
    )
    assert directives("http1.0-accel-header") == (
        "proxy_http_version 1.0; proxy_buffering on; app sends X-Accel-Buffering: no"
    )
    assert directives("buffered").startswith("proxy_http_version 1.1; proxy_buffering on;")
    assert "gzip on" in directives("gzip")
    assert directives("direct") == "no nginx"
    # every mode's line says what its rendered config says, and what the server is told
    for mode, spec in MODES.items():
        line = directives(mode)
        conf = render_config(spec, listen_port=1, upstream=("127.0.0.1", 2), prefix=Path("/x"))
        assert f"proxy_http_version {spec.upstream_http};" in conf
        assert f"proxy_http_version {spec.upstream_http}" in line
        header_off = "--no-accel-header" in server_args_for(mode)
        assert line.endswith("no X-Accel-Buffering" if header_off else "X-Accel-Buffering: no")


@pytest.mark.parametrize(
    "spec",
    [
        *MODES.values(),
        NginxSpec(read_timeout_s=0.25, buffer_size_kb=1, ignore_accel_header=True),
        NginxSpec(gzip=True, upstream_http="1.0", buffer_size_kb=64),
    ],
    ids=[*MODES, "tight", "gzip-http1.0-64k"],
)
def test_nginx_accepts_the_config(spec: NginxSpec, tmp_path: Path) -> None:
    binary = nginx_binary()
    assert binary is not None, NOT_INSTALLED
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_config(spec, listen_port=1, upstream=("127.0.0.1", 2), prefix=tmp_path))
    check = subprocess.run(
        [binary, "-t", "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=UNIT * 10,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


def test_missing_nginx_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx_mod, "nginx_binary", lambda: None)
    # the one error the suite skips an experiment for (and reports); the tests never skip
    with pytest.raises(EnvironmentUnavailable, match="nginx is not installed: run `make system`"):
        Nginx(NginxSpec(), "127.0.0.1", 9).start()


def test_a_rejected_config_raises_with_nginxs_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(nginx_mod, "render_config", lambda *a, **k: "no_such_directive on;\n")
    proxy = Nginx(NginxSpec(), "127.0.0.1", 9, workdir=tmp_path)
    with pytest.raises(RuntimeError, match='unknown directive "no_such_directive"'):
        proxy.start()
    assert proxy.pid == -1
    assert list(tmp_path.iterdir()) == []  # its prefix is gone


@pytest.mark.slow
def test_a_taken_port_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = Nginx(NginxSpec(), "127.0.0.1", 9, listen_port=port, workdir=tmp_path)
        with pytest.raises(RuntimeError, match="Address already in use"):
            proxy.start()
    assert proxy.pid == -1
    assert list(tmp_path.iterdir()) == []


# -- nginx is in the path --------------------------------------------------------------------


async def test_requests_go_through_nginx(servers: dict[str, ServerProcess]) -> None:
    with nginx_for(MODES["unbuffered"], servers["accel"]) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proxy.target.url}/healthz") as resp:
                assert resp.status == 200
                assert resp.headers["X-Pushlab-Proxy"] == "nginx"
                assert resp.headers["Server"].startswith("nginx")
                assert await resp.json() == {"ok": True}
            async with session.get(f"{proxy.target.url}/no-such-route") as resp:
                assert resp.status == 404  # the server's 404, passed on...
                assert resp.headers["X-Pushlab-Proxy"] == "nginx"  # ...marked: `always`
        # nginx writes a request's log line once it has finished it, just after the client
        # has the answer: wait for both lines rather than guess how long that takes
        await wait_until_async(
            lambda: "GET /healthz" in (log := proxy.access_log()) and "GET /no-such-route" in log,
            what="nginx has logged both requests",
        )
        log = proxy.access_log()
    assert 'request="GET /healthz HTTP/1.1" status=200' in log
    assert 'request="GET /no-such-route HTTP/1.1" status=404' in log
    assert "upstream_response_time_s=" in log


# -- streaming through each mode -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unbuffered", "accel-header", "gzip", "http1.0-accel-header"])
@pytest.mark.parametrize("route", ["sse", "ndjson"])
async def test_tokens_stream_through(
    mode: str, route: str, servers: dict[str, ServerProcess]
) -> None:
    """Buffering off (by directive, or per response by X-Accel-Buffering: no, also over
    nginx's default HTTP/1.0 upstream): each upstream read is passed on at once. Measured:
    first-to-last token 0.45 s, as the server sent them."""
    with nginx_for(MODES[mode], server_for(servers, mode)) as proxy:
        got = await read_lines(f"{proxy.target.url}/{route}?{STREAM_QUERY}")
    assert got.status == 200
    assert len(got.token_times_s()) == 10
    assert got.spread_s() >= STREAMING_SPREAD_S


@pytest.mark.parametrize("route", ["sse", "ndjson"])
async def test_buffered_with_http11_upstream_still_streams(
    route: str, servers: dict[str, ServerProcess]
) -> None:
    """FINDING: proxy_buffering on, no X-Accel-Buffering, and the tokens still stream (spread
    0.45 s, as unbuffered). With proxy_http_version 1.1 the server answers chunked, and nginx's
    buffered reader (ngx_event_pipe) hands a partly filled buffer to the proxy's chunked
    filter as soon as it holds the "minimal amount of data" that filter asked for (p->length,
    the rest of the current chunk): every complete chunk goes on to the client, so a server
    that writes one chunk per token streams through a buffering nginx."""
    mode = "buffered"
    with nginx_for(MODES[mode], server_for(servers, mode)) as proxy:
        got = await read_lines(f"{proxy.target.url}/{route}?{STREAM_QUERY}")
    assert "X-Accel-Buffering" not in got.headers
    assert len(got.token_times_s()) == 10
    assert got.spread_s() >= STREAMING_SPREAD_S


async def test_buffered_with_http10_upstream_is_one_late_burst(
    servers: dict[str, ServerProcess],
) -> None:
    """The burst the literature describes needs nginx 1.22's default proxy_http_version 1.0:
    no chunked encoding, the body ends when the connection does (p->length = -1), so a partly
    filled buffer waits until it is full or the upstream closes. 10 tokens (~1.2 KB) fit one
    4 KiB buffer: nothing, not even the headers, arrives before the last token (measured:
    every line at 0.45 s, spread < 1 ms)."""
    mode = "buffered-http1.0"
    with nginx_for(MODES[mode], server_for(servers, mode)) as proxy:
        got = await read_lines(f"{proxy.target.url}/sse?{STREAM_QUERY}")
    times = got.token_times_s()
    assert len(times) == 10
    assert got.spread_s() <= BURST_SPREAD_S
    assert times[0] >= 0.4  # the last token is due at 0.45 s
    assert got.lines[0][0] >= 0.4  # so is the opening block (retry:, id:)


async def test_buffered_http10_flushes_each_time_a_buffer_fills(
    servers: dict[str, ServerProcess],
) -> None:
    """With 1 KiB buffers (buffer_size_kb=1) the same mechanism passes the stream on one full
    buffer at a time: 40 tokens at 40/s (~4.8 KB) arrive in bursts of ~9 tokens every ~0.23 s
    (measured: bursts at 0.18, 0.40, 0.65, 0.88, 1.13, 1.35 s, then the rest at the end)."""
    spec = dataclasses.replace(MODES["buffered-http1.0"], buffer_size_kb=1)
    with nginx_for(spec, servers["no-accel"]) as proxy:
        got = await read_lines(f"{proxy.target.url}/sse?tokens=40&rate=40&ttft_ms=0")
    times = got.token_times_s()
    assert len(times) == 40
    bursts = [t for prev, t in zip([-1.0, *times], times, strict=False) if t - prev > 0.1]
    assert len(bursts) >= 3  # several flushes: it neither streams nor waits for the end
    assert len(bursts) <= 10  # ...and far fewer than one per token


async def test_websocket_through_nginx(servers: dict[str, ServerProcess]) -> None:
    with nginx_for(MODES["buffered"], servers["no-accel"]) as proxy:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{proxy.target.url}/ws", timeout=aiohttp.ClientWSTimeout(ws_close=UNIT * 5)
            ) as ws,
        ):
            start = {"type": "start", "tokens": 5, "rate": 100, "ttft_ms": 0}
            await ws.send_str(json.dumps(start))
            messages = [json.loads(await ws.receive_str(timeout=UNIT * 5)) for _ in range(7)]
    assert [m["type"] for m in messages] == ["started", *["token"] * 5, "done"]
    assert [m["seq"] for m in messages[1:6]] == [1, 2, 3, 4, 5]
    assert messages[-1]["reason"] == "done"


# -- gzip ------------------------------------------------------------------------------------


async def test_gzip_compresses_the_stream_without_delaying_it(
    servers: dict[str, ServerProcess],
) -> None:
    """gzip mode: nginx answers `Content-Encoding: gzip` (chunked; the server sent identity)
    and the decoded body holds every token and the end marker. It adds no delay (measured:
    spread 0.45 s, as without gzip): with buffering off nginx marks every upstream read as a
    flush, and the gzip filter then emits a sync-flushed deflate block per read."""
    mode = "gzip"
    with nginx_for(MODES[mode], server_for(servers, mode)) as proxy:
        url = f"{proxy.target.url}/sse?{STREAM_QUERY}"
        got = await read_lines(url, {"Accept-Encoding": "gzip"})
        plain = await read_lines(url, {"Accept-Encoding": "identity"})
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Encoding" not in plain.headers  # only for clients that accept it
    data = [line for _, line in got.lines if line.startswith(b"data: ")]
    assert [json.loads(line[6:])["seq"] for line in data[:-1]] == list(range(1, 11))
    assert data[-1] == b"data: [DONE]"
    assert got.spread_s() >= STREAMING_SPREAD_S


async def test_gzip_with_buffering_on_holds_the_whole_stream(
    servers: dict[str, ServerProcess],
) -> None:
    """FINDING: gzip on + proxy_buffering on (no X-Accel-Buffering) is what turns a stream into
    one burst with HTTP/1.1 too: buffered reads carry no flush, so the gzip filter keeps its
    output until its buffers fill or the response ends (measured: all 10 tokens at 0.45 s,
    headers included). The server's X-Accel-Buffering: no restores streaming."""
    spec = NginxSpec(buffering=True, gzip=True)
    gzip = {"Accept-Encoding": "gzip"}
    with nginx_for(spec, servers["no-accel"]) as proxy:
        held = await read_lines(f"{proxy.target.url}/sse?{STREAM_QUERY}", gzip)
    with nginx_for(spec, servers["accel"]) as proxy:
        streamed = await read_lines(f"{proxy.target.url}/sse?{STREAM_QUERY}", gzip)
    assert held.headers["Content-Encoding"] == streamed.headers["Content-Encoding"] == "gzip"
    assert held.spread_s() <= BURST_SPREAD_S
    assert held.token_times_s()[0] >= 0.4
    assert streamed.spread_s() >= STREAMING_SPREAD_S


# -- proxy_read_timeout ----------------------------------------------------------------------


async def test_read_timeout_cuts_a_silent_stream(servers: dict[str, ServerProcess]) -> None:
    """proxy_read_timeout 1 s, no heartbeat, first token due at 3 s. The client has already
    had `200` and the opening block; at ~1 s nginx closes the connection without the final
    empty chunk, so aiohttp raises ClientPayloadError (TransferEncodingError). nginx's access
    log still says status=200 (an error only in error.log: "upstream timed out")."""
    spec = dataclasses.replace(MODES["unbuffered"], read_timeout_s=1.0)
    with nginx_for(spec, servers["heartbeat-0"]) as proxy:
        lines: list[bytes] = []
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            url = f"{proxy.target.url}/sse?tokens=3&rate=50&ttft_ms=3000"
            async with session.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["X-Pushlab-Proxy"] == "nginx"
                with pytest.raises(aiohttp.ClientPayloadError, match="not completed"):
                    async for line in resp.content:
                        lines.append(line)
        cut_after_s = time.monotonic() - t0
        # the access line is written last (the error line when the timer fires, then the
        # request is finalized and logged), so it is the one to wait for
        await wait_until_async(
            lambda: "GET /sse" in proxy.access_log(), what="nginx has logged the cut request"
        )
        access, errors = proxy.access_log(), proxy.error_log()
    assert 0.9 <= cut_after_s <= 1.0 + UNIT
    assert lines[0] == b"retry: 1000\n"
    assert not any(line.startswith(b"data:") for line in lines)  # not one token
    assert "status=200" in access
    assert "upstream timed out (110: Connection timed out) while reading upstream" in errors


async def test_read_timeout_before_headers_is_a_504(servers: dict[str, ServerProcess]) -> None:
    """A long poll that waits longer than proxy_read_timeout has sent nothing yet: nginx
    answers 504 Gateway Time-out itself (measured at 1.0 s)."""
    spec = dataclasses.replace(MODES["unbuffered"], read_timeout_s=1.0)
    with nginx_for(spec, servers["heartbeat-0"]) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{proxy.target.url}/longpoll", json={"tokens": 2, "ttft_ms": 3000}
            ) as resp:
                assert resp.status == 201
                stream = (await resp.json())["stream"]
            t0 = time.monotonic()
            poll = f"{proxy.target.url}/longpoll/{stream}?after=0&wait=5"
            async with session.get(poll) as resp:
                assert resp.status == 504
                assert resp.headers["X-Pushlab-Proxy"] == "nginx"
            assert 0.9 <= time.monotonic() - t0 <= 1.0 + UNIT


@pytest.mark.slow
async def test_heartbeats_keep_a_stream_alive_past_the_read_timeout(
    servers: dict[str, ServerProcess],
) -> None:
    """The same stream with a `: keep-alive` comment every 0.3 s completes (in 3.0 s)."""
    spec = dataclasses.replace(MODES["unbuffered"], read_timeout_s=1.0)
    with nginx_for(spec, servers["heartbeat-0.3"]) as proxy:
        got = await read_lines(f"{proxy.target.url}/sse?tokens=3&rate=50&ttft_ms=3000")
    assert got.status == 200
    assert len(got.token_times_s()) == 3
    assert got.token_times_s()[0] >= 2.9
    assert got.lines[-1][1] == b"data: [DONE]"
    assert any(line == b": keep-alive" for _, line in got.lines)


# -- stopping --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_stop_leaves_no_process_and_no_files(servers: dict[str, ServerProcess]) -> None:
    """stop() with a stream still open: SIGQUIT lets the worker finish its requests, and
    worker_shutdown_timeout bounds that, so the stop takes about SHUTDOWN_TIMEOUT_S."""
    proxy = nginx_for(MODES["unbuffered"], servers["accel"])
    proxy.start()
    try:
        master, workers, prefix = proxy.pid, proxy.worker_pids(), proxy.prefix
        assert pid_alive(master)
        assert len(workers) == 1 and all(pid_alive(pid) for pid in workers)
        assert prefix is not None and (prefix / "nginx.pid").read_text().strip() == str(master)
        async with aiohttp.ClientSession() as session:
            url = f"{proxy.target.url}/sse?tokens=100&rate=10&ttft_ms=0"
            async with session.get(url) as resp:
                await resp.content.readuntil(b"data: ")  # a stream is open
                t0 = time.monotonic()
                await asyncio.to_thread(proxy.stop)
                stop_s = time.monotonic() - t0
    finally:
        proxy.stop()
    assert stop_s <= SHUTDOWN_TIMEOUT_S + UNIT
    assert not pid_alive(master)
    assert not any(pid_alive(pid) for pid in workers)
    assert not prefix.exists()
    assert proxy.pid == -1 and proxy.worker_pids() == []
    assert "GET /sse" in proxy.access_log()  # the logs outlive the prefix
