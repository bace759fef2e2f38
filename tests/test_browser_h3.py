"""The page over QUIC in real Chromium: its WebTransport client against the server's own
HTTP/3 endpoint (transports/web/webtransport.py), and its HTTP clients over HTTP/3 through a
real Caddy (`CaddySpec(http3=True)`).

WebTransport: the page asks GET /webtransport for the endpoint's URL and certificate hash
and opens `new WebTransport(url, {serverCertificateHashes})`: no CA, no Chromium flag. CDP
reports the session (`Network.webTransportCreated`, `...ConnectionEstablished`) but counts
none of its bytes, so its records say `bytes_source` "none" and -1 bytes, and the page's own
count of what its JavaScript read (`app_bytes_down`).

HTTP/3: Chromium sends HTTP over QUIC from the first request only to an origin named in
`--origin-to-force-quic-on` (else it waits for Caddy's Alt-Svc on a TCP response), and
trusts the lab leaf by its key hash (`--ignore-certificate-errors-spki-list`), on QUIC as
on TCP. CDP's `response.protocol` then says "h3" for each request.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from analysis.derived import stalled_summary
from clients.base import Target
from clients.browser import (
    CHROMIUM,
    BrowserSession,
    CdpLedger,
    browser_tables,
    chromium_args,
    connection_keys,
    session_stats,
    to_record,
)
from clients.recorder import stream_row
from experiments import browser_connections
from harness.children import ServerProcess
from netem.caddy import Caddy, CaddySpec, caddy_binary
from netem.pki import LabPKI, make_lab_pki
from server import make_app
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT
from tests.test_browser import FAST, MS, Tab, pane_texts, start
from transports import registry
from transports.web.common import ServerConfig

pytestmark = [
    pytest.mark.timeout(60 * UNIT),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]

# the page's clients of QUIC transports, and of HTTP ones (requests and responses, which a
# front can carry over HTTP/3), from the registry's capabilities
[WT] = [k for t in registry.ordered() if t.stack == "quic" for k in t.browser_clients]
HTTP_PANES = [
    k for t in registry.ordered() if t.stack == "tcp" and t.connection == "http"
    for k in t.browser_clients
]  # fmt: skip
KEYS = {"run_id": "t", "experiment": "test", "condition": "", "sweep": "", "sweep_value": 0.0}


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """A real server in the test's loop (its WebTransport endpoint on a free UDP port), with
    the page's Cut button."""
    app = make_app(ServerConfig(host="127.0.0.1", port=0, lab_debug=True))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Target("127.0.0.1", runner.addresses[0][1])
    finally:
        await runner.cleanup()


def check_complete(records: list[Any], params: GenParams) -> None:
    expected = "".join(texts(params))
    for rec in records:
        assert rec.error == "" and rec.end_reason == "done", rec.error
        assert rec.text() == expected
        assert sorted(rec.texts) == list(range(1, params.tokens + 1))
        assert len(rec.seq) == params.tokens  # none twice


@pytest.mark.slow
async def test_webtransport_streams_the_seeded_answer_by_stream_and_by_datagram(
    target: Target,
) -> None:
    params = GenParams(tokens=20, rate=100.0, ttft_ms=30.0, seed=2, text="zh")
    payload = len("".join(texts(params)).encode())
    async with BrowserSession(target) as session:
        records = await session.run(WT, params, 2)
        check_complete(records, params)
        sessions = session.ledger.webtransports()
        assert len(sessions) == 2 and all(s.established and s.path == "/wt" for s in sessions)
        tables = browser_tables(records, {**KEYS, "rate_hz": params.rate, "corpus": params.text})
        streams = tables.streams
        assert list(streams["transport"].unique()) == [f"browser-{WT}"]
        assert (streams[["lost", "duplicated", "out_of_order"]] == 0).all().all()
        # CDP counts no WebTransport bytes: unknown, said so, never invented
        assert (streams["bytes_source"] == "none").all()
        assert (streams[["bytes_up", "bytes_down"]] == -1).all().all()
        assert (streams["stack"] == "quic").all() and (streams["connections"] == 1).all()
        # what the page's JavaScript read: the token lines, JSON and all, over the payload
        assert (streams["app_bytes_down"] > payload).all() and (streams["app_bytes_up"] > 0).all()
        for rec in records:
            [conn] = rec.conns
            assert (conn.http_version, conn.stack, conn.source) == ("3", "quic", "none")

        # datagram delivery: one token per datagram; on loopback none is lost
        records = await session.run(WT, params, 2, client_options={"delivery": "datagram"})
        check_complete(records, params)
        assert [r["lost"] for r in session.reports] == [0, 0]
        assert session.console_errors == []


@pytest.mark.slow
async def test_a_wrong_certificate_hash_is_a_clean_error_and_the_server_keeps_serving(
    target: Target,
) -> None:
    params = GenParams(tokens=10, rate=100.0, ttft_ms=20.0, seed=7)
    async with BrowserSession(target) as session:
        page = session.page
        assert page is not None

        async def wrong_hash(route: Any) -> None:
            response = await route.fetch()
            info = await response.json()
            info["certificate_hashes"][0]["value"] = "A" * 43 + "="  # 32 zero bytes: not its hash
            await route.fulfill(response=response, body=json.dumps(info))

        await page.route("**/webtransport", wrong_hash)
        [bad] = await session.run(WT, params, 1, timeout_s=15 * UNIT)
        await page.unroute("**/webtransport")
        # refused by the browser at the handshake: said by the client, not retried for ever
        assert bad.error.startswith("WebTransportError: "), bad.error
        assert "not established" in bad.error and bad.reconnects == 0 and not bad.seq
        # the page forgot the endpoint it was given: the next session asks again, and the
        # server, which saw a handshake fail, serves it
        [good] = await session.run(WT, params, 1)
        check_complete([good], params)


@pytest.mark.slow
async def test_webtransport_resumes_after_the_cut_button_closes_its_quic_connection(
    target: Target,
) -> None:
    """The page's Cut (POST /debug/cut) resets the caller's TCP connections and closes its
    QUIC connections (QUIC has no RST: CONNECTION_CLOSE): the client resumes in a new session
    after the last seq it holds, by stream and by datagram."""
    params = GenParams(tokens=30, rate=40.0, ttft_ms=50.0, seed=5, text="mixed")
    async with BrowserSession(target) as session:
        for delivery in ("stream", "datagram"):
            [rec] = await session.run(
                WT, params, 1, cut_after_tokens=8, client_options={"delivery": delivery}
            )
            assert session.last_cut is not None and session.last_cut["quic"] >= 1, delivery
            check_complete([rec], params)
            assert rec.reconnects >= 1 and rec.http_requests == rec.reconnects + 1, delivery
            assert len(rec.conns) == rec.http_requests  # a session per attempt
            assert rec.recoveries_ms and rec.recoveries_ms[0] < 5000


@pytest.mark.slow
async def test_webtransport_under_auth_takes_a_ticket_per_session() -> None:
    child = ServerProcess(["--auth"])
    child.start()
    try:
        params = GenParams(tokens=8, rate=100.0, ttft_ms=20.0, seed=9)
        async with BrowserSession(child.target) as session:
            assert session.page is not None
            key = child.credential("alice")
            signed = await session.page.evaluate(
                """async (key) => (await fetch("/auth/session", {method: "POST",
                     headers: {Authorization: `Bearer ${key}`}})).status""",
                key,
            )
            assert signed == 200
            [rec] = await session.run(WT, params, 1)
            check_complete([rec], params)
            tickets = [r for r in session.ledger.requests.values() if r.path == "/auth/ticket"]
            assert len(tickets) == 1 and tickets[0].status == 200
            assert rec.http_requests == 2  # the ticket, then the session
    finally:
        child.stop()


# --- HTTP/3 through Caddy ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return make_lab_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def caddy_h3(pki: LabPKI) -> Iterator[Caddy]:
    if caddy_binary() is None:
        pytest.skip("needs caddy (Debian's): run `make system`")
    server = ServerProcess()
    server.start()
    try:
        proxy = Caddy(CaddySpec(http3=True), server.target.host, server.target.port, pki=pki)
        proxy.start()
        try:
            yield proxy
        finally:
            proxy.stop()
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def h3_tab(proxy: Caddy, pki: LabPKI) -> AsyncIterator[tuple[Tab, BrowserSession]]:
    target = Target.parse(proxy.url)
    origin = f"{target.host}:{target.port}"
    async with BrowserSession(target, spki=pki.spki_sha256(), force_quic=[origin]) as session:
        page = session.page
        assert page is not None
        problems = session.console_errors
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
        await page.set_viewport_size({"width": 1440, "height": 1000})
        await page.wait_for_function("document.body.dataset.state === 'ready'", timeout=5 * MS)
        yield Tab(page, problems), session


@pytest.mark.slow
async def test_every_http_pane_completes_over_http3_through_caddy(
    caddy_h3: Caddy, pki: LabPKI
) -> None:
    params = {**FAST, "text": "zh"}
    async with h3_tab(caddy_h3, pki) as (tab, session):
        await start(tab, params)
        panes = await pane_texts(tab)
        requests = list(session.ledger.requests.values())
    expected = "".join(texts(GenParams(**params)))  # type: ignore[arg-type]
    for key in HTTP_PANES:
        text, status = panes[key]
        assert text == expected, key
        assert status.startswith(f"✓ {FAST['tokens']}/{FAST['tokens']} tokens"), (key, status)
    # every HTTP request of a transport went over HTTP/3 (the page itself too)
    http = [r for r in requests if not r.websocket and not r.webtransport and r.protocol]
    by_key: dict[str, set[str]] = {}
    for req in http:
        first = req.path.strip("/").split("?")[0].split("/")[0]
        by_key.setdefault(first, set()).add(req.protocol)
    for key in {registry.by_browser_client(k).key for k in HTTP_PANES}:
        assert by_key.get(key) == {"h3"}, (key, by_key.get(key))
    assert by_key.get("") == {"h3"}  # GET / itself
    # the page, its scripts and every HTTP transport's requests: one QUIC connection
    assert len(connection_keys(http)) == 1, connection_keys(http)


@pytest.mark.slow
async def test_stream_records_over_http3_say_quic_and_version_3(
    caddy_h3: Caddy, pki: LabPKI
) -> None:
    params = GenParams(tokens=12, rate=100.0, ttft_ms=20.0, seed=4, text="zh")
    async with h3_tab(caddy_h3, pki) as (_, session):
        records = await session.run("sse-fetch", params, 2)
    check_complete(records, params)
    payload = len("".join(texts(params)).encode())
    for rec in records:
        [conn] = rec.conns
        assert (conn.http_version, conn.stack, conn.source) == ("3", "quic", "browser-cdp")
        # CDP's count: the QPACK-compressed head and the DATA frames, over the app bytes
        assert conn.bytes_down > conn.app_bytes_down > payload and conn.bytes_up > 0
        assert rec.streams_per_conn == 2  # both streams on the one HTTP/3 connection


@pytest.mark.slow
def test_browser_connections_caddy_h3_holds_every_eventsource_on_one_quic_connection(
    caddy_h3: Caddy,
) -> None:
    """The experiment's `caddy-h3` path: its own Caddy with HTTP/3 in front of the fixture's
    server (`caddy_h3` skips without caddy), Chromium forced onto QUIC for that origin."""
    host, port = caddy_h3.upstream
    spec = browser_connections.Spec(
        ns=(6,), transports=("sse",), paths=("caddy-h3",), server=f"http://{host}:{port}"
    )
    tables = browser_connections.run(spec, run_id="test")
    table = tables.extra["connections"]
    # six EventSources as six HTTP/3 streams of the tab's one QUIC connection: none waits
    assert (table["http_version"] == "3").all() and (table["connections_used"] == 1).all()
    assert not table["stalled"].any() and (tables.streams["streams_per_conn"] == 6).all()
    assert list(stalled_summary(table)[["path", "stalled"]].itertuples(index=False)) == [
        ("caddy-h3", 0)
    ]


def test_cdp_ledger_keeps_webtransport_sessions_without_inventing_bytes() -> None:
    ledger = CdpLedger()
    url = "https://127.0.0.1:4433/wt?ticket=secret"
    ledger.feed("Network.webTransportCreated", {"transportId": "7", "url": url, "timestamp": 1})
    ledger.feed("Network.webTransportConnectionEstablished", {"transportId": "7", "timestamp": 2})
    [wt] = ledger.webtransports()
    assert (wt.path, wt.established, wt.finished, wt.http_version) == ("/wt", True, False, "3")
    assert wt.connection_key == "wt:7" and ledger.by_stream() == {}  # no stream: CDP names none
    ledger.feed("Network.webTransportClosed", {"transportId": "7", "timestamp": 3})
    assert wt.finished
    # a resumed stream: two sessions, bytes unknown in both, so unknown in the sum too
    report = {"stream": "s", "sentMs": 1.0, "endMs": 2.0, "endReason": "done", "error": "",
              "requests": 2, "reconnects": 1, "recoveries": [5.0], "tokens": [],
              "sessions": [{"up": 40, "down": 300}, {"up": 60, "down": 200}]}  # fmt: skip
    rec = to_record(WT, GenParams(tokens=1), report, [])
    row = stream_row(rec)
    assert [c.index for c in rec.conns] == [0, 1] and len(session_stats([])) == 0
    assert (row["bytes_up"], row["bytes_down"], row["bytes_source"]) == (-1, -1, "none")
    assert (row["app_bytes_up"], row["app_bytes_down"], row["stack"]) == (100, 500, "quic")


def test_chromium_switches_per_session() -> None:
    assert "--disable-quic" not in chromium_args()
    assert chromium_args(quic=False)[-1] == "--disable-quic"
    forced = chromium_args(spki="abc=", force_quic=["127.0.0.1:8443", "localhost:8443"])
    assert forced[-2:] == [
        "--ignore-certificate-errors-spki-list=abc=",
        "--origin-to-force-quic-on=127.0.0.1:8443,localhost:8443",
    ]
    with pytest.raises(ValueError, match="force_quic needs quic"):
        BrowserSession("http://127.0.0.1:1", quic=False, force_quic=["127.0.0.1:1"])
