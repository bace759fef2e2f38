"""The demo page and the browser clients, in real Chromium (Debian's, never a downloaded one).

The server is built here with `make_app` plus the page's `add_routes`, so these tests do not
depend on server.py mounting the page. Timeouts are multiples of UNIT.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from clients.base import Target
from clients.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    BrowserSession,
    CdpLedger,
    browser_keys,
    browser_tables,
    first_streaming_clients,
    run_browser_fleet,
    ws_frame_bytes,
)
from experiments import browser_connections
from harness.children import READY_PREFIX, ROOT, ChildProcess
from presentation import charts_net
from records import store
from server import make_app
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT
from transports import registry
from transports.web import page as page_routes
from transports.web.common import ServerConfig

pytestmark = [
    pytest.mark.timeout(60 * UNIT),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]

ARTIFACTS = ROOT / "test-artifacts"
FAST = {"tokens": 24, "rate": 60, "ttft_ms": 80, "jitter": 0.2, "seed": 1514}
MS = int(1000 * UNIT)

# The page's clients by what their transport can do (registry `browser_clients`).
# Resuming: can continue after the last token held (one-shot cannot: no stream id yet).
# Streaming: one held connection carries the whole answer, so a cut always breaks one.
RESUMING = [
    k for k in browser_keys() if (t := registry.by_browser_client(k)).resumable and t.incremental
]
STREAMING = [
    k
    for k in browser_keys()
    if (t := registry.by_browser_client(k)).incremental and t.requests_per_answer == "one"
]


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """A real server in the test's loop, with the demo page mounted."""
    app = make_app(ServerConfig(host="127.0.0.1", port=0, lab_debug=True))  # the Cut button
    page_routes.add_routes(app)
    page_routes.add_routes(app)  # mounting twice is harmless
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Target("127.0.0.1", runner.addresses[0][1])
    finally:
        await runner.cleanup()


@dataclasses.dataclass
class Tab:
    page: Any
    problems: list[str]


@pytest.fixture
async def tab(target: Target) -> AsyncIterator[Tab]:
    """The demo page in a fresh Chromium; console errors and failed requests are collected."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
            page.on(
                "response", lambda r: r.status >= 400 and problems.append(f"{r.url}: {r.status}")
            )
            await page.goto(f"{target.url}/", timeout=10 * MS)
            await page.wait_for_function("document.body.dataset.state === 'ready'", timeout=5 * MS)
            yield Tab(page, problems)
        finally:
            await browser.close()


async def start(tab: Tab, params: dict[str, Any], cut_when: tuple[str, ...] = ()) -> None:
    """Fill in the parameters, press Start, and (when `cut_when` names panes) press Cut as soon
    as each of those panes shows text, so the cut lands mid-answer on every one of them
    however slowly the machine starts them (a fixed delay did not: under load a pane's first
    request came after the cut); then wait until every pane has ended."""
    for name, value in params.items():
        if name == "text":
            await tab.page.select_option("#text", value)
        else:
            await tab.page.fill(f"#{name}", str(value))
    await tab.page.click("#start")
    if cut_when:
        await tab.page.wait_for_function(
            """keys => keys.every(k => document.querySelector(
                 `.pane[data-key="${k}"] .text`)?.textContent.length > 0)""",
            arg=list(cut_when),
            timeout=20 * MS,
        )
        await tab.page.click("#cut")
    await tab.page.wait_for_function("document.body.dataset.state === 'finished'", timeout=20 * MS)


async def pane_texts(tab: Tab) -> dict[str, tuple[str, str]]:
    """key -> (answer text, status line) of every pane."""
    return await tab.page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.pane')].map(p =>
             [p.dataset.key, [p.querySelector('.text').textContent,
                              p.querySelector('.status').textContent]]))"""
    )


async def test_static_routes_serve_the_folder_and_nothing_else(target: Target) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{target.url}/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert '<script type="module" src="/static/app.js">' in await resp.text()
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with http.get(f"{target.url}/static/{name}") as resp:
                assert (resp.status, resp.content_type) == (200, kind)
        for name in ("nope.js", "..", "..%2Fpage.py", "%2E%2E%2F%2E%2E%2Fserver.py"):
            raw = URL(f"{target.url}/static/{name}", encoded=True)  # sent as written
            async with http.get(raw) as resp:
                assert resp.status == 404, name
                error = (await resp.json())["error"]
                assert set(error) == {"message", "type", "param"}
                assert error["type"] == "not_found_error"


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["en", "zh"])
async def test_every_pane_shows_the_seeded_answer_without_errors(tab: Tab, corpus: str) -> None:
    params = {**FAST, "text": corpus}
    await start(tab, params)
    expected = "".join(texts(GenParams(**params)))  # type: ignore[arg-type]
    panes = await pane_texts(tab)
    assert list(panes) == [*browser_keys(), "fake"]  # the registry's, in its order; then fake
    for key, (text, status) in panes.items():
        assert text == expected, key
        assert status.startswith(f"✓ {FAST['tokens']}/{FAST['tokens']} tokens"), (key, status)
    assert tab.problems == []  # no console error, no failed or 4xx/5xx request
    # EventSource was closed at [DONE]: no reconnect after the end (one GET /sse, no 204)
    entries = await tab.page.evaluate(
        "() => performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert sum("/sse?" in name for name in entries) == 1
    ARTIFACTS.mkdir(exist_ok=True)
    await tab.page.screenshot(path=ARTIFACTS / f"browser-page-{corpus}.png", full_page=True)


@pytest.mark.slow
async def test_cut_button_shows_who_recovered(tab: Tab) -> None:
    params = {**FAST, "tokens": 40, "rate": 25}  # 1.7 s: the cut lands mid-answer
    await start(tab, params, cut_when=tuple(STREAMING))
    banner = await tab.page.inner_text("#banner")
    assert "the server reset" in banner
    panes = await pane_texts(tab)
    for key in STREAMING:  # one held connection for the whole answer: cut for sure
        status = panes[key][1]
        assert "survived 1 broken connection" in status, (key, status)
        assert status.startswith("✓ 40/40 tokens, none lost or repeated"), (key, status)


async def test_eventsource_resumes_with_last_event_id_after_a_cut(target: Target) -> None:
    params = GenParams(tokens=30, rate=40.0, ttft_ms=50.0, seed=3)
    async with BrowserSession(target) as session:
        [rec] = await session.run("sse", params, 1, cut_after_tokens=8)
        requests = sorted(
            (r for r in session.ledger.requests.values() if r.path.startswith("/sse")),
            key=lambda r: int(r.request_id.split(".")[-1]),
        )
    assert session.last_cut is not None and session.last_cut["reset"] >= 1
    assert rec.error == "" and rec.end_reason == "done"
    assert list(rec.seq) == list(range(1, 31))  # every seq exactly once, in order
    assert rec.reconnects == 1 and rec.http_requests == 2
    # the browser's own reconnect, `retry: 1000` after the break, names where it was
    assert len(requests) == 2 and requests[0].sent_headers is not None
    assert "Last-Event-ID" not in requests[0].sent_headers
    assert requests[1].sent_headers is not None
    stream_id, _, seq = requests[1].sent_headers["Last-Event-ID"].partition(":")
    assert stream_id == rec.stream_id and 8 <= int(seq) < 30
    assert 900 <= rec.recoveries_ms[0] < 3000


@pytest.mark.slow
async def test_resuming_page_clients_lose_and_repeat_nothing_after_a_cut(target: Target) -> None:
    params = GenParams(tokens=30, rate=40.0, ttft_ms=50.0, seed=5, text="mixed")
    async with BrowserSession(target) as session:
        for key in [k for k in RESUMING if k != "sse"]:  # EventSource: the test above
            [rec] = await session.run(key, params, 1, cut_after_tokens=8)
            assert rec.error == "", (key, rec.error)
            assert sorted(rec.texts) == list(range(1, 31)) and len(rec.seq) == 30, key
            assert rec.text() == "".join(texts(params)), key
            if key in STREAMING:  # a streaming connection was cut
                assert rec.reconnects >= 1, key


@pytest.mark.slow
@pytest.mark.parametrize("key", first_streaming_clients())
async def test_browser_fleet_records_every_token_and_cdp_bytes(target: Target, key: str) -> None:
    params = GenParams(tokens=20, rate=100.0, ttft_ms=30.0, seed=2, text="zh")
    records = await run_browser_fleet(key, target, params, clients=2)
    keys = {"run_id": "t", "experiment": "test", "condition": "", "sweep": "", "sweep_value": 0.0}
    tables = browser_tables(records, {**keys, "rate_hz": params.rate, "corpus": params.text})
    streams, tokens = tables.streams, tables.tokens
    assert list(streams["transport"].unique()) == [f"browser-{key}"]
    assert list(streams["client"].unique()) == ["chromium"]
    assert (streams["error"] == "").all() and (streams["tokens_received"] == 20).all()
    assert (streams[["lost", "duplicated", "out_of_order"]] == 0).all().all()
    assert (tokens["latency_ms"] > 0).all() and (tokens["latency_ms"] < 1000).all()
    assert (streams["ttft_ms"] > 0).all()
    assert (streams["bytes_source"] == "browser-cdp").all()
    payload = len("".join(texts(params)).encode())
    assert (streams["payload_bytes"] == payload).all()
    # the wire carries the payload plus JSON, framing and headers: several times more
    assert (streams["bytes_down"] > 3 * streams["payload_bytes"]).all()
    assert (streams["bytes_up"] > 300).all()  # a browser's request head alone is ~500 bytes
    assert (streams["connections"] == 1).all() and (streams["http_requests"] == 1).all()
    for rec in records:
        assert all(c.source == "browser-cdp" and c.packets_up == -1 for c in rec.conns)


def test_cdp_ledger_counts_http_and_websocket_bytes() -> None:
    ledger = CdpLedger()

    def feed(event: str, request_id: str, **params: Any) -> None:
        ledger.feed(f"Network.{event}", {"requestId": request_id, **params})

    def frame(payload: str) -> dict[str, Any]:
        return {"opcode": 1, "payloadData": payload}

    feed("requestWillBeSent", "1", request={"url": "http://h/sse?a=1", "method": "GET"})
    feed("requestWillBeSentExtraInfo", "1", headers={"Host": "h", "Accept": "*/*"})
    response = {"headers": {"X-Pushlab-Stream": "s1"}, "connectionId": 7, "encodedDataLength": 90}
    feed("responseReceived", "1", response=response)
    feed("dataReceived", "1", dataLength=40, encodedDataLength=50)
    feed("webSocketCreated", "2", url="ws://h/ws")
    feed("webSocketFrameReceived", "2", response=frame('{"type":"started","stream":"s1"}'))
    feed("webSocketFrameSent", "2", response=frame("x" * 200))
    http, ws = ledger.by_stream()["s1"]
    assert http.bytes_up == len("GET /sse?a=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n")
    assert (http.bytes_down, http.app_bytes_down, http.connection) == (140, 40, 7)
    feed("loadingFinished", "1", encodedDataLength=160)
    assert http.bytes_down == 160 and http.finished
    assert ws.frames_down == 2 + 32 and ws.frames_up == 2 + 2 + 4 + 200  # RFC 6455 5.2
    assert ws_frame_bytes(70000, masked=False) == 2 + 8 + 70000


CHILD_SERVER = """
import sys, server
from transports.web import page
make_app = server.make_app
def with_page(config):
    app = make_app(config)
    page.add_routes(app)  # a no-op once server.make_app mounts the page itself
    return app
server.make_app = with_page
sys.exit(server.main(sys.argv[1:]))
"""


@pytest.fixture
def child_server() -> Iterator[Target]:
    """`python server.py` in a child process, with the demo page mounted."""
    proc = ChildProcess(["-c", CHILD_SERVER, "--host", "127.0.0.1", "--port", "0"], READY_PREFIX)
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.mark.slow
def test_browser_connections_eventsource_stalls_beyond_six_websocket_does_not(
    child_server: Target, tmp_path: Path
) -> None:
    spec = dataclasses.replace(  # cleartext HTTP/1.1 only: tests/test_browser_h2.py has HTTP/2
        browser_connections.quick(browser_connections.Spec()),
        server=child_server.url,
        paths=(browser_connections.DIRECT,),
    )
    tables = browser_connections.run(spec, run_id="test")
    table = tables.extra["connections"].set_index(["transport", "n_open", "index"])
    stalled = table["stalled"]
    # Chrome's HTTP/1.1 pool holds 6 connections per origin and EventSource keeps its own for
    # the whole answer: with 6 open all start at once; with 8, the 7th and 8th wait for the
    # first two to end (first token ~ one whole stream later), in start order.
    assert not stalled.loc["browser-sse", 6].any()
    assert list(stalled.loc["browser-sse", 8]) == [False] * 6 + [True] * 2
    late = table.loc[("browser-sse", 8), "ttft_ms"]
    assert late.iloc[6:].min() > spec.tokens / spec.rate * 1e3  # waited a whole stream
    # WebSockets are pooled apart from HTTP (Chrome only serializes their handshakes)
    assert not stalled.loc["browser-websocket"].any()
    assert (tables.streams["error"] == "").all() and (tables.streams["lost"] == 0).all()
    store.save(tables, {"experiment": browser_connections.NAME, "run_id": "test"}, tmp_path)
    [png] = charts_net.connections_chart(tmp_path)
    assert png.stat().st_size > 10_000


@pytest.mark.skipif(
    not os.environ.get("PUSHLAB_UPDATE_SCREENSHOT"), reason="set PUSHLAB_UPDATE_SCREENSHOT=1"
)
async def test_update_docs_screenshot(tab: Tab) -> None:
    """docs/screenshot.png: the page's own defaults, cut mid-answer."""
    await start(tab, {}, cut_when=tuple(STREAMING))
    await tab.page.wait_for_timeout(300)
    await tab.page.screenshot(path=ROOT / "docs" / "screenshot.png", full_page=True)
